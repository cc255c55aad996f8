#!/usr/bin/env bash
# The subgroup-matrix prefill kernel's tiles compared on the device, in one call (docs/PERFORMANCE.md):
#   here: bash bench/prefill-device.sh --build   (bundles into /work/main/.gpu/prefill; copies this script)
#   device (carry .gpu): bash .gpu/prefill/prefill-tiles-device.sh   (results under $OUT)
# (Run on 2026-12-04 with the flags of then: --subgroup-matrix opted in.) For each tile (PDVM_SM_TILE=TOKENSxROWSxAMxAN): the kernel tests against the CPU, then pdvm bench
# --prefill 512 on the three shapes; the f32 tiles and one tile with --profile.
set -uo pipefail
eval "$(bash .gpu/setup.sh)"
K=.gpu/prefill; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bench() { echo "== $*" >> "$OUT/bench.log"; env "$@" >> "$OUT/results.jsonl" 2> >(grep -v Warning >> "$OUT/bench.log"); }
B="node $K/app.mjs bench --json --encoding q4 --group 64 --prefill 512 --runs 2"
for tile in 128x128x4x4 128x256x4x4 128x128x2x4 64x128x2x4; do
  echo "== tile $tile" >> "$OUT/tests.log"
  PDVM_SM_TILE=$tile node --test --test-name-pattern="subgroup matrices" $K/matmul-tiled.test.mjs 2>&1 | grep -E "^(not )?ok|relative|rror" | grep -v deprecated | head -24 >> "$OUT/tests.log"
  for s in llama-3.2-1b llama-3.1-8b phi-4; do bench PDVM_SM_TILE=$tile $B --shape $s; done
done
bench PDVM_SM_TILE=128x128x4x4 $B --shape llama-3.1-8b --profile
bench X=1 $B --shape llama-3.1-8b --profile --no-subgroup-matrix
sleep 1
