#!/usr/bin/env bash
# The decode-attention (chunks + merge) figures of docs/PERFORMANCE.md ("Decode attention in chunks"), one device call.
# Stage (dev machine, into the checkout that travels; .gpu is git-ignored):
#   B="--bundle --platform=node --format=esm --external:webgpu"; BAN="--banner:js=import{createRequire}from'module';const require=createRequire(import.meta.url);"
#   npx esbuild src/cli/main.ts $B "$BAN" --outfile=.gpu/decode/app.mjs            (this build)
#   npx esbuild src/cli/main.ts $B "$BAN" --outfile=.gpu/decode/old.mjs            (the build compared with, from the older checkout)
#   npx esbuild bench/kernel-lab.ts $B "$BAN" --outfile=.gpu/decode/lab.mjs
#   npx esbuild test/backends/webgpu/T.test.ts $B "$BAN" --inject:src/backends/webgpu/node-gpu.ts --outfile=.gpu/decode/T.test.mjs   (T = kernels, fused-nll)
#   copy ../shared/fixtures/text/brown/validation.txt to .gpu/decode/fixtures/text/brown/; cp bench/decode-chunks-device.sh .gpu/decode/run2.sh
# Device (carry .gpu): bash .gpu/decode/run2.sh   (results under $OUT: bench.log, results.jsonl, roofline.txt, tests.log, nll.log)
set -uo pipefail
eval "$(bash .gpu/setup.sh)"
D=.gpu/decode; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv > "$OUT/gpu.txt" 2>&1; date -u >> "$OUT/gpu.txt"
t0=$(date +%s)
b() { local name=$1 t=$2 app=$3; shift 3; echo "== $name [$app] bench $* (t=$(( $(date +%s) - t0 ))s)" >> "$OUT/bench.log"; PDVM_SUBGROUP_MATRIX=0 timeout $t node $D/$app.mjs bench --json "$@" 2>&1 >> "$OUT/results.jsonl" | grep -v Warning >> "$OUT/bench.log"; }
PDVM_SUBGROUP_MATRIX=0 timeout 25 node --test --test-name-pattern='in chunks with every load|argmax' $D/kernels.test.mjs 2>&1 | grep -v Warning | grep -E "^(ok|not ok)|# (pass|fail)|error" > "$OUT/tests.log"
echo "tests done t=$(( $(date +%s) - t0 ))s" >> "$OUT/bench.log"
timeout 30 node $D/lab.mjs --only roofline --shapes phi-4,llama-3.2-1b,llama-3.1-8b 2>&1 | grep -v Warning > "$OUT/roofline.txt"
echo "roofline done t=$(( $(date +%s) - t0 ))s" >> "$OUT/bench.log"
S="--context 512 --tokens 128"
for sh in phi-4 llama-3.1-8b llama-3.2-1b; do
  b $sh-q4-new 20 app --shape $sh --encoding q4 --group 64 $S --profile --attention split,split-gqa
  b $sh-q4-old 12 old --shape $sh --encoding q4 --group 64 $S --profile
done
b l1b-q4-new2 10 app --shape llama-3.2-1b --encoding q4 --group 64 $S
b l1b-q4-old2 10 old --shape llama-3.2-1b --encoding q4 --group 64 $S
b l8b-4096 18 app --shape llama-3.1-8b --encoding q4 --group 64 --context 4096 --tokens 64 --skip-prefill --profile --attention split,split-gqa
b phi4-4096 18 app --shape phi-4 --encoding q4 --group 64 --context 4096 --tokens 64 --skip-prefill --profile --attention split,split-gqa
b l1b-4096 15 app --shape llama-3.2-1b --encoding q4 --group 64 --context 4096 --tokens 64 --skip-prefill --profile --attention split,split-gqa
for e in q8 bf16; do for sh in llama-3.2-1b llama-3.1-8b phi-4; do
  b $sh-$e-new 15 app --shape $sh --encoding $e $S
  b $sh-$e-old 15 old --shape $sh --encoding $e $S
done; done
echo "benches done t=$(( $(date +%s) - t0 ))s" >> "$OUT/bench.log"
PDVM_FIXTURES=$D/fixtures PDVM_NLL_TOKENS=2049 PDVM_SUBGROUP_MATRIX=0 timeout 45 node --test $D/fused-nll.test.mjs 2>&1 | grep -v Warning | grep -E "NLL|^(ok|not ok)|# (pass|fail)" > "$OUT/nll.log"
echo "total $(( $(date +%s) - t0 ))s" >> "$OUT/bench.log"
