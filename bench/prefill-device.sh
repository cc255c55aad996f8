#!/usr/bin/env bash
# The prefill figures and device checks of docs/PERFORMANCE.md (issue 13), in one device call:
#   here: bash bench/prefill-device.sh --build     (bundles the CLI and the tests into /work/main/.gpu/prefill,
#         with the architecture fixtures and the validation text; about 12 MB)
#   device (carry .gpu): bash .gpu/prefill/prefill-device.sh   (results under $OUT)
# 1. the prefill product kernels against the CPU (f32 tiles and f16 subgroup-matrix tiles), device features
# 2. every architecture fixture's prefill on the f32 path (the default) against the CPU engine (three: the 64 MiB)
# 3. perplexity of the q4 demo model with subgroup matrices (the default) and without (PDVM_SUBGROUP_MATRIX=0; the CPU's: docs/PERFORMANCE.md)
# 4. pdvm bench --prefill 512 on phi-4 / llama-3.1-8b / llama-3.2-1b q4 g64, subgroup matrices on and off
set -uo pipefail
if [ "${1:-}" = "--build" ]; then
  set -e
  K=/work/main/.gpu/prefill; rm -rf "$K"; mkdir -p "$K/fixtures/models/arch" "$K/fixtures/text/brown"
  B=(--bundle --platform=node --format=esm --external:webgpu "--banner:js=import { createRequire as __pdvmCreateRequire } from 'node:module'; const require = __pdvmCreateRequire(import.meta.url);")
  npx esbuild src/cli/main.ts "${B[@]}" --outfile="$K/app.mjs" --log-level=warning
  for t in matmul-tiled device prefill; do npx esbuild test/backends/webgpu/$t.test.ts "${B[@]}" --inject:src/backends/webgpu/node-gpu.ts --outfile="$K/$t.test.mjs" --log-level=warning; done
  for m in llama phi3 qwen2; do  # three of the five: the 64 MiB a device call carries
    mkdir -p "$K/fixtures/models/arch/$m"; cp ../shared/fixtures/models/arch/$m/{config.json,generation_config.json,model.safetensors} "$K/fixtures/models/arch/$m/"
  done
  cp ../shared/fixtures/text/brown/validation.txt "$K/fixtures/text/brown/"
  cp bench/prefill-device.sh bench/prefill-tiles-device.sh "$K/"
  du -sh "$K"; exit 0
fi
eval "$(bash .gpu/setup.sh)"
K=.gpu/prefill; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PDVM_FIXTURES=$K/fixtures
nvidia-smi --query-gpu=name,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
t() { echo "== $*" >> "$OUT/tests.log"; "$@" 2>&1 | grep -v Warning >> "$OUT/tests.log"; }
t node --test $K/device.test.mjs $K/matmul-tiled.test.mjs
bench() { echo "== pdvm bench $*" >> "$OUT/bench.log"; node $K/app.mjs bench --json "$@" >> "$OUT/results.jsonl" 2> >(grep -v Warning >> "$OUT/bench.log"); }
for s in llama-3.2-1b llama-3.1-8b phi-4; do bench --shape $s --encoding q4 --group 64 --prefill 512; done
for s in llama-3.2-1b llama-3.1-8b phi-4; do bench --shape $s --encoding q4 --group 64 --prefill 512 --no-subgroup-matrix; done
t node --test $K/prefill.test.mjs
ppl() { echo "== perplexity $*" >> "$OUT/perplexity.log"; "$@" node $K/app.mjs perplexity models/brown-llama-12m.upg --text $K/fixtures/text/brown/validation.txt --limit 2049 --backend webgpu --json >> "$OUT/perplexity.log" 2> >(grep -v Warning >> "$OUT/perplexity.log"); }
ppl env
ppl env PDVM_SUBGROUP_MATRIX=0
echo "== generate" >> "$OUT/tests.log"; node $K/app.mjs generate models/brown-llama-12m.upg --max-tokens 16 --backend webgpu --verbose --temperature 0 --prompt-ids $(seq -s, 1 300)  2>&1 | grep -v Warning >> "$OUT/tests.log"
sleep 1
