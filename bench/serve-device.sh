#!/usr/bin/env bash
# Issue 15's device figures (docs/PERFORMANCE.md "Batched decode on WebGPU"), one device call.
# Stage (dev machine, from the serve worktree, into /work/main's .gpu, which travels; .gpu is git-ignored):
#   B="--bundle --platform=node --format=esm --external:webgpu"; BAN="--banner:js=import{createRequire}from'module';const require=createRequire(import.meta.url);"
#   npx esbuild src/cli/main.ts $B "$BAN" --outfile=.gpu/serve/cli.mjs
#   npx esbuild bench/batched-step.ts $B "$BAN" --inject:src/backends/webgpu/node-gpu.ts --outfile=.gpu/serve/batched-step.mjs
#   npx esbuild scripts/load-test.ts $B "$BAN" --outfile=.gpu/serve/load-test.mjs
#   npx esbuild test/backends/webgpu/T.test.ts $B "$BAN" --inject:src/backends/webgpu/node-gpu.ts --outfile=.gpu/serve/T.test.mjs   (T = batched-tensor-core, batched-step)
#   cp bench/serve-device.sh .gpu/serve/run.sh
# Device (carry .gpu): bash .gpu/serve/run.sh [kernels] [batches]   (results under $OUT: tests.log, bench.txt, load.txt, log.txt)
set -uo pipefail
eval "$(bash .gpu/setup.sh)"
D=.gpu/serve; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
KERNELS=${1:-8x2,tc}; BATCHES=${2:-1,8,16,32}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1; date -u >> "$OUT/gpu.txt"
t0=$(date +%s)
tl() { echo "t=$(( $(date +%s) - t0 ))s $*" >> "$OUT/log.txt"; }
for t in batched-tensor-core batched-step; do
  timeout 40 node --test $D/$t.test.mjs 2>&1 | grep -v Warning | grep -E "^(ok|not ok)|# (pass|fail|skip)|rror|relative|prompt|SKIP" >> "$OUT/tests.log"
  tl "test $t"
done
timeout 100 node $D/batched-step.mjs --shape llama-3.1-8b --batches "$BATCHES" --kernels "$KERNELS" --steps 12 --context 512 --prompt 32 --profile 8,32 2>&1 | grep -v Warning > "$OUT/bench.txt"
tl bench
timeout 120 node $D/load-test.mjs --cli $D/cli.mjs --synthetic llama-3.1-8b --backend webgpu --batched-step --context 512 --max-concurrency 32 \
  --streams 1,8,32 --alone 2 --max-tokens 128 --prompt-tokens 32 2>&1 | grep -v Warning > "$OUT/load.txt"
tl load
