#!/usr/bin/env bash
# The device calls of the evening of 2026-12-06 (docs/PERFORMANCE.md "Int8 prefill: two staged buffers"):
#   T: matmul-int8.test on the tensor cores (the self-test and the products against the CPU; PDVM_I8_TILE=$CHECK if set),
#      perplexity of the q4 demo with PDVM_PREFILL_I8=row (CPU: 117.499696 at --ctx 1024)
#   P: pp512 (q4 g64) on each of SHAPES, each RUNS entry MODE:TILE:ROBUST (PDVM_PREFILL_I8=MODE, 0 the f16
#      default; PDVM_I8_TILE=TILE, 'default' for the chosen tiles; ROBUST 'nr': PDVM_DAWN_EXTRA_TOGGLES=disable_robustness)
#   D: decode tg128 (q4 g64, context skipped) on DSHAPES, with and without disable_robustness
# Stage (dev machine, repository root): bash bench/int8-prefill-device.sh --build && cp bench/device-calls-2026-12-06-night.sh .gpu/prefill/night.sh
# Device: bash .gpu/prefill/night.sh TPD, carrying .gpu/setup.sh .gpu/node.xz .gpu/node_modules .gpu/debs .gpu/prefill
set -u
eval "$(bash .gpu/setup.sh)"
R=${OUT:-/tmp/out}; mkdir -p "$R"; s=$(date +%s)
nvidia-smi --query-gpu=name,driver_version --format=csv > $R/gpu.txt; date -u >> $R/gpu.txt
left() { [ $(( $(date +%s) - s )) -lt ${BUDGET_S:-500} ]; }
envs() { E="PDVM_PREFILL_I8=$1"; [ "$2" = default ] || E="$E PDVM_I8_TILE=$2"; [ "$3" = nr ] && E="$E PDVM_DAWN_EXTRA_TOGGLES=disable_robustness"; echo $E; }
case "${1:-}" in *T*)
  env ${CHECK:+PDVM_I8_TILE=$CHECK} timeout ${TEST_S:-150} node --test --test-name-pattern="where self-tested" .gpu/prefill/matmul-int8.test.mjs 2>&1 | grep -v Warning | grep -E "^(ok|not ok)|# (pass|fail)|against|rror|expected|actual|worst" > $R/int8-test.txt
  echo "test $(( $(date +%s) - s ))s" >> $R/wall.txt
  PDVM_PREFILL_I8=row timeout 40 node .gpu/prefill/app.mjs perplexity models/brown-llama-12m.upg --text .gpu/prefill/validation.txt --limit 2049 --backend webgpu --ctx 1024 2>&1 | grep -v Warning | tail -2 > $R/perplexity.txt ;; esac
case "${1:-}" in *P*)
for sh in ${SHAPES:-llama-3.1-8b phi-4 llama-3.2-1b}; do
  for kk in ${RUNS:-0:default:r row:default:r row:default:nr 0:default:nr}; do
    left || break; IFS=: read m tile rb <<< "$kk"; E=$(envs $m $tile $rb)
    echo "== $sh $E" >> $R/pp.txt
    env $E timeout ${BENCH_S:-60} node .gpu/prefill/app.mjs bench --shape $sh --encoding q4 --group 64 --prefill 512 --runs ${PP_RUNS:-5} ${PROFILE:+--profile} 2>&1 | grep -v Warning | grep -E "pp512:|rror|profile" >> $R/pp.txt
    echo "t=$(( $(date +%s) - s ))s" >> $R/pp.txt
  done
done ;; esac
case "${1:-}" in *D*)
for sh in ${DSHAPES:-llama-3.1-8b}; do for rb in r nr r nr; do
  left || break; E=$(envs 0 default $rb)
  echo "== $sh $E" >> $R/decode.txt
  env $E timeout 60 node .gpu/prefill/app.mjs bench --shape $sh --encoding q4 --group 64 --skip-prefill --tokens 128 2>&1 | grep -v Warning | grep -iE "tok/s|roofline|bandwidth|rror" >> $R/decode.txt
done; done ;; esac
echo "total $(( $(date +%s) - s ))s" >> $R/wall.txt
cat $R/wall.txt $R/int8-test.txt $R/perplexity.txt $R/pp.txt $R/decode.txt 2>/dev/null | tail -80
