#!/usr/bin/env bash
# The int8 tensor-core prefill (kernels/matmul-int8.ts, issue 13) on the device, in one call:
#   here: bash bench/int8-prefill-device.sh --build   (bundles the CLI and the kernel tests from the current
#         directory's sources into /work/main/.gpu/prefill with the validation text; about 3 MB)
#   device: carry [".gpu/setup.sh", ".gpu/node.xz", ".gpu/node_modules", ".gpu/debs", ".gpu/prefill"],
#         command `bash .gpu/prefill/int8-prefill-device.sh` (results under $OUT; about 250 s; each step has its
#         own timeout and none starts past BUDGET_S seconds)
# 1. the features and self-tests with PDVM_PREFILL_I8=1; matmul-int8.test (the real kernel against the CPU) and
#    matmul-tiled.test / device.test (the f16 path unchanged)
# 2. pdvm bench --prefill 512, q4 g64, llama-3.1-8b / phi-4 / llama-3.2-1b: the default (f16 tensor cores) and
#    PDVM_PREFILL_I8=1 in the same call (8B with --profile both ways)
# 3. perplexity of the q4 demo (models/brown-llama-12m.upg, first 2,049 validation tokens) with PDVM_PREFILL_I8=1,
#    windows of 256 and --ctx 1024 (CPU: 81.774742 and 117.499696)
# 4. TILES="2422 2242 ...": 8B pp512 with PDVM_I8_TILE set to each
set -uo pipefail
if [ "${1:-}" = "--build" ]; then
  set -e
  K=/work/main/.gpu/prefill; rm -rf "$K"; mkdir -p "$K"
  B=(--bundle --platform=node --format=esm --external:webgpu "--banner:js=import { createRequire as __pdvmCreateRequire } from 'node:module'; const require = __pdvmCreateRequire(import.meta.url);")
  npx esbuild src/cli/main.ts "${B[@]}" --outfile="$K/app.mjs" --log-level=warning
  for t in matmul-int8 matmul-tiled device; do npx esbuild test/backends/webgpu/$t.test.ts "${B[@]}" --inject:src/backends/webgpu/node-gpu.ts --outfile="$K/$t.test.mjs" --log-level=warning; done
  cp ../shared/fixtures/text/brown/validation.txt "$K/"
  cp bench/int8-prefill-device.sh "$K/"
  du -sh "$K"; exit 0
fi
eval "$(bash .gpu/setup.sh)"
K=.gpu/prefill; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1; date -u >> "$OUT/gpu.txt"
t0=$(date +%s); left() { [ $(( $(date +%s) - t0 )) -lt ${BUDGET_S:-270} ]; }
tl() { echo "t=$(( $(date +%s) - t0 ))s $*" >> "$OUT/log.txt"; }
t() { left || return; echo "== $*" >> "$OUT/tests.log"; timeout ${TEST_S:-60} "$@" 2>&1 | grep -v Warning >> "$OUT/tests.log"; tl "test $*"; }
bench() { left || return; echo "== ${ENVS:-} pdvm bench $*" >> "$OUT/bench.log"; env ${ENVS:-} timeout ${BENCH_S:-45} node $K/app.mjs bench --json "$@" >> "$OUT/results.jsonl" 2> >(grep -v Warning >> "$OUT/bench.log"); tl "bench ${ENVS:-} $*"; }
ppl() { left || return; echo "== ${ENVS:-} perplexity $*" >> "$OUT/perplexity.log"; env ${ENVS:-} timeout 30 node $K/app.mjs perplexity models/brown-llama-12m.upg --text $K/validation.txt --limit 2049 --backend webgpu --json "$@" >> "$OUT/perplexity.log" 2> >(grep -v Warning >> "$OUT/perplexity.log"); tl "perplexity ${ENVS:-} $*"; }
I8=PDVM_PREFILL_I8=1
PDVM_PREFILL_I8=1 t node --test $K/matmul-int8.test.mjs
Q="--encoding q4 --group 64 --prefill 512 --runs 3"
bench --shape llama-3.1-8b $Q --profile
ENVS=$I8 bench --shape llama-3.1-8b $Q --profile
ENVS=$I8 ppl --ctx 1024
ENVS=$I8 ppl
bench --shape phi-4 $Q
ENVS=$I8 bench --shape phi-4 $Q
bench --shape llama-3.2-1b $Q --runs 5
ENVS=$I8 bench --shape llama-3.2-1b $Q --runs 5
for tile in ${TILES:-}; do ENVS="$I8 PDVM_I8_TILE=$tile" bench --shape llama-3.1-8b $Q; done
TEST_S=50 t node --test $K/matmul-tiled.test.mjs $K/device.test.mjs
sleep 1
