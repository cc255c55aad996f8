#!/usr/bin/env bash
# The device calls of 2026-12-06 (docs/PERFORMANCE.md "Device calls of 2026-12-06"), one script:
#   A: the int8 prefill ('row', 'row-q4') against the f16 tensor cores (pp512, perplexity), then the
#      batched step's products on the prefill's kernels (f16, int8 'row', 'row-q4') against the matvec;
#   B: the load test with the batched step's prompts through the prefill kernels and as decode rows;
#   C: the int8 products against the CPU on the tensor cores (all three scalings), the 1B q8 decode
#      old against new, pp512 with 'row-q4' on phi-4 and the 1B shape.
# Stage (dev machine, repository root; .gpu is git-ignored and travels with carry):
#   bash bench/int8-prefill-device.sh --build; bash bench/step-prompts-device.sh stage
#   npx esbuild bench/batched-step.ts --bundle --platform=node --format=esm --external:webgpu \
#     "--banner:js=import{createRequire}from'module';const require=createRequire(import.meta.url);" \
#     --inject:src/backends/webgpu/node-gpu.ts --outfile=.gpu/serve/batched-step.mjs
#   C also needs .gpu/decode (app.mjs, old.mjs: bench/decode-argmax-device.sh's header)
#   cp bench/device-calls-2026-12-06.sh .gpu/prefill/calls.sh
# Device: bash .gpu/prefill/calls.sh A|B|C, carrying .gpu/setup.sh .gpu/node.xz .gpu/node_modules .gpu/debs
#   and .gpu/prefill .gpu/serve (A), .gpu/step-prompts (B), .gpu/prefill .gpu/decode (C); results in $OUT/res*.tgz
set -u
eval "$(bash .gpu/setup.sh)"
OUTD=${OUT:-/tmp/out}; mkdir -p "$OUTD"; s=$(date +%s)
case "${1:-}" in
A)
  R=/tmp/resA; mkdir -p $R/i8
  OUT=$R/i8 I8_MODE=row TILES=default PPL_TILES=default SHAPE_TILES=default F16_TESTS=0 BUDGET_S=150 bash .gpu/prefill/int8-prefill-device.sh
  { PDVM_PREFILL_I8=row-q4 timeout 45 node .gpu/prefill/app.mjs bench --json --shape llama-3.1-8b --encoding q4 --group 64 --prefill 512 --runs 3 --profile
    PDVM_PREFILL_I8=row-q4 timeout 30 node .gpu/prefill/app.mjs perplexity models/brown-llama-12m.upg --text .gpu/prefill/validation.txt --limit 2049 --backend webgpu --json; } > $R/rowq4.txt 2>&1
  st() { local name=$1 t=$2; shift 2; echo "== $name $* ($(( $(date +%s) - s ))s)" >> $R/steps.txt; env "$@" timeout $t node .gpu/serve/batched-step.mjs --shape llama-3.1-8b --steps 12 --profile 8,32 $BSTEP 2>&1 | grep -v Warning >> $R/steps.txt; }
  BSTEP="--batches 1,8,16,32 --kernels r8-4x2,tiled" st f16 130 PDVM_PREFILL_I8=0
  BSTEP="--batches 8,16,32 --kernels tiled" st i8row-q4 110 PDVM_PREFILL_I8=row-q4
  BSTEP="--batches 8,16,32 --kernels tiled" st i8row 110 PDVM_PREFILL_I8=row ;;
B)
  R=/tmp/resB; mkdir -p $R
  OUT=$R timeout 400 bash .gpu/step-prompts/run.sh ;;
C)
  R=/tmp/resC; mkdir -p $R
  nvidia-smi --query-gpu=name,driver_version --format=csv > $R/gpu.txt; date -u >> $R/gpu.txt
  timeout 200 node --test .gpu/prefill/matmul-int8.test.mjs 2>&1 | grep -v Warning | grep -E "^(ok|not ok)|# (pass|fail|skip)|against|rror|expected|actual" > $R/int8-test.txt
  for app in old app old app; do echo "== $app" >> $R/q8.txt; PDVM_SUBGROUP_MATRIX=0 timeout 15 node .gpu/decode/$app.mjs bench --shape llama-3.2-1b --encoding q8 --context 512 --tokens 128 --skip-prefill 2>&1 | grep -E "decode .*ms/token" >> $R/q8.txt; done
  for sh in phi-4 llama-3.2-1b; do for m in 0 row-q4; do echo "== $sh PDVM_PREFILL_I8=$m" >> $R/pp.txt; PDVM_PREFILL_I8=$m timeout 40 node .gpu/prefill/app.mjs bench --shape $sh --encoding q4 --group 64 --prefill 512 --runs 5 2>&1 | grep -E "pp512" >> $R/pp.txt; done; done ;;
*) echo "usage: calls.sh A|B|C"; exit 2 ;;
esac
echo "total $(( $(date +%s) - s ))s" >> $R/wall.txt
tar czf "$OUTD/res$1.tgz" -C $R .
cat $R/wall.txt
