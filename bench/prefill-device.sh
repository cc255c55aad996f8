#!/usr/bin/env bash
# The prefill figures and device checks of docs/PERFORMANCE.md (issue 13), in one device call:
#   here: bash bench/prefill-device.sh --build   (bundles the CLI, the kernel tests and bench/prefill-lab.ts
#         from the current directory's sources into /work/main/.gpu/prefill with the validation text; about 3 MB)
#   device (carry .gpu): bash .gpu/prefill/prefill-device.sh   (results under $OUT)
# 1. the device's features and self-tests; the prefill product kernels against the CPU (f32 tiles, and the
#    tensor-core kernel in each tile it may choose); prompt attention (f32 tiles, tensor cores, split over keys) vs the CPU
# 2. pdvm bench --prefill 512 on llama-3.2-1b (5 runs: its first runs are slow) / llama-3.1-8b / phi-4 q4 g64
#    (the default path: tensor-core products and prompt attention split over keys), then 8B and phi-4 with --profile
# 3. perplexity of the q4 demo model on the default (tensor-core) paths (the CPU's: docs/PERFORMANCE.md)
# 4. LONG=N: pdvm bench --prefill N on phi-4 (one run), e.g. LONG=16384
# 5. bench/prefill-lab.ts: the tensor-core kernel's layouts and tiles on the real shapes, against the f32 tiles
#    (LAB=0: not; LAB_VARIANTS, LAB_SHAPES choose)
# 6. AB="NAME=VALUE ..." (environment settings, e.g. PDVM_ATTENTION_SPLIT=0, PDVM_FUSED_CONVERT=0 or
#    PDVM_SM_TILE=s64-4422): 8B and phi-4 pp512 with --profile again under each
# 7. EXTRA='...': more commands (bench() takes ENVS=...), e.g. the 16k run with PDVM_ATTENTION_SPLIT=0
set -uo pipefail
if [ "${1:-}" = "--build" ]; then
  set -e
  K=/work/main/.gpu/prefill; rm -rf "$K"; mkdir -p "$K"
  B=(--bundle --platform=node --format=esm --external:webgpu "--banner:js=import { createRequire as __pdvmCreateRequire } from 'node:module'; const require = __pdvmCreateRequire(import.meta.url);")
  npx esbuild src/cli/main.ts "${B[@]}" --outfile="$K/app.mjs" --log-level=warning
  for t in matmul-tiled device kernels; do npx esbuild test/backends/webgpu/$t.test.ts "${B[@]}" --inject:src/backends/webgpu/node-gpu.ts --outfile="$K/$t.test.mjs" --log-level=warning; done
  npx esbuild bench/prefill-lab.ts "${B[@]}" --inject:src/backends/webgpu/node-gpu.ts --outfile="$K/lab.mjs" --log-level=warning
  cp ../shared/fixtures/text/brown/validation.txt "$K/"
  cp bench/prefill-device.sh "$K/"
  du -sh "$K"; exit 0
fi
eval "$(bash .gpu/setup.sh)"
K=.gpu/prefill; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1
t() { echo "== $*" >> "$OUT/tests.log"; timeout ${TEST_S:-60} "$@" 2>&1 | grep -v Warning >> "$OUT/tests.log"; }
[ "${TESTS:-1}" = 0 ] || t node --test $K/device.test.mjs $K/matmul-tiled.test.mjs
[ "${TESTS:-1}" = 0 ] || t node --test --test-name-pattern="prompt attention in tiles|rmsnorm|swiglu" $K/kernels.test.mjs
bench() { echo "== ${ENVS:-} pdvm bench $*" >> "$OUT/bench.log"; env ${ENVS:-} timeout ${BENCH_S:-40} node $K/app.mjs bench --json "$@" >> "$OUT/results.jsonl" 2> >(grep -v Warning >> "$OUT/bench.log"); }
bench --shape llama-3.2-1b --encoding q4 --group 64 --prefill 512 --runs 5
bench --shape llama-3.1-8b --encoding q4 --group 64 --prefill 512 --runs 3 --profile
bench --shape phi-4 --encoding q4 --group 64 --prefill 512 --runs 3 --profile
echo "== perplexity" >> "$OUT/perplexity.log"
timeout 40 node $K/app.mjs perplexity models/brown-llama-12m.upg --text $K/validation.txt --limit 2049 --backend webgpu --json >> "$OUT/perplexity.log" 2> >(grep -v Warning >> "$OUT/perplexity.log")
[ "${LONG:-}" = "" ] || BENCH_S=${LONG_S:-60} bench --shape phi-4 --encoding q4 --group 64 --prefill $LONG --runs 1
[ "${LAB:-1}" = 0 ] || timeout ${LAB_S:-60} node $K/lab.mjs --json "$OUT/lab.jsonl" --budget ${LAB_BUDGET_S:-40} --variants "${LAB_VARIANTS:-}" --shapes ${LAB_SHAPES:-llama-3.1-8b:gate_up,llama-3.1-8b:down,phi-4:qkv,llama-3.2-1b:qkv,llama-3.1-8b:qkv,llama-3.2-1b:down} > "$OUT/lab.log" 2>&1
echo "lab exit $?" >> "$OUT/lab.log"
for e in ${AB:-}; do
  ENVS="$e" bench --shape llama-3.1-8b --encoding q4 --group 64 --prefill 512 --runs 3 --profile
  ENVS="$e" bench --shape phi-4 --encoding q4 --group 64 --prefill 512 --runs 3 --profile
done
[ -z "${EXTRA:-}" ] || eval "$EXTRA"
sleep 1
