#!/usr/bin/env bash
# The int8 tensor-core prefill (kernels/matmul-int8.ts, issue 13) on the device, in one call:
#   here: bash bench/int8-prefill-device.sh --build   (bundles the CLI and the kernel tests from the current
#         directory's sources into /work/main/.gpu/prefill with the validation text; about 3 MB)
#   device: carry [".gpu/setup.sh", ".gpu/node.xz", ".gpu/node_modules", ".gpu/debs", ".gpu/prefill"],
#         command `bash .gpu/prefill/int8-prefill-device.sh` (results under $OUT; about 250 s; each step has its
#         own timeout and none starts past BUDGET_S seconds)
# 1. matmul-int8.test (the real kernel against the CPU) and
#    matmul-tiled.test / device.test (the f16 path unchanged)
# 2. pdvm bench --prefill 512, q4 g64: llama-3.1-8b --profile on the default (f16 tensor cores), then with
#    PDVM_PREFILL_I8=1 and PDVM_I8_TILE set to each of TILES ("default" for none), then LAB_TILES with
#    PDVM_I8_LAB=no-scale (timing only: no per-group scaling)
# 3. CHECK_TILES: the int8 device test again with each tile
# 4. perplexity of the q4 demo (models/brown-llama-12m.upg, first 2,049 validation tokens) with PDVM_PREFILL_I8=1
#    and each of PPL_TILES, --ctx 1024 and windows of 256 (CPU: 117.499696 and 81.774742)
# 5. phi-4 and llama-3.2-1b pp512 (5 runs): the default, then PDVM_PREFILL_I8=1 with each of SHAPE_TILES
# 6. matmul-tiled.test and device.test (F16_TESTS=0: not)
# e.g. TILES="default 2422s 2242s" LAB_TILES="2442" CHECK_TILES="2422s" PPL_TILES="2422s" SHAPE_TILES="2422s"
#      bash .gpu/prefill/int8-prefill-device.sh
# I8_MODE=row: every PDVM_PREFILL_I8 above is 'row' (scaling per row and token, no per-group round trip);
# matmul-int8.test runs both scalings whatever the mode. The measurement that decides it (about 150 s):
#      I8_MODE=row TILES=default PPL_TILES=default SHAPE_TILES=default F16_TESTS=0 bash .gpu/prefill/int8-prefill-device.sh
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
I8=PDVM_PREFILL_I8=${I8_MODE:-1}
t node --test $K/matmul-int8.test.mjs
Q="--encoding q4 --group 64 --prefill 512 --runs 3"
bench --shape llama-3.1-8b $Q --profile
for tile in ${TILES:-default}; do E="$I8"; [ $tile = default ] || E="$I8 PDVM_I8_TILE=$tile"; ENVS="$E" bench --shape llama-3.1-8b $Q --profile; done
for tile in ${LAB_TILES:-}; do ENVS="$I8 PDVM_I8_TILE=$tile PDVM_I8_LAB=no-scale" bench --shape llama-3.1-8b $Q --profile; done
for tile in ${CHECK_TILES:-}; do PDVM_I8_TILE=$tile TEST_S=30 t node --test --test-name-pattern="tensor cores" $K/matmul-int8.test.mjs; done
for tile in ${PPL_TILES:-default}; do E="$I8"; [ $tile = default ] || E="$I8 PDVM_I8_TILE=$tile"; ENVS="$E" ppl --ctx 1024; ENVS="$E" ppl; done
for shape in phi-4 llama-3.2-1b; do
  bench --shape $shape $Q --runs 5
  for tile in ${SHAPE_TILES:-default}; do E="$I8"; [ $tile = default ] || E="$I8 PDVM_I8_TILE=$tile"; ENVS="$E" bench --shape $shape $Q --runs 5; done
done
[ "${F16_TESTS:-1}" = 0 ] || TEST_S=50 t node --test $K/matmul-tiled.test.mjs $K/device.test.mjs
sleep 1
