#!/usr/bin/env bash
# kv's device run (KV cache and attention, docs/PERFORMANCE.md "KV cache"), in one device call:
#   npx tsc -p . && B="--bundle --platform=node --format=esm --external:webgpu"
#   BAN="--banner:js=import { createRequire as __pdvmCreateRequire } from 'node:module'; const require = __pdvmCreateRequire(import.meta.url);"
#   npx esbuild src/cli/main.ts $B "$BAN" --outfile=.gpu/kv/app.mjs
#   npx esbuild dist/test/backends/webgpu/kernels.test.js $B "$BAN" --outfile=.gpu/kv/kernels.test.mjs
#   npx esbuild dist/test/backends/webgpu/fused-kv-nll.test.js $B "$BAN" --outfile=.gpu/kv/fused-kv-nll.test.mjs
#   mkdir -p .gpu/kv/fixtures/text/brown && cp ../shared/fixtures/text/brown/validation.txt .gpu/kv/fixtures/text/brown/
#   device: bash bench/kv-device.sh   (carry .gpu; results under $OUT)
# The kernel tests against the CPU ops, the f16-vs-f32 KV NLL through the fused decoder, then pdvm bench
# with both caches over the same weights at ctx 512 and 4096 on three shapes, each with --profile
# (layer 0's attention against reading its K and V at the probe's bandwidth).
set -uo pipefail
eval "$(bash .gpu/setup.sh)"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1
export PDVM_FIXTURES=.gpu/kv/fixtures
t0=$SECONDS
timeout 150 node --test --test-reporter=spec .gpu/kv/kernels.test.mjs 2>&1 | grep -v Warning > "$OUT/kernels-test.txt"
echo "kernels test done at $((SECONDS - t0)) s" >> "$OUT/summary.txt"
timeout 120 node --test --test-reporter=spec .gpu/kv/fused-kv-nll.test.mjs 2>&1 | grep -v Warning > "$OUT/nll.txt"
echo "nll done at $((SECONDS - t0)) s" >> "$OUT/summary.txt"
bench() { echo "== pdvm bench $*" >> "$OUT/bench.log"; timeout 170 node .gpu/kv/app.mjs bench --json "$@" >> "$OUT/results.jsonl" 2> >(grep -v Warning >> "$OUT/bench.log"); echo "bench $* done at $((SECONDS - t0)) s" >> "$OUT/summary.txt"; }
for shape in llama-3.2-1b llama-3.1-8b phi-4; do
  for ctx in 512 4096; do bench --shape "$shape" --encoding q4 --group 64 --context "$ctx" --tokens 48 --kv-cache both --profile --probe-mib 512; done
done
# more chunks of keys at 4096 (the default is 32), and the packed f16 kernels (no shader-f16)
for splits in 128; do bench --shape llama-3.1-8b --encoding q4 --group 64 --context 4096 --tokens 32 --kv-cache f16 --profile --attention-splits "$splits" --probe-mib 512; done
bench --shape llama-3.1-8b --encoding q4 --group 64 --context 4096 --tokens 32 --kv-cache f16 --profile --no-f16 --probe-mib 512
sleep 1
