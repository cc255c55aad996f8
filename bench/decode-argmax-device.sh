#!/usr/bin/env bash
# Issue 14 (2026-12-05 evening), two calls. Call 1 (MODE=first): the greedy token from lm_head's argmax
# partials (`--argmax fused`) against the argmax dispatch in one process, ctx 512, three q4 shapes;
# chunks of about 32 keys (`--attention-splits`) at 512 and 4,096 keys. Call 2 (MODE=final, the
# default): the same with argmax fused as the default, `--global-grid one-round` for o_proj and
# down_proj, `--act f16` (SwiGLU's output as f16 for the int8 down_proj; its NLL), the old build
# (82f6f20), q8 and bf16, attention at 4,096 keys, the roofline before and after; the tests of the
# argmax partials and the llama fixture token for token on the device. Call 1 ran on 2026-12-05 18:49
# UTC; call 2 was never run (the session's device budget ran out first): docs/PERFORMANCE.md.
# Stage (dev machine; .gpu is git-ignored, the device runs /work/main's tree with carry):
#   B="--bundle --platform=node --format=esm --external:webgpu"; BAN="--banner:js=import{createRequire}from'module';const require=createRequire(import.meta.url);"
#   npx esbuild src/cli/main.ts $B "$BAN" --outfile=/work/main/.gpu/decode/app.mjs        (this build)
#   npx esbuild src/cli/main.ts $B "$BAN" --outfile=/work/main/.gpu/decode/old.mjs        (from a checkout of 82f6f20)
#   npx esbuild bench/kernel-lab.ts $B "$BAN" --outfile=/work/main/.gpu/decode/lab.mjs
#   npx esbuild test/backends/webgpu/T.test.ts $B "$BAN" --inject:src/backends/webgpu/node-gpu.ts --outfile=/work/main/.gpu/decode/T.test.mjs   (T = fused, fused-matvec, fused-nll)
#   cp -r ../shared/fixtures/models/arch/llama /work/main/.gpu/decode/fixtures/models/arch/; cp ../shared/fixtures/text/brown/validation.txt /work/main/.gpu/decode/fixtures/text/brown/; cp bench/decode-argmax-device.sh /work/main/.gpu/decode/run.sh
# Device: [MODE=first] bash .gpu/decode/run.sh   (carry .gpu/setup.sh .gpu/node.xz .gpu/node_modules .gpu/debs .gpu/decode; results under $OUT)
set -uo pipefail
eval "$(bash .gpu/setup.sh)"
D=.gpu/decode; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv > "$OUT/gpu.txt" 2>&1; date -u >> "$OUT/gpu.txt"
t0=$(date +%s)
b() { local name=$1 t=$2 app=$3; shift 3; echo "== $name [$app] bench $* (t=$(( $(date +%s) - t0 ))s)" >> "$OUT/bench.log"; PDVM_SUBGROUP_MATRIX=0 timeout $t node $D/$app.mjs bench --json "$@" 2>&1 >> "$OUT/results.jsonl" | grep -v Warning >> "$OUT/bench.log"; }
roofline() { timeout 30 node $D/lab.mjs --only roofline --shapes phi-4,llama-3.2-1b,llama-3.1-8b 2>&1 | grep -v Warning > "$OUT/roofline$1.txt"; echo "roofline$1 done t=$(( $(date +%s) - t0 ))s" >> "$OUT/bench.log"; }
S="--encoding q4 --group 64 --context 512 --tokens 128 --skip-prefill --profile"
if [ "${MODE:-final}" = first ]; then
  { PDVM_SUBGROUP_MATRIX=0 timeout 25 node --test $D/fused-matvec.test.mjs
    PDVM_FIXTURES=$D/fixtures PDVM_SUBGROUP_MATRIX=0 timeout 50 node --test --test-name-pattern='argmax partials' $D/fused.test.mjs; } 2>&1 | grep -v Warning | grep -E "^(ok|not ok)|# (pass|fail)|rror|assert" > "$OUT/tests.log"
  roofline ""
  for sh in phi-4 llama-3.1-8b llama-3.2-1b; do b $sh-q4-argmax 30 app --shape $sh $S --argmax fused,dispatch --repeat 2; done
  b llama-3.2-1b-q4-old 12 old --shape llama-3.2-1b $S
  for sh in llama-3.1-8b llama-3.2-1b; do b $sh-q4-splits22 12 app --shape $sh $S --argmax fused --attention-splits 22; done
  b llama-3.1-8b-4096 15 app --shape llama-3.1-8b --encoding q4 --group 64 --context 4096 --tokens 64 --skip-prefill --profile --argmax fused
  b llama-3.1-8b-4096-splits130 15 app --shape llama-3.1-8b --encoding q4 --group 64 --context 4096 --tokens 64 --skip-prefill --profile --argmax fused --attention-splits 130
else
  { PDVM_SUBGROUP_MATRIX=0 timeout 25 node --test $D/fused-matvec.test.mjs
    PDVM_FIXTURES=$D/fixtures PDVM_SUBGROUP_MATRIX=0 timeout 60 node --test --test-name-pattern='argmax partials|fused decode: llama matches' $D/fused.test.mjs; } 2>&1 | grep -v Warning | grep -E "^(ok|not ok)|# (pass|fail)|rror|assert" > "$OUT/tests.log"
  echo "tests done t=$(( $(date +%s) - t0 ))s" >> "$OUT/bench.log"
  roofline 1
  for sh in phi-4 llama-3.1-8b llama-3.2-1b; do
    b $sh-q4-argmax 30 app --shape $sh $S --argmax fused,dispatch --repeat 3
    b $sh-q4-grid-act 30 app --shape $sh $S --global-grid default,one-round --act f32,f16 --repeat 2
    b $sh-q4-old 20 old --shape $sh $S --repeat 2
  done
  PDVM_FIXTURES=$D/fixtures PDVM_NLL_ACT_F16=1 PDVM_NLL_TOKENS=2049 PDVM_SUBGROUP_MATRIX=0 timeout 80 node --test $D/fused-nll.test.mjs 2>&1 | grep -v Warning | grep -E "NLL|^(ok|not ok)|# (pass|fail)" > "$OUT/nll.log"
  echo "nll done t=$(( $(date +%s) - t0 ))s" >> "$OUT/bench.log"
  for sh in phi-4 llama-3.2-1b; do for e in q8 bf16; do
    b $sh-$e-new 20 app --shape $sh --encoding $e --context 512 --tokens 128 --skip-prefill --argmax fused,dispatch --repeat 2
    b $sh-$e-old 12 old --shape $sh --encoding $e --context 512 --tokens 128 --skip-prefill
  done; done
  for sh in phi-4 llama-3.1-8b llama-3.2-1b; do b $sh-4096 15 app --shape $sh --encoding q4 --group 64 --context 4096 --tokens 64 --skip-prefill --profile; done
  roofline 2
fi
echo "total $(( $(date +%s) - t0 ))s" >> "$OUT/bench.log"
