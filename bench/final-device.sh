#!/usr/bin/env bash
# The lead's last device call of 2026-12-05 (docs/PERFORMANCE.md "The lead's device call, 2026-12-05"):
# what the helpers' calls left unmeasured, in priority order, each under its own timeout.
# Stage (dev machine, from main; .gpu is git-ignored and travels with carry [".gpu"]):
#   D=.gpu/lead; B="--bundle --platform=node --format=esm --external:webgpu"; BAN="--banner:js=import{createRequire}from'module';const require=createRequire(import.meta.url);"
#   npx esbuild src/cli/main.ts $B "$BAN" --outfile=$D/cli.mjs
#   npx esbuild bench/batched-step.ts $B "$BAN" --inject:src/backends/webgpu/node-gpu.ts --outfile=$D/batched-step.mjs
#   npx esbuild scripts/load-test.ts $B "$BAN" --outfile=$D/load-test.mjs
#   copy ../shared/fixtures/models/brown-llama-12m (model.safetensors as model.safetensors.xz) to $D/brown-llama-12m,
#   ../shared/fixtures/text/brown/validation.txt to $D/; cp bench/final-device.sh $D/run.sh
# Device: bash .gpu/lead/run.sh   (results under $OUT)
# 1. perplexity of the dense f32 brown-llama-12m (first 2,049 validation tokens, ctx 256) on the default
#    (tensor-core) prefill; the CPU's is 81.3069 (../shared/fixtures/README.md)
# 2. perplexity of the q4 demo at --ctx 1024 (the prompt attention split over keys); the CPU's is 117.499696
# 3. the server load test on the default batched products (llama-3.1-8b q4 g64, 1 / 8 / 32 streams)
# 4. the batched tensor-core product's timing-only variants at 8 rows (what limits it)
set -uo pipefail
eval "$(bash .gpu/setup.sh)"
D=.gpu/lead; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1; date -u >> "$OUT/gpu.txt"
t0=$(date +%s); tl() { echo "t=$(( $(date +%s) - t0 ))s $*" >> "$OUT/log.txt"; }
xz -dc $D/brown-llama-12m/model.safetensors.xz > $D/brown-llama-12m/model.safetensors; rm $D/brown-llama-12m/model.safetensors.xz
ppl() { echo "== perplexity $*" >> "$OUT/perplexity.log"; timeout 25 node $D/cli.mjs perplexity "$@" --text $D/validation.txt --limit 2049 --backend webgpu --json >> "$OUT/perplexity.log" 2> >(grep -v Warning >> "$OUT/perplexity.log"); tl "perplexity $*"; }
ppl $D/brown-llama-12m
ppl models/brown-llama-12m.upg --ctx 1024
timeout 95 node $D/load-test.mjs --cli $D/cli.mjs --synthetic llama-3.1-8b --backend webgpu --batched-step --context 512 --max-concurrency 32 \
  --streams 1,8,32 --alone 1 --max-tokens 128 --prompt-tokens 32 2>&1 | grep -v Warning > "$OUT/load.txt"; tl load
timeout 30 node $D/batched-step.mjs --shape llama-3.1-8b --batches 8 --kernels 8x2,tc-64-2048-1,tc-64-2048-1-nodequant,tc-64-2048-1-nox --steps 8 --context 512 --prompt 32 --profile 8 2>&1 | grep -v Warning > "$OUT/tc-variants.txt"; tl tc-variants
