#!/usr/bin/env bash
# The device call of the late evening of 2026-12-06 (docs/PERFORMANCE.md "Prefill: subgroup-matrix calls that
# Dawn's robustness leaves alone", and "Storage operands at constant offsets" of 2026-12-07): what Dawn's
# robustness transform costs the f16 tensor-core prefill and the batched step's products, and what the
# kernels written for it (constant offsets into blocks of workgroup memory and tiles of storage) win back.
#   T: matmul-tiled.test, matmul-int8.test and device.test (the new kernels against the CPU on the tensor cores)
#   D: decode tg128 (DECODE_SHAPE, phi-4) for each DECODE_RUNS entry APP:TOGGLES
#   S: the batched step (bench/batched-step.ts, llama-3.1-8b, STEP_BATCHES rows, STEP_KERNELS) for each STEP_RUNS entry APP:TOGGLES
#   P: pp512 (q4 g64) on each of SHAPES for each RUNS entry APP:TOGGLES[:I8] (APP new or old: this build or the
#      commit before; TOGGLES '-' for none, else comma-separated Dawn toggles through PDVM_DAWN_EXTRA_TOGGLES;
#      short names: ra = enable_integer_range_analysis_in_robustness, cm = vulkan_use_cooperative_matrix_robust_access,
#      nr = disable_robustness; I8: PDVM_PREFILL_I8, e.g. row, else the f16 default)
# Stage (dev machine, repository root): bash bench/device-calls-2026-12-06-late.sh --build [OLD_COMMIT]
# Device: bash .gpu/late/run.sh TP (parts in the order T, P, D, S whatever the order of the letters; each
#   invocation has its own BUDGET_S, so call it once a part to order them; docs/PERFORMANCE.md "Storage operands
#   at constant offsets" gives the call staged on 2026-12-07), carrying .gpu/setup.sh .gpu/node.xz
#   .gpu/node_modules .gpu/debs .gpu/late
set -u
if [ "${1:-}" = "--build" ]; then
  set -e
  K=/work/main/.gpu/late; rm -rf "$K"; mkdir -p "$K"
  B=(--bundle --platform=node --format=esm --external:webgpu "--banner:js=import { createRequire as __pdvmCreateRequire } from 'node:module'; const require = __pdvmCreateRequire(import.meta.url);")
  npx esbuild src/cli/main.ts "${B[@]}" --outfile="$K/app.mjs" --log-level=warning
  npx esbuild bench/batched-step.ts "${B[@]}" --inject:src/backends/webgpu/node-gpu.ts --outfile="$K/batched-step.mjs" --log-level=warning
  for t in matmul-tiled matmul-int8 device; do npx esbuild test/backends/webgpu/$t.test.ts "${B[@]}" --inject:src/backends/webgpu/node-gpu.ts --outfile="$K/$t.test.mjs" --log-level=warning; done
  W=/tmp/pdvm-old; rm -rf "$W"; git worktree prune; git worktree add -f "$W" "${2:-HEAD}" >/dev/null
  (cd "$W" && ln -s /work/main/node_modules node_modules && npx esbuild src/cli/main.ts "${B[@]}" --outfile="$K/app-old.mjs" --log-level=warning \
    && npx esbuild bench/batched-step.ts "${B[@]}" --inject:src/backends/webgpu/node-gpu.ts --outfile="$K/batched-step-old.mjs" --log-level=warning)
  git worktree remove --force "$W"
  cp bench/device-calls-2026-12-06-late.sh "$K/run.sh"; du -sh "$K"; exit 0
fi
eval "$(bash .gpu/setup.sh)"
R=${OUT:-/tmp/out}; mkdir -p "$R"; s=$(date +%s)
nvidia-smi --query-gpu=name,driver_version --format=csv > $R/gpu.txt; date -u >> $R/gpu.txt
left() { [ $(( $(date +%s) - s )) -lt ${BUDGET_S:-500} ]; }
toggles() { echo "$1" | sed -e 's/^-$//' -e 's/\bra\b/enable_integer_range_analysis_in_robustness/' -e 's/\bcm\b/vulkan_use_cooperative_matrix_robust_access/' -e 's/\bnr\b/disable_robustness/'; }
case "${1:-}" in *T*)
  timeout ${TEST_S:-150} node --test .gpu/late/matmul-tiled.test.mjs .gpu/late/device.test.mjs 2>&1 | grep -v Warning | grep -E "^(ok|not ok)|# (pass|fail|skip)|against|rror|expected|actual|worst|skip" > $R/tests.txt
  timeout ${TEST_S:-150} node --test --test-name-pattern="where self-tested" .gpu/late/matmul-int8.test.mjs 2>&1 | grep -v Warning | grep -E "^(ok|not ok)|# (pass|fail|skip)|against|rror|expected|actual|worst|skip" >> $R/tests.txt
  echo "tests $(( $(date +%s) - s ))s" >> $R/wall.txt ;; esac
case "${1:-}" in *P*)
for sh in ${SHAPES:-llama-3.1-8b}; do
  for kk in ${RUNS:-old:- new:- new:ra new:ra,cm old:ra new:nr}; do
    left || break; IFS=: read app tg i8 <<< "$kk"; T=$(toggles "$tg"); A=.gpu/late/app.mjs; [ $app = old ] && A=.gpu/late/app-old.mjs
    echo "== $sh $app toggles=$T i8=${i8:-0}" >> $R/pp.txt
    env PDVM_DAWN_EXTRA_TOGGLES="$T" PDVM_PREFILL_I8=${i8:-0} timeout ${BENCH_S:-60} node $A bench --shape $sh --encoding q4 --group 64 --prefill 512 --runs ${PP_RUNS:-5} ${PROFILE:+--profile} 2>&1 | grep -v Warning | grep -E "pp512:|rror|profile|µs" | head -${LINES_MAX:-40} >> $R/pp.txt
    echo "t=$(( $(date +%s) - s ))s" >> $R/pp.txt
  done
done ;; esac
case "${1:-}" in *D*)
for kk in ${DECODE_RUNS:-new:- new:ra old:-}; do
  left || break; IFS=: read app tg <<< "$kk"; T=$(toggles "$tg"); A=.gpu/late/app.mjs; [ $app = old ] && A=.gpu/late/app-old.mjs
  echo "== decode $app toggles=$T" >> $R/decode.txt
  env PDVM_DAWN_EXTRA_TOGGLES="$T" PDVM_SUBGROUP_MATRIX=0 timeout ${BENCH_S:-60} node $A bench --shape ${DECODE_SHAPE:-phi-4} --encoding q4 --group 64 --context 512 --tokens 128 --skip-prefill 2>&1 | grep -v Warning | grep -E "tok/s|rror" | head -6 >> $R/decode.txt
done ;; esac
case "${1:-}" in *S*)
for kk in ${STEP_RUNS:-new:- new:ra,cm old:-}; do
  left || break; IFS=: read app tg <<< "$kk"; T=$(toggles "$tg"); A=.gpu/late/batched-step.mjs; [ $app = old ] && A=.gpu/late/batched-step-old.mjs
  echo "== step $app toggles=$T" >> $R/step.txt
  PDVM_DAWN_EXTRA_TOGGLES="$T" timeout ${STEP_S:-90} node $A --shape llama-3.1-8b --batches ${STEP_BATCHES:-8,32} --kernels ${STEP_KERNELS:-r8-4x2,tc} --steps 12 --context 512 --prompt 32 ${STEP_PROFILE:+--profile $STEP_PROFILE} 2>&1 | grep -v Warning | tail -${LINES_MAX:-40} >> $R/step.txt
  echo "t=$(( $(date +%s) - s ))s" >> $R/step.txt
done ;; esac
echo "total $(( $(date +%s) - s ))s" >> $R/wall.txt
cat $R/wall.txt $R/tests.txt $R/pp.txt $R/step.txt $R/decode.txt 2>/dev/null | tail -150
