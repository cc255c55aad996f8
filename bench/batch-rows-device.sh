#!/usr/bin/env bash
# Issue 15.4, the batched q4 products' 'rows' layout (docs/PERFORMANCE.md "Issue 15 on 2026-12-05
# evening"), one device call: the kernels' tests on the device, the engine's step per kernel variant
# (the 'units' default 8x2 beside 'rows' variants), then the server's load test on the 'rows' variant
# best at 8 and 32 rows in this call's bench and, with $2 = both, on 'units' (8x2) too.
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
KERNELS=${1:-8x2,r8-4x2,r8-4x2-u2,r8-4x2-s4-u2,r8-4x2-s4-u2+cq}; LOAD=${2:-best}; BATCHES=${3:-1,8,32}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1; date -u >> "$OUT/gpu.txt"
t0=$(date +%s); tl() { echo "t=$(( $(date +%s) - t0 ))s $*" >> "$OUT/log.txt"; }
tests() { # $1: a name for the log; the environment chooses the batched kernels
  for t in batched-matvec batched-step; do
    [ -f $D/$t.test.mjs ] || continue
    echo "== $t ($1)" >> "$OUT/tests.log"
    timeout 45 node --test $D/$t.test.mjs 2>&1 | grep -v Warning | grep -E "^(ok|not ok)|# (pass|fail|skip)|rror|relative|prompt|SKIP|expected|actual" >> "$OUT/tests.log"
    tl "test $t ($1)"
  done
}
tests defaults
PDVM_BATCH_LAYOUT=rows PDVM_BATCH_UNROLL=2 PDVM_BATCH_SLICES=4 PDVM_BATCH_COMBINE_QUANTIZE=1 tests "rows u2 s4, merge+int8"
timeout 110 node $D/batched-step.mjs --shape llama-3.1-8b --batches "$BATCHES" --kernels "$KERNELS" --steps 12 --context 512 --prompt 32 --profile 8,32 2>&1 | grep -v Warning > "$OUT/bench.txt"
tl bench
# the 'rows' variant (NB 8) best here over 8 and 32 rows (the sum of its speed-ups on the 'units' 8x2), as the
# server's environment: PDVM_BATCH_GROUPS, _RPS, _SLICES, _UNROLL, _COMBINE_QUANTIZE
best=$(node -e '
const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8").split("\n").find((l) => l.startsWith("[")) ?? "[]");
const ms = (k, B) => r.find((x) => x.kernel === k && x.B === B)?.msPerStep;
const score = (k) => ms("8x2", 8) / ms(k, 8) + ms("8x2", 32) / ms(k, 32);
const rows = [...new Set(r.map((x) => x.kernel))].filter((k) => /^r8-/.test(k) && ms(k, 8) && ms(k, 32)).sort((a, b) => score(b) - score(a))[0];
const m = rows && /^r8-(\d+)x(\d+)(?:-s(\d+))?(?:-u(\d+))?(\+cq)?$/.exec(rows);
console.log(m ? `${m[1]} ${m[2]} ${m[3] ?? 0} ${m[4] ?? 1} ${m[5] ? 1 : 0} ${rows}` : "4 2 0 1 0 r8-4x2");' "$OUT/bench.txt")
set -- $best; G=$1; R=$2; SL=$3; UN=$4; CQ=$5; echo "load test rows layout: $6 (groups $G, rows a lane $R, slices $SL, unroll $UN, merge+int8 $CQ)" >> "$OUT/log.txt"
load() { # $1: layout
  local slices=; [ "$SL" != 0 ] && slices=$SL
  PDVM_BATCH_LAYOUT=$1 PDVM_BATCH_GROUPS=$G PDVM_BATCH_RPS=$R PDVM_BATCH_SLICES=$slices PDVM_BATCH_UNROLL=$UN PDVM_BATCH_COMBINE_QUANTIZE=$CQ \
    timeout 85 node $D/load-test.mjs --cli $D/cli.mjs --synthetic llama-3.1-8b --backend webgpu --batched-step \
    --context 512 --max-concurrency 32 --streams 1,8,32 --alone 1 --max-tokens 128 --prompt-tokens 32 2>&1 | grep -v Warning > "$OUT/load-$1.txt"
  tl "load $1"
}
[ "$LOAD" = none ] || load rows
[ "$LOAD" = both ] && { R=2; CQ=0; load units; }
true
