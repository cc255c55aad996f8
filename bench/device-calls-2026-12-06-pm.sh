#!/usr/bin/env bash
# The device calls of the afternoon of 2026-12-06 (docs/PERFORMANCE.md "Few-token int8 products on the
# device"), one script:
#   S: the batched step's products: the matvec (r8-4x2, the default) against the int8 few-token kernels
#      (STEP_RUNS: PDVM_PREFILL_I8 and the bench's --kernels; tiled@dTT the direct kernel), profiles at 8 and 32;
#   T: the int8 products against the CPU on the tensor cores (matmul-int8.test, every scaling and the
#      few-token split), pp512 with 'row-q4' on phi-4 and the 1B shape.
# Stage (dev machine, repository root; .gpu is git-ignored and travels with carry):
#   bash bench/int8-prefill-device.sh --build
#   npx esbuild bench/batched-step.ts --bundle --platform=node --format=esm --external:webgpu \
#     "--banner:js=import{createRequire}from'module';const require=createRequire(import.meta.url);" \
#     --inject:src/backends/webgpu/node-gpu.ts --outfile=.gpu/serve/batched-step.mjs
#   cp bench/device-calls-2026-12-06-pm.sh .gpu/serve/calls.sh
# Device: bash .gpu/serve/calls.sh S|T (or ST), carrying .gpu/setup.sh .gpu/node.xz .gpu/node_modules
#   .gpu/debs .gpu/serve .gpu/prefill; results in $OUT
set -u
eval "$(bash .gpu/setup.sh)"
R=${OUT:-/tmp/out}; mkdir -p "$R"; s=$(date +%s) # results straight under $OUT (five files): what a timeout leaves comes back
nvidia-smi --query-gpu=name,driver_version --format=csv > $R/gpu.txt; date -u >> $R/gpu.txt
# each entry: PDVM_PREFILL_I8's value, then the bench's --kernels (tiled@TILE/WGS: the few-token tile and split)
STEP_RUNS=${STEP_RUNS:-"row:r8-4x2,tiled@d1,tiled@d2,tiled@d4,tiled"}
case "${1:-}" in *S*)
  for kk in $STEP_RUNS; do i8=${kk%%:*} kern=${kk#*:}
    echo "== PDVM_PREFILL_I8=$i8 --kernels $kern ($(( $(date +%s) - s ))s)" >> $R/steps.txt
    PDVM_PREFILL_I8=$i8 timeout ${STEP_S:-200} node .gpu/serve/batched-step.mjs --shape llama-3.1-8b --steps 12 \
      --batches ${BATCHES:-8,16,32} --kernels $kern --profile ${PROFILE:-8,32} 2>&1 | grep -v Warning >> $R/steps.txt
  done ;; esac
case "${1:-}" in *T*)
  [ -n "${NO_PP:-}" ] && PP_SHAPES="" || PP_SHAPES="phi-4 llama-3.2-1b"
  timeout ${TEST_S:-300} node --test --test-name-pattern="where self-tested" .gpu/prefill/matmul-int8.test.mjs 2>&1 | grep -v Warning | grep -E "^(ok|not ok)|# (pass|fail|skip)|against|rror|expected|actual|worst" > $R/int8-test.txt
  for sh in $PP_SHAPES; do for m in 0 row-q4; do echo "== $sh PDVM_PREFILL_I8=$m" >> $R/pp.txt
    PDVM_PREFILL_I8=$m timeout 40 node .gpu/prefill/app.mjs bench --shape $sh --encoding q4 --group 64 --prefill 512 --runs 5 2>&1 | grep -E "pp512" >> $R/pp.txt; done; done ;; esac
echo "total $(( $(date +%s) - s ))s" >> $R/wall.txt
cat $R/wall.txt; grep -E "^(==|kernel|fused)" $R/steps.txt 2>/dev/null; cat $R/int8-test.txt $R/pp.txt 2>/dev/null | tail -40
