#!/usr/bin/env bash
# The fused-decode figures of docs/PERFORMANCE.md, in one device call (see ../shared/gpu/README.md):
#   npx tsc -p . && npx esbuild src/cli/main.ts --bundle --platform=node --format=esm --external:webgpu \
#     --outfile=.gpu/app.mjs "--banner:js=import { createRequire as __pdvmCreateRequire } from 'node:module'; const require = __pdvmCreateRequire(import.meta.url);"
#   npx esbuild bench/kernel-lab.ts (same flags) --outfile=.gpu/lab.mjs   (the kernel lab, last)
#   device: bash bench/fused-device.sh   (carry .gpu; results under $OUT; SKIP_HF=1 / SKIP_LAB=1 / SKIP_BENCH=1 to leave out)
# Runs the read-bandwidth probe and pdvm bench (fused and unfused, same weights, same run) on each
# configuration, a fused-vs-unfused check on the device, then the transformers bf16 baseline.
set -uo pipefail
eval "$(bash .gpu/setup.sh)"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv > "$OUT/gpu.txt" 2>&1
# results: one JSON object a line in results.jsonl (with --path both the unfused run under compared_with); what each run logged (figures, checks, profiles) in bench.log
bench() { [ -n "${SKIP_BENCH:-}" ] && return 0; local name=$1; shift; echo "== $name: pdvm bench $*" | tee -a "$OUT/bench.log"; node .gpu/app.mjs bench --json "$@" >> "$OUT/results.jsonl" 2> >(grep -v Warning | tee -a "$OUT/bench.log" >&2); }
bench check-brown --shape brown-llama --encoding q4 --context 64 --tokens 32 --check 32 --probe-mib 256 --path both
bench check-bitmap --shape llama-3.2-1b --encoding bitmap --context 64 --tokens 32 --check 24 --probe-mib 256 --path both
bench check-bitmap-walk --shape llama-3.2-1b --encoding bitmap --bitmap walk --context 64 --tokens 32 --check 24 --probe-mib 256 --path both
bench phi4-q4 --shape phi-4 --encoding q4 --group 64 --context 512 --tokens 128 --profile --path both ${EXTRA:-}
bench phi4-q4-split-heads --shape phi-4 --encoding q4 --group 64 --context 512 --tokens 128 --attention split-heads ${EXTRA:-}
bench phi4-q4-single-attention --shape phi-4 --encoding q4 --group 64 --context 512 --tokens 128 --attention single ${EXTRA:-}
bench phi4-q8 --shape phi-4 --encoding q8 --context 512 --tokens 128 --path both ${EXTRA:-}
bench phi4-q4-ctx4096 --shape phi-4 --encoding q4 --group 64 --context 4096 --tokens 64 --path fused ${EXTRA:-}
bench phi4-q4-ctx4096-split-heads --shape phi-4 --encoding q4 --group 64 --context 4096 --tokens 64 --path fused --attention split-heads ${EXTRA:-}
bench phi4-bitmap --shape phi-4 --encoding bitmap --tile 64 --density 0.5 --context 512 --tokens 128 --path both ${EXTRA:-}
bench phi4-bitmap-walk --shape phi-4 --encoding bitmap --bitmap walk --tile 64 --density 0.5 --context 512 --tokens 128 --path both ${EXTRA:-}
bench llama1b-q4 --shape llama-3.2-1b --encoding q4 --group 64 --context 512 --tokens 128 --profile --path both ${EXTRA:-}
bench llama1b-q4-single-attention --shape llama-3.2-1b --encoding q4 --group 64 --context 512 --tokens 128 --attention single ${EXTRA:-}
bench llama1b-bitmap --shape llama-3.2-1b --encoding bitmap --tile 64 --density 0.5 --context 512 --tokens 128 ${EXTRA:-}
bench llama1b-bitmap-walk --shape llama-3.2-1b --encoding bitmap --bitmap walk --tile 64 --density 0.5 --context 512 --tokens 128 ${EXTRA:-}
bench llama1b-q8 --shape llama-3.2-1b --encoding q8 --context 512 --tokens 128 ${EXTRA:-}
bench llama8b-q4 --shape llama-3.1-8b --encoding q4 --group 64 --context 512 --tokens 128 --path both ${EXTRA:-}
[ -n "${SKIP_LAB:-}" ] || node .gpu/lab.mjs --reps 100 --only attention,gap 2>&1 | grep -v Warning > "$OUT/lab.txt"
# the ceiling of a design with N dependent dispatches a layer (pure-read chains of the shapes' byte sizes)
[ -n "${SKIP_LAB:-}" ] || node .gpu/lab.mjs --only roofline --shapes phi-4,llama-3.2-1b,llama-3.1-8b 2>&1 | grep -v Warning > "$OUT/roofline.txt"
[ -n "${SKIP_HF:-}" ] || PYTHONUNBUFFERED=1 python3 bench/hf_baseline.py --shape phi-4 --shape llama-3.2-1b --prompt 512 --new 128 --json "$OUT/hf.json" 2>&1 | grep -v Warning | tail -5
sleep 1
