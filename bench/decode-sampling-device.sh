#!/usr/bin/env bash
# Issue 14 (2026-12-05), second call: the sampling kernel (radix top-k, loads issued 8 at a time, 1024
# invocations) against 2b67849's, sampled against greedy; this build's q4 defaults (octet prologues in
# every int8 kernel, interleaved workers) against the previous forms in the same process and the old
# build; the roofline; the tests and the NLL.
# Stage as bench/decode-prologue-device.sh says, plus: mid.mjs = the first call's app.mjs (2b67849's
# sampling kernel, norm-input octets only); T also sample; cp this file to .gpu/decode/run4.sh.
# Device: bash .gpu/decode/run4.sh   (results under $OUT)
set -uo pipefail
eval "$(bash .gpu/setup.sh)"
D=.gpu/decode; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv > "$OUT/gpu.txt" 2>&1; date -u >> "$OUT/gpu.txt"
t0=$(date +%s)
b() { local name=$1 t=$2 app=$3; shift 3; echo "== $name [$app] bench $* (t=$(( $(date +%s) - t0 ))s)" >> "$OUT/bench.log"; PDVM_SUBGROUP_MATRIX=0 timeout $t node $D/$app.mjs bench --json "$@" 2>&1 >> "$OUT/results.jsonl" | grep -v Warning >> "$OUT/bench.log"; }
{ PDVM_SUBGROUP_MATRIX=0 timeout 25 node --test $D/fused-matvec.test.mjs; PDVM_SUBGROUP_MATRIX=0 timeout 25 node --test $D/sample.test.mjs; } 2>&1 | grep -v Warning | grep -E "^(ok|not ok)|# (pass|fail)|rror" > "$OUT/tests.log"
PDVM_FIXTURES=$D/fixtures PDVM_NLL_UNITS=1 PDVM_NLL_TOKENS=2049 PDVM_SUBGROUP_MATRIX=0 timeout 40 node --test $D/fused-nll.test.mjs 2>&1 | grep -v Warning | grep -E "NLL|^(ok|not ok)|# (pass|fail)" > "$OUT/nll.log"
echo "tests done t=$(( $(date +%s) - t0 ))s" >> "$OUT/bench.log"
timeout 25 node $D/lab.mjs --only roofline --shapes phi-4,llama-3.2-1b,llama-3.1-8b 2>&1 | grep -v Warning > "$OUT/roofline.txt"
echo "roofline done t=$(( $(date +%s) - t0 ))s" >> "$OUT/bench.log"
S="--encoding q4 --group 64 --context 512 --tokens 128 --skip-prefill --profile"
for sh in phi-4 llama-3.1-8b llama-3.2-1b; do
  b $sh-q4-new 30 app --shape $sh $S --int8-prologue octets,units --interleave on,off --repeat 2
  b $sh-q4-old 12 old --shape $sh $S
done
for sh in llama-3.1-8b llama-3.2-1b; do
  b $sh-sampled-new 20 app --shape $sh $S --temperature 0,0.8 --repeat 2
  b $sh-sampled-mid 20 mid --shape $sh $S --temperature 0,0.8
done
for sh in phi-4 llama-3.2-1b; do b $sh-q8 15 app --shape $sh --encoding q8 --context 512 --tokens 128 --skip-prefill --interleave on,off; done
b llama-3.1-8b-4096 15 app --shape llama-3.1-8b --encoding q4 --group 64 --context 4096 --tokens 64 --skip-prefill --profile
echo "total $(( $(date +%s) - t0 ))s" >> "$OUT/bench.log"
