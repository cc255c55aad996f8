#!/usr/bin/env bash
# The prefill kernel lab on the device, in one call (docs/PERFORMANCE.md, issue 13):
#   here: bash bench/prefill-lab-device.sh --build   (bundles bench/prefill-lab.ts and the CLI into /work/main/.gpu/prefill-lab)
#   device (carry .gpu): bash .gpu/prefill-lab/prefill-lab-device.sh   (results under $OUT)
# 1. bench/prefill-lab.ts: every variant on the real q4 g64 shapes, timed and checked against the f32 tiles
# 2. pdvm bench --prefill 512 --profile on llama-3.1-8b, and --prefill 4096 on phi-4 (attention's growth)
set -uo pipefail
if [ "${1:-}" = "--build" ]; then
  set -e
  K=/work/main/.gpu/prefill-lab; rm -rf "$K"; mkdir -p "$K"
  B=(--bundle --platform=node --format=esm --external:webgpu "--banner:js=import { createRequire as __pdvmCreateRequire } from 'node:module'; const require = __pdvmCreateRequire(import.meta.url);")
  npx esbuild src/cli/main.ts "${B[@]}" --outfile="$K/app.mjs" --log-level=warning
  npx esbuild bench/prefill-lab.ts "${B[@]}" --inject:src/backends/webgpu/node-gpu.ts --outfile="$K/lab.mjs" --log-level=warning
  cp bench/prefill-lab-device.sh "$K/"
  du -sh "$K"; exit 0
fi
eval "$(bash .gpu/setup.sh)"
K=.gpu/prefill-lab; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
timeout ${LAB_S:-150} node $K/lab.mjs --json "$OUT/lab.jsonl" --budget ${LAB_BUDGET_S:-110} ${LAB_ARGS:-} > "$OUT/lab.log" 2>&1
echo "lab exit $?" >> "$OUT/lab.log"
bench() { echo "== pdvm bench $*" >> "$OUT/bench.log"; timeout 60 node $K/app.mjs bench --json "$@" >> "$OUT/results.jsonl" 2> >(grep -v Warning >> "$OUT/bench.log"); }
[ -n "${SKIP_BENCH:-}" ] || {
  bench --shape llama-3.1-8b --encoding q4 --group 64 --prefill 512 --runs 2 --profile
  bench --shape phi-4 --encoding q4 --group 64 --prefill 4096 --runs 1
}
sleep 1
