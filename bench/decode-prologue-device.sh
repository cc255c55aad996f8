#!/usr/bin/env bash
# Issue 14 (2026-12-05): the int8 kernels' octet norm prologue and interleaved workers against the
# previous forms in the same process, the old build, sampled against greedy decode, q8/bf16, attention
# at 4,160 keys, the roofline and the NLL; one device call.
# Stage (dev machine, into /work/main's ignored .gpu, which travels with carry [".gpu"]):
#   B="--bundle --platform=node --format=esm --external:webgpu"; BAN="--banner:js=import { createRequire as __pdvmCreateRequire } from 'node:module'; const require = __pdvmCreateRequire(import.meta.url);"
#   npx esbuild src/cli/main.ts $B "$BAN" --outfile=.gpu/decode/app.mjs      (this build; old.mjs the same from the build compared with)
#   npx esbuild bench/kernel-lab.ts $B "$BAN" --inject:src/backends/webgpu/node-gpu.ts --outfile=.gpu/decode/lab.mjs
#   npx esbuild test/backends/webgpu/T.test.ts $B "$BAN" --inject:src/backends/webgpu/node-gpu.ts --outfile=.gpu/decode/T.test.mjs   (T = fused-matvec, fused-nll)
#   cp ../shared/fixtures/text/brown/validation.txt .gpu/decode/fixtures/text/brown/; cp bench/decode-prologue-device.sh .gpu/decode/run3.sh
# Device: bash .gpu/decode/run3.sh   (results under $OUT: bench.log, results.jsonl, roofline.txt, tests.log, nll.log, gpu.txt)
set -uo pipefail
eval "$(bash .gpu/setup.sh)"
D=.gpu/decode; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv > "$OUT/gpu.txt" 2>&1; date -u >> "$OUT/gpu.txt"
t0=$(date +%s)
b() { local name=$1 t=$2 app=$3; shift 3; echo "== $name [$app] bench $* (t=$(( $(date +%s) - t0 ))s)" >> "$OUT/bench.log"; PDVM_SUBGROUP_MATRIX=0 timeout $t node $D/$app.mjs bench --json "$@" 2>&1 >> "$OUT/results.jsonl" | grep -v Warning >> "$OUT/bench.log"; }
PDVM_SUBGROUP_MATRIX=0 timeout 25 node --test $D/fused-matvec.test.mjs 2>&1 | grep -v Warning | grep -E "^(ok|not ok)|# (pass|fail)|rror" > "$OUT/tests.log"
echo "tests done t=$(( $(date +%s) - t0 ))s" >> "$OUT/bench.log"
PDVM_FIXTURES=$D/fixtures PDVM_NLL_UNITS=1 PDVM_NLL_TOKENS=2049 PDVM_SUBGROUP_MATRIX=0 timeout 55 node --test $D/fused-nll.test.mjs 2>&1 | grep -v Warning | grep -E "NLL|^(ok|not ok)|# (pass|fail)" > "$OUT/nll.log"
echo "nll done t=$(( $(date +%s) - t0 ))s" >> "$OUT/bench.log"
timeout 30 node $D/lab.mjs --only roofline --shapes phi-4,llama-3.2-1b,llama-3.1-8b 2>&1 | grep -v Warning > "$OUT/roofline.txt"
echo "roofline done t=$(( $(date +%s) - t0 ))s" >> "$OUT/bench.log"
S="--encoding q4 --group 64 --context 512 --tokens 128 --skip-prefill --profile"
for sh in phi-4 llama-3.1-8b llama-3.2-1b; do
  b $sh-q4-variants 35 app --shape $sh $S --int8-prologue octets,units --interleave on,off --repeat 2
  b $sh-q4-old 12 old --shape $sh $S
done
b phi-4-q4-grid 20 app --shape phi-4 $S --unroll default,3 --norm-workgroups default,396
for sh in llama-3.1-8b llama-3.2-1b; do b $sh-q4-sampled 20 app --shape $sh $S --temperature 0,0.8 --repeat 2; done
for e in q8 bf16; do for sh in phi-4 llama-3.2-1b; do
  b $sh-$e 20 app --shape $sh --encoding $e --context 512 --tokens 128 --skip-prefill --interleave on,off
done; done
b llama-3.1-8b-4096 15 app --shape llama-3.1-8b --encoding q4 --group 64 --context 4096 --tokens 64 --skip-prefill --profile
echo "benches done t=$(( $(date +%s) - t0 ))s" >> "$OUT/bench.log"
echo "total $(( $(date +%s) - t0 ))s" >> "$OUT/bench.log"
