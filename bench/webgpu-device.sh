#!/usr/bin/env bash
# Issue 4's device checks and figures for the (unfused) WebGPU engine, in two device calls because the
# fixtures and the kit do not fit one 64 MiB transfer. Build here first:
#   npx tsc -p . ; bundle the GPU tests to .gpu/t/, bench/gpu.ts to .gpu/benchgpu.mjs, the CLI to
#   .gpu/app.mjs (esbuild, --external:webgpu); stage fixtures in .gpu/fx1 (brown-llama-12m with its
#   model.safetensors xz-compressed, arch/llama, validation.txt) and .gpu/fx2 (all arch models).
#   device: bash bench/webgpu-device.sh 1   (carry the kit, .gpu/t, the bundles, .gpu/fx1)
#           bash bench/webgpu-device.sh 2   (carry the kit, .gpu/t, the bundles, .gpu/fx2)
set -uo pipefail
phase=$1
eval "$(bash .gpu/setup.sh)"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1
fx=/tmp/fx; mkdir -p $fx
if [ "$phase" = 1 ]; then
  cp -r .gpu/fx1/* $fx/
  xz -dc $fx/models/brown-llama-12m/model.safetensors.xz > $fx/models/brown-llama-12m/model.safetensors
  rm $fx/models/brown-llama-12m/model.safetensors.xz
  export PDVM_FIXTURES=$fx
  node --test --test-name-pattern='brown-llama' .gpu/t/fixtures.test.mjs .gpu/t/fused.test.mjs 2>&1 | grep -E '^(not )?ok|^# (pass|fail)' | tee "$OUT/tests1.txt"
  node --test .gpu/t/engine.test.mjs .gpu/t/perplexity.test.mjs 2>&1 | grep -E '^(not )?ok|^# (pass|fail)|relative' | tee -a "$OUT/tests1.txt"
  # brown-llama-12m per encoding through the WebGPU engine: prefill and decode tok/s
  B=$fx/models/brown-llama-12m
  for spec in "dense:--bits 16" "q8:--bits 8" "q4:--bits 4 --group 64" "bitmap:--sparsity 0.5 --bits 4" "nm:--sparsity 0.5 --pattern 2:4 --bits 4" "csr:--sparsity 0.9 --pattern csr --bits 8"; do
    name=${spec%%:*}; flags=${spec#*:}
    node .gpu/app.mjs compress $B -o /tmp/brown-$name.upg $flags -q
    echo "== brown-llama-12m $name ($flags)" >> "$OUT/bench1.txt"
    node .gpu/benchgpu.mjs --model /tmp/brown-$name.upg --prompt 128 --decode 128 --runs 3 --json 2>/dev/null | tee -a "$OUT/bench1.jsonl"
  done
else
  cp -r .gpu/fx2/* $fx/
  export PDVM_FIXTURES=$fx
  node --test --test-name-pattern='^(webgpu: (llama|phi3|qwen2|mistral)|fused decode: (llama|phi3|qwen2|mistral))' .gpu/t/fixtures.test.mjs .gpu/t/fused.test.mjs 2>&1 | grep -E '^(not )?ok|^# (pass|fail)' | tee "$OUT/tests2.txt"
  node --test .gpu/t/kernels.test.mjs .gpu/t/encodings.test.mjs .gpu/t/sample.test.mjs 2>&1 | grep -E '^(not )?ok|^# (pass|fail)' | tee -a "$OUT/tests2.txt"
  # the largest synthetic model per encoding that builds in a few seconds a tensor on the host:
  # TinyLlama-1.1B's shape (hidden 2048, MLP 5632, 22 layers, 32 heads / 4 KV heads, vocab 32000)
  for enc in dense q8 q4 bitmap nm csr; do
    timeout 150 node .gpu/benchgpu.mjs --synthetic 2048,5632,22,32,4,32000 --dtype bf16 --encoding $enc --prompt 128 --decode 64 --runs 2 --json 2>/dev/null | tee -a "$OUT/bench2.jsonl"
  done
fi
