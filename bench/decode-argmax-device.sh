#!/usr/bin/env bash
# Issue 14 (2026-12-05 evening): the greedy token from lm_head's argmax partials (`--argmax fused`)
# against the argmax dispatch in the same process, at ctx 512 on the three q4 shapes, with the
# roofline of the same call; chunks of about 32 keys instead of 64 (`--attention-splits`) at 512 and
# 4,096 keys; the argmax-partials test and the int8 kernels' tests on the device.
# Stage (dev machine; .gpu is git-ignored, the device runs /work/main's tree with carry):
#   B="--bundle --platform=node --format=esm --external:webgpu"; BAN="--banner:js=import{createRequire}from'module';const require=createRequire(import.meta.url);"
#   npx esbuild src/cli/main.ts $B "$BAN" --outfile=/work/main/.gpu/decode/app.mjs        (this build)
#   npx esbuild src/cli/main.ts $B "$BAN" --outfile=/work/main/.gpu/decode/old.mjs        (from a checkout of 82f6f20)
#   npx esbuild bench/kernel-lab.ts $B "$BAN" --outfile=/work/main/.gpu/decode/lab.mjs
#   npx esbuild test/backends/webgpu/T.test.ts $B "$BAN" --inject:src/backends/webgpu/node-gpu.ts --outfile=/work/main/.gpu/decode/T.test.mjs   (T = fused, fused-matvec)
#   cp -r ../shared/fixtures/models/arch/llama /work/main/.gpu/decode/fixtures/models/arch/; cp bench/decode-argmax-device.sh /work/main/.gpu/decode/run.sh
# Device: bash .gpu/decode/run.sh   (carry .gpu/setup.sh .gpu/node.xz .gpu/node_modules .gpu/debs .gpu/decode; results under $OUT)
set -uo pipefail
eval "$(bash .gpu/setup.sh)"
D=.gpu/decode; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv > "$OUT/gpu.txt" 2>&1; date -u >> "$OUT/gpu.txt"
t0=$(date +%s)
b() { local name=$1 t=$2 app=$3; shift 3; echo "== $name [$app] bench $* (t=$(( $(date +%s) - t0 ))s)" >> "$OUT/bench.log"; PDVM_SUBGROUP_MATRIX=0 timeout $t node $D/$app.mjs bench --json "$@" 2>&1 >> "$OUT/results.jsonl" | grep -v Warning >> "$OUT/bench.log"; }
{ PDVM_SUBGROUP_MATRIX=0 timeout 25 node --test $D/fused-matvec.test.mjs
  PDVM_FIXTURES=$D/fixtures PDVM_SUBGROUP_MATRIX=0 timeout 50 node --test --test-name-pattern='argmax partials' $D/fused.test.mjs; } 2>&1 | grep -v Warning | grep -E "^(ok|not ok)|# (pass|fail)|rror|assert" > "$OUT/tests.log"
echo "tests done t=$(( $(date +%s) - t0 ))s" >> "$OUT/bench.log"
timeout 25 node $D/lab.mjs --only roofline --shapes phi-4,llama-3.2-1b,llama-3.1-8b 2>&1 | grep -v Warning > "$OUT/roofline.txt"
echo "roofline done t=$(( $(date +%s) - t0 ))s" >> "$OUT/bench.log"
S="--encoding q4 --group 64 --context 512 --tokens 128 --skip-prefill --profile"
for sh in phi-4 llama-3.1-8b llama-3.2-1b; do b $sh-q4-argmax 30 app --shape $sh $S --argmax fused,dispatch --repeat 2; done
b llama-3.2-1b-q4-old 12 old --shape llama-3.2-1b $S
for sh in llama-3.1-8b llama-3.2-1b; do b $sh-q4-splits22 12 app --shape $sh $S --argmax fused --attention-splits 22; done
b llama-3.1-8b-4096 15 app --shape llama-3.1-8b --encoding q4 --group 64 --context 4096 --tokens 64 --skip-prefill --profile --argmax fused
b llama-3.1-8b-4096-splits130 15 app --shape llama-3.1-8b --encoding q4 --group 64 --context 4096 --tokens 64 --skip-prefill --profile --argmax fused --attention-splits 130
echo "total $(( $(date +%s) - t0 ))s" >> "$OUT/bench.log"
