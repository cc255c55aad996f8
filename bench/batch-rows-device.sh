#!/usr/bin/env bash
# Issue 15.4, the batched q4 products' 'rows' layout (docs/PERFORMANCE.md "Issue 15 on 2026-12-05
# evening"), one device call: the kernels' tests on the device, the engine's step per kernel variant
# (the 'units' default 8x2 beside 'rows' variants), then the server's load test on the layout given
# (or the 'rows' variant fastest at 8 rows in this call's bench) and, with $2 = both, on 'units' too.
# Stage (dev machine, from the serve worktree, into /work/main's .gpu, which travels; .gpu is git-ignored):
#   D=/work/main/.gpu/serve; B="--bundle --platform=node --format=esm --external:webgpu"; BAN="--banner:js=import{createRequire}from'module';const require=createRequire(import.meta.url);"
#   npx esbuild src/cli/main.ts $B "$BAN" --outfile=$D/cli.mjs
#   npx esbuild bench/batched-step.ts $B "$BAN" --inject:src/backends/webgpu/node-gpu.ts --outfile=$D/batched-step.mjs
#   npx esbuild scripts/load-test.ts $B "$BAN" --outfile=$D/load-test.mjs
#   npx esbuild test/backends/webgpu/T.test.ts $B "$BAN" --inject:src/backends/webgpu/node-gpu.ts --outfile=$D/T.test.mjs   (T = batched-matvec, batched-step)
#   cp bench/batch-rows-device.sh $D/run.sh
# Device (carry .gpu/setup.sh .gpu/node.xz .gpu/node_modules .gpu/debs .gpu/serve):
#   bash .gpu/serve/run.sh [kernels] [load: best | both | none] [batches]   (results under $OUT)
set -uo pipefail
eval "$(bash .gpu/setup.sh)"
D=.gpu/serve; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
KERNELS=${1:-8x2,r8-4x2,r8-4x4,r8-2x2,r8-1x4,r16-4x2}; LOAD=${2:-best}; BATCHES=${3:-1,8,32}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1; date -u >> "$OUT/gpu.txt"
t0=$(date +%s); tl() { echo "t=$(( $(date +%s) - t0 ))s $*" >> "$OUT/log.txt"; }
for t in batched-matvec batched-step; do
  [ -f $D/$t.test.mjs ] || continue
  timeout 45 node --test $D/$t.test.mjs 2>&1 | grep -v Warning | grep -E "^(ok|not ok)|# (pass|fail|skip)|rror|relative|prompt|SKIP|expected|actual" >> "$OUT/tests.log"
  tl "test $t"
done
timeout 110 node $D/batched-step.mjs --shape llama-3.1-8b --batches "$BATCHES" --kernels "$KERNELS" --steps 12 --context 512 --prompt 32 --profile 8,32 2>&1 | grep -v Warning > "$OUT/bench.txt"
tl bench
# the 'rows' variant fastest at 8 rows here, as the server's environment (PDVM_BATCH_RPS, PDVM_BATCH_GROUPS)
best=$(node -e '
const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8").split("\n").find((l) => l.startsWith("[")) ?? "[]");
const rows = r.filter((x) => x.B === 8 && /^r8-/.test(x.kernel)).sort((a, b) => a.msPerStep - b.msPerStep)[0];
const m = rows && /^r\d+-(\d+)x(\d+)$/.exec(rows.kernel);
console.log(m ? `${m[1]} ${m[2]}` : "4 2");' "$OUT/bench.txt")
set -- $best; G=$1; R=$2; echo "load test rows layout: groups $G, rows a lane $R" >> "$OUT/log.txt"
load() { # $1: layout
  PDVM_BATCH_LAYOUT=$1 PDVM_BATCH_GROUPS=$G PDVM_BATCH_RPS=$R timeout 85 node $D/load-test.mjs --cli $D/cli.mjs --synthetic llama-3.1-8b --backend webgpu --batched-step \
    --context 512 --max-concurrency 32 --streams 1,8,32 --alone 1 --max-tokens 128 --prompt-tokens 32 2>&1 | grep -v Warning > "$OUT/load-$1.txt"
  tl "load $1"
}
[ "$LOAD" = none ] || load rows
[ "$LOAD" = both ] && { R=2; load units; }
true
