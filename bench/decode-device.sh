#!/usr/bin/env bash
# The issue-14 decode figures of docs/PERFORMANCE.md, in one device call (see ../shared/gpu/README.md).
# Stage (on the dev machine, in the checkout that travels; .gpu is git-ignored):
#   B="--bundle --platform=node --format=esm --external:webgpu"; BAN="--banner:js=import { createRequire as __pdvmCreateRequire } from 'node:module'; const require = __pdvmCreateRequire(import.meta.url);"
#   npx esbuild src/cli/main.ts $B "$BAN" --outfile=.gpu/decode/app.mjs           (this build)
#   npx esbuild src/cli/main.ts $B "$BAN" --outfile=.gpu/decode/old.mjs           (the build compared with, from the older checkout)
#   npx esbuild bench/kernel-lab.ts $B "$BAN" --outfile=.gpu/decode/lab.mjs
#   npx esbuild test/backends/webgpu/T.test.ts $B "$BAN" --inject:src/backends/webgpu/node-gpu.ts --outfile=.gpu/decode/T.test.mjs  (T = fused, fused-matvec, fused-nll;
#     the inject registers Dawn: a bundle cannot reach dist's node-gpu.js by the computed import)
#   copy ../shared/fixtures/text/brown/validation.txt (and for MODE=mid models/arch) under .gpu/decode/fixtures/; cp bench/decode-device.sh .gpu/decode/run.sh
# Device: MODE=mid|final bash .gpu/decode/run.sh   (carry .gpu; results under $OUT: results.jsonl, bench.log, roofline.txt, tests*.log)
set -uo pipefail
eval "$(bash .gpu/setup.sh)"
D=.gpu/decode; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PDVM_FIXTURES=$D/fixtures
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv > "$OUT/gpu.txt" 2>&1
date -u >> "$OUT/gpu.txt"
t0=$(date +%s)
b() { local name=$1 app=$2; shift 2; echo "== $name [$app] bench $* (t=$(( $(date +%s) - t0 ))s)" >> "$OUT/bench.log"; timeout 60 node $D/$app.mjs bench --json "$@" 2>&1 >> "$OUT/results.jsonl" | grep -v Warning >> "$OUT/bench.log"; }
if [ "${MODE:-mid}" = mid ]; then
  { timeout 40 node $D/fused-matvec.test.mjs; PDVM_NLL_TOKENS=2049 timeout 50 node $D/fused-nll.test.mjs; } 2>&1 | grep -v Warning > "$OUT/tests.log"
  b phi4-q4-int8 app --shape phi-4 --encoding q4 --group 64 --context 512 --tokens 128 --profile
  b phi4-q4-f32 app --shape phi-4 --encoding q4 --group 64 --context 512 --tokens 128 --activations f32 --profile
  b llama8b-q4-int8 app --shape llama-3.1-8b --encoding q4 --group 64 --context 512 --tokens 128
  b llama8b-q4-f32 app --shape llama-3.1-8b --encoding q4 --group 64 --context 512 --tokens 128 --activations f32
  b llama1b-q4-int8 app --shape llama-3.2-1b --encoding q4 --group 64 --context 512 --tokens 128 --profile
  b llama1b-q4-f32 app --shape llama-3.2-1b --encoding q4 --group 64 --context 512 --tokens 128 --activations f32
  b check-brown app --shape brown-llama --encoding q4 --context 64 --tokens 32 --check 32 --probe-mib 256 --path both
  timeout 90 node --test-name-pattern='fused decode: (llama|llama3-tied-scaled|phi3|qwen2|mistral-swa) |without subgroups' $D/fused.test.mjs 2>&1 | grep -v Warning > "$OUT/tests-fused.log"
fi
if [ "${MODE:-mid}" = final ]; then
  S="--context 512 --tokens 128"
  { timeout 40 node $D/fused-matvec.test.mjs; PDVM_NLL_TOKENS=2049 timeout 50 node $D/fused-nll.test.mjs; } 2>&1 | grep -v Warning > "$OUT/tests.log"
  timeout 90 node $D/lab.mjs --only roofline --shapes phi-4,llama-3.2-1b,llama-3.1-8b 2>&1 | grep -v Warning > "$OUT/roofline.txt"
  for sh in phi-4 llama-3.1-8b llama-3.2-1b; do
    b $sh-q4-new app --shape $sh --encoding q4 --group 64 $S $([ $sh = phi-4 ] && echo --profile)
    b $sh-q4-old old --shape $sh --encoding q4 --group 64 $S
  done
  b phi-4-q4-new-unroll1 app --shape phi-4 --encoding q4 --group 64 $S --unroll 1
  b phi-4-q4-new-unroll2 app --shape phi-4 --encoding q4 --group 64 $S --unroll 2
  b llama-3.2-1b-q4-new-unroll1 app --shape llama-3.2-1b --encoding q4 --group 64 $S --unroll 1
  for sh in phi-4 llama-3.2-1b; do for e in q8 bf16; do
    b $sh-$e-new app --shape $sh --encoding $e $S
    b $sh-$e-old old --shape $sh --encoding $e $S
  done; done
  b llama-3.1-8b-q8-new app --shape llama-3.1-8b --encoding q8 $S
  b llama-3.1-8b-q8-old old --shape llama-3.1-8b --encoding q8 $S
  b check-brown app --shape brown-llama --encoding q4 --context 64 --tokens 32 --check 32 --probe-mib 256 --path both
fi
echo "total $(( $(date +%s) - t0 ))s" >> "$OUT/bench.log"
