#!/usr/bin/env bash
# The device call of 2026-12-07 (afternoon) for issue 13 item 2 (docs/PERFORMANCE.md "Prompt attention
# in one pass"): the one-pass tensor-core prompt attention against the two-pass one (PDVM_ATTENTION_PASSES=2,
# the same build), on long prompts and at 512 tokens, with its tests and the demo's perplexity.
#   D: bench/attention-lab.ts (the one-pass kernel's self-test with its parts taken out one at a time)
#   A: bench/attention-time.ts (the kernel alone at positions 15,872..16,383 and 1,536..2,047, in variants with parts
#      taken out: what its time is made of; ONLY=labels, SPLITS=8,32 for other split counts)
#   T: kernels.test (the prompt attention against the reference attention, the one-pass tensor-core kernel where
#      self-tested) and device.test (its self-tests named); q4 demo perplexity (ctx 256 and 1024: split)
#   L: phi-4 prefill of 16,384 tokens (with --profile: its last step's dispatches) and pp512 (q4 g64), one pass
#      then two; then llama-3.1-8b the same
#   E: decode, llama-3.1-8b q4 g64, 128 tokens (DECODE_SHAPES)
#   P: pp512 of llama-3.2-1b and llama-3.1-8b with --profile (the attention's µs a layer), one pass and two
# Stage (dev machine, repository root): bash bench/attention-device.sh --build
# Run on 2026-12-07 night (docs/PERFORMANCE.md "Prompt attention with 128 rows a workgroup"):
#   TEST_KVB=2 TEST_ROWS=128 SPLITS=8,32 TIME_P=16384 TIME_ROBUST=0 LONG_SHAPES=phi-4 LONG_PASSES=1 LONG_VARIANTS="2:128 1:64 2:64" bash .gpu/att/run.sh ATL
#   (LONG_VARIANTS: K/V buffers:rows a workgroup, PDVM_ATTENTION_KV_BUFFERS and PDVM_ATTENTION_ROWS)
# Next (the defaults, 128 rows and 8 splits, on an H200, which has not run them; TEST_KVB, TEST_ROWS and
# LONG_VARIANTS default to the engine's 2, 128 and 2:128):
#   LONG_SHAPES="phi-4 llama-3.1-8b" LONG_PASSES=1 LONG_SPLITS=8 LONG_VARIANTS="2:128 1:64" bash .gpu/att/run.sh TL
# Device: bash .gpu/att/run.sh TLP (carry .gpu: setup.sh, node.xz, node_modules, debs, att)
set -u
if [ "${1:-}" = "--build" ]; then
  set -e
  K=/work/main/.gpu/att; rm -rf "$K"; mkdir -p "$K"
  B=(--bundle --platform=node --format=esm --external:webgpu "--banner:js=import { createRequire as __pdvmCreateRequire } from 'node:module'; const require = __pdvmCreateRequire(import.meta.url);")
  npx esbuild src/cli/main.ts "${B[@]}" --outfile="$K/app.mjs" --log-level=warning
  for b in attention-lab attention-time; do npx esbuild bench/$b.ts "${B[@]}" --inject:src/backends/webgpu/node-gpu.ts --outfile="$K/$b.mjs" --log-level=warning; done
  for t in kernels device; do npx esbuild test/backends/webgpu/$t.test.ts "${B[@]}" --inject:src/backends/webgpu/node-gpu.ts --outfile="$K/$t.test.mjs" --log-level=warning; done
  cp ../shared/fixtures/text/brown/validation.txt "$K/"
  cp bench/attention-device.sh "$K/run.sh"; du -sh "$K"; exit 0
fi
eval "$(bash .gpu/setup.sh)"
R=${OUT:-/tmp/out}; mkdir -p "$R"; s=$(date +%s); A=.gpu/att/app.mjs
nvidia-smi --query-gpu=name,driver_version --format=csv > $R/gpu.txt; date -u >> $R/gpu.txt
left() { [ $(( $(date +%s) - s )) -lt ${BUDGET_S:-560} ]; }
case "${1:-}" in *D*)
  timeout 120 node .gpu/att/attention-lab.mjs 2>&1 | grep -v Warning > $R/lab.txt
  echo "lab $(( $(date +%s) - s ))s" >> $R/wall.txt ;; esac
case "${1:-}" in *A*)
  for p in ${TIME_P:-16384 2048}; do timeout 120 node .gpu/att/attention-time.mjs 512 $p 2>&1 | grep -v Warning >> $R/time.txt; done
  if [ "${TIME_ROBUST:-1}" = 1 ]; then
    echo "== without Dawn's robustness (unsafe; what its clamps cost)" >> $R/time.txt
    PDVM_DAWN_EXTRA_TOGGLES=disable_robustness timeout 120 node .gpu/att/attention-time.mjs 512 16384 2>&1 | grep -v Warning >> $R/time.txt
  fi
  echo "time $(( $(date +%s) - s ))s" >> $R/wall.txt ;; esac
case "${1:-}" in *T*)
  for b in ${TEST_KVB:-2}; do
  echo "== tests, K and V in $b buffer(s), ${TEST_ROWS:-128} rows" >> $R/tests.txt
  PDVM_ATTENTION_ROWS=${TEST_ROWS:-128} PDVM_ATTENTION_KV_BUFFERS=$b PDVM_ATTENTION_PASSES=1 timeout ${TEST_S:-200} node --test --test-name-pattern="prompt attention|device features" .gpu/att/kernels.test.mjs .gpu/att/device.test.mjs 2>&1 | grep -v Warning \
    | grep -E "^(ok|not ok)|# (pass|fail|skip)|tensor-core attention|rror|expected|actual|worst|skip|prompt attention" >> $R/tests.txt
  done
  for c in 256 1024; do for p in ${PPL_PASSES:-1}; do for b in ${TEST_KVB:-2}; do
    echo "== perplexity q4 ctx $c passes $p kv buffers $b rows ${TEST_ROWS:-128}" >> $R/ppl.txt
    PDVM_ATTENTION_ROWS=${TEST_ROWS:-128} PDVM_ATTENTION_KV_BUFFERS=$b PDVM_ATTENTION_PASSES=$p timeout 40 node $A perplexity models/brown-llama-12m.upg --text .gpu/att/validation.txt --limit 2049 --ctx $c --backend webgpu --json 2>&1 | grep -v Warning | tail -2 >> $R/ppl.txt
  done; done; done
  echo "tests $(( $(date +%s) - s ))s" >> $R/wall.txt ;; esac
case "${1:-}" in *L*)
for sh in ${LONG_SHAPES:-phi-4 llama-3.1-8b}; do
  for p in ${LONG_PASSES:-1 2}; do for z in ${LONG_SPLITS:-8}; do for v in ${LONG_VARIANTS:-2:128}; do b=${v%:*}; rows=${v#*:}
    for n in ${LONG_N:-16384 512}; do
      left || break; echo "== $sh passes $p splits $z kv buffers $b rows $rows prefill $n" >> $R/long.txt
      runs=$([ $n -gt 4096 ] && echo ${LONG_RUNS:-2} || echo 5)
      PDVM_ATTENTION_ROWS=$rows PDVM_ATTENTION_KV_BUFFERS=$b PDVM_ATTENTION_SPLITS=$z PDVM_ATTENTION_PASSES=$p timeout ${LONG_S:-120} node $A bench --shape $sh --encoding q4 --group 64 --prefill $n --runs $runs $([ $n -gt 4096 ] && echo --profile) 2>&1 | grep -v Warning | grep -E "pp[0-9]+:|rror|notice|attention" | head -8 >> $R/long.txt
      echo "t=$(( $(date +%s) - s ))s" >> $R/long.txt
    done
  done; done; done
done ;; esac
case "${1:-}" in *E*)
for sh in ${DECODE_SHAPES:-llama-3.1-8b}; do
  left || break; echo "== $sh decode" >> $R/decode.txt
  timeout 90 node $A bench --shape $sh --encoding q4 --group 64 --skip-prefill --tokens 128 2>&1 | grep -v Warning | grep -E "tok/s|rror" | tail -3 >> $R/decode.txt
done ;; esac
case "${1:-}" in *P*)
for sh in ${PROFILE_SHAPES:-llama-3.2-1b llama-3.1-8b}; do
  for p in 1 2; do
    left || break; echo "== $sh passes $p pp512 profile" >> $R/profile.txt
    PDVM_ATTENTION_PASSES=$p timeout 60 node $A bench --shape $sh --encoding q4 --group 64 --prefill 512 --runs 5 --profile 2>&1 | grep -v Warning | grep -E "pp512:|rror|attention|layer" | head -12 >> $R/profile.txt
  done
done ;; esac
echo "total $(( $(date +%s) - s ))s" >> $R/wall.txt
cat $R/gpu.txt $R/wall.txt $R/lab.txt $R/time.txt $R/tests.txt $R/ppl.txt $R/long.txt $R/decode.txt $R/profile.txt 2>/dev/null | tail -150
