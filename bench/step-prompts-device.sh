#!/usr/bin/env bash
# Issue 15.4: the batched step's prompt tokens through the prefill's kernels (the default since
# 2026-12-05 night) against the old way, every prompt token a decode row (PDVM_STEP_PROMPTS=rows),
# in one device call: the batched-step test on the device, then the server's load test (llama-3.1-8b
# q4 g64, 128 new tokens a stream, bursts of 1, 8 and 32 streams) with 32-token and 256-token prompts,
# each server in its own process, one after the other. docs/PERFORMANCE.md "Issue 15 on 2026-12-05
# night" says what to record.
#
# Two modes:
#   bash bench/step-prompts-device.sh stage     (dev machine, repository root: the kit if missing, then the bundles into .gpu/step-prompts)
#   bash .gpu/step-prompts/run.sh               (device; carry .gpu/setup.sh .gpu/node.xz .gpu/node_modules .gpu/debs .gpu/step-prompts; results under $OUT; about 7 minutes)
set -uo pipefail
if [ "${1:-}" = stage ]; then
  set -e
  D=.gpu/step-prompts
  [ -f .gpu/setup.sh ] || bash ../shared/gpu/make-kit.sh
  mkdir -p $D
  B="--bundle --platform=node --format=esm --external:webgpu --log-level=warning"
  BAN="--banner:js=import{createRequire}from'module';const require=createRequire(import.meta.url);"
  npx esbuild src/cli/main.ts $B "$BAN" --outfile=$D/cli.mjs
  npx esbuild scripts/load-test.ts $B "$BAN" --outfile=$D/load-test.mjs
  npx esbuild test/backends/webgpu/batched-step.test.ts $B "$BAN" --inject:src/backends/webgpu/node-gpu.ts --outfile=$D/batched-step.test.mjs
  cp bench/step-prompts-device.sh $D/run.sh
  du -sh .gpu
  exit 0
fi
eval "$(bash .gpu/setup.sh)"
D=.gpu/step-prompts; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1; date -u >> "$OUT/gpu.txt"
t0=$(date +%s); tl() { echo "t=$(( $(date +%s) - t0 ))s $*" >> "$OUT/log.txt"; }
# the bundled test finds the demo model two folders up, in the tracked models/
timeout 60 node --test $D/batched-step.test.mjs 2>&1 | grep -v Warning | grep -E "^(ok|not ok)|# (pass|fail|skip)|rror|relative|prompt|SKIP|expected|actual" > "$OUT/tests.log"
tl "test batched-step"
load() { # $1: rows | prefill, $2: prompt tokens
  PDVM_STEP_PROMPTS=$1 timeout 100 node $D/load-test.mjs --cli $D/cli.mjs --synthetic llama-3.1-8b --backend webgpu --batched-step \
    --context 512 --max-concurrency 32 --streams 1,8,32 --alone 1 --max-tokens 128 --prompt-tokens $2 2>&1 | grep -v Warning > "$OUT/load-$1-$2.txt"
  tl "load $1 $2"
}
load prefill 32
load rows 32
load prefill 256
load rows 256
true
