/**
 * The tensor-core prompt attention alone (kernels/attention-tensor-core.ts), timed on a device at the
 * positions where a long prompt spends it: one step of T rows (default 512) at positions
 * P - T .. P - 1 (default P = 16,384) of a phi-4-shaped head layout (40 query heads, 10 KV heads,
 * dim 128), f16 cache, split over keys as the engine splits (attentionSplitFor), and in variants
 * that take parts out, to see what the time is made of (the numbers they give are wrong; only their
 * time is read):
 *   two passes / one pass        the kernels as the engine builds them
 *   one pass, K and V in two buffers   three barriers a key tile instead of four (kvBuffers 2)
 *   two passes, pass 2 only      pass 1's loop taken out (m = 0, l = 1)
 *   ... no loads                 the K and V tiles not read from the cache (zeros put)
 *   ... no score products        Q K^T taken out
 *   ... no P V products          P V taken out
 *   merge                        attention_merge of the splits
 *   SPLITS=8,32                  then the one-pass kernel and its merge at those split counts
 * Each line: µs a dispatch (median of 3 batches of REPS), and the products' rate in TFLOP/s (2 x HD
 * multiply-adds a score for Q K^T and again for P V, counted once a pass that runs them).
 * Run: [ONLY='label|label'] node attention-time.mjs [T] [P] (bundled with node-gpu.ts; bench/attention-device.sh stages it).
 */
import { Gpu } from '../src/backends/webgpu/device.js';
import { attentionMergeWgsl, attentionSplitFor, attentionTensorCoreWgsl, TC_TILE_Q, type AttentionTensorCoreOptions } from '../src/backends/webgpu/kernels/attention-tensor-core.js';
import { selfTestKit } from '../src/backends/webgpu/self-test.js';

const T = Number(process.argv[2] ?? 512), P = Number(process.argv[3] ?? 16384), REPS = Number(process.env.REPS ?? 10);
const gpu = await Gpu.acquire({});
const f = gpu.features;
if (!f.attentionTensorCore || !f.subgroupMatrixIndexing) {
  console.log(`no self-tested tensor-core attention here (${gpu.featureSummary}): nothing to time`);
  process.exit(0);
}
const device = gpu.device;
const s = { numHeads: 40, numKvHeads: 10, headDim: 128, slidingWindow: null, rotaryDim: 128 };
const qDim = s.numHeads * s.headDim, kvDim = s.numKvHeads * s.headDim, stride = qDim + 2 * kvDim, ctx = P, rowsAt = 8;
const kv = { storage: 'f16' as const, contextLength: ctx, rowsAt, kvBuffer: -1 };
const splitOf = (target: number) => attentionSplitFor(s, ctx, T, gpu.maxBindingBytes, target);
const split = splitOf(f.attentionSplits);
console.log(`device: ${gpu.adapterDescription}; rows ${P - T}..${P - 1}, ${s.numHeads} heads of ${s.headDim}, split ${split ? `${split.splits} x ${split.keys} keys` : 'none'}, ${REPS} dispatches a batch`);

const kit = selfTestKit(device);
let seed = 1;
const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1;
const qkv = kit.storage(Float32Array.from({ length: T * stride }, rnd));
// f16 cache: random values in (-1, 1) (an f16 of exponent 14 or less, either sign)
const halves = (n: number) => Uint32Array.from({ length: n / 2 }, () => {
  const h = () => ((Math.random() < 0.5 ? 0x8000 : 0) | (Math.floor(Math.random() * 0x3800) + 0x0400)) & 0xffff;
  return h() | (h() << 16);
});
const K = kit.storage(halves(ctx * kvDim)), V = kit.storage(halves(ctx * kvDim));
const words = new Uint32Array(rowsAt + 2 * T);
words[0] = T;
for (let t = 0; t < T; t++) words[rowsAt + 2 * t + 1] = P - T + t;
const step = kit.storage(words);
// partial outputs for up to 32 splits (the sweep below)
const ZMAX = Math.max(32, split?.splits ?? 1);
const parts = kit.storage(T * s.numHeads * ZMAX * s.headDim * 4), ml = kit.storage(T * s.numHeads * ZMAX * 8), out = kit.storage(T * qDim * 4);

let warmed = false;
async function time(label: string, code: string, bind: GPUBuffer[], grid: [number, number, number], flops: number): Promise<void> {
  let pipeline: GPUComputePipeline;
  try {
    pipeline = await kit.compile(label, code);
  } catch (e) {
    console.log(`${label}: does not compile: ${(e as Error).message.slice(0, 200)}`);
    return;
  }
  const group = kit.bind(pipeline, bind);
  const run = async (n: number) => {
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, group);
    for (let i = 0; i < n; i++) pass.dispatchWorkgroups(...grid);
    pass.end();
    const t0 = performance.now();
    device.queue.submit([enc.finish()]);
    await device.queue.onSubmittedWorkDone();
    return ((performance.now() - t0) * 1000) / n;
  };
  // the first kernel timed warms the GPU for a second (from idle the first runs took 2.5x the later
  // ones: docs/PERFORMANCE.md, 2026-12-07 evening)
  const w0 = performance.now();
  do await run(2);
  while (!warmed && performance.now() - w0 < 1000);
  warmed = true;
  const us = [await run(REPS), await run(REPS), await run(REPS)].sort((a, b) => a - b)[1]!;
  console.log(`${label}: ${us.toFixed(1)} µs${flops ? `, ${(flops / us / 1e6).toFixed(1)} TFLOP/s` : ''}`);
}

// multiply-adds of one Q K^T (or P V) over every row's keys, x2 flops
let keys = 0;
for (let t = 0; t < T; t++) keys += P - T + t + 1;
const unit = 2 * keys * s.headDim * s.numHeads;
const build = (o: AttentionTensorCoreOptions, sp = split) => attentionTensorCoreWgsl(s, kv, f.subgroupMaxSize, f.subgroupMatrixIndexing!, f.subgroupMatrixSyntax, sp, o);
const pass1 = (c: string) => c.replace(/ {2}\/\/ pass 1:[\s\S]*?(?= {2}\/\/ pass 2:)/, '  m = 0.0;\n  l = 1.0;\n');
const noLoads = (c: string) => c.replace(/rg\[(\d+)\] = vec4<f16>\(select\(vec4<f32>\(0\.0\), load4_[kv]\([^;]*;/g, 'rg[$1] = vec4<f16>(f16(lid & 7u));');
const noScores = (c: string) => c.replace(/\n {4}s[01] = subgroupMatrixMultiplyAccumulate\(q\d+, [^\n]*/g, '');
const noPv = (c: string) => c.replace(/\n {6}o\d+ = subgroupMatrixMultiplyAccumulate\(pl, [^\n]*/g, '');
const bindings = split ? [qkv, K, V, parts, step, ml] : [qkv, K, V, out, step];
const grid: [number, number, number] = [s.numHeads, Math.ceil(T / TC_TILE_Q), split?.splits ?? 1];
const variants: [string, AttentionTensorCoreOptions, (c: string) => string, number][] = [
  ['two passes', { passes: 2 }, (c) => c, 3 * unit],
  ['one pass', { passes: 1 }, (c) => c, 2 * unit],
  ['one pass, K and V in two buffers', { passes: 1, kvBuffers: 2 }, (c) => c, 2 * unit],
  ['one pass, K and V in two buffers, 128 rows a workgroup', { passes: 1, kvBuffers: 2, rows: 128 }, (c) => c, 2 * unit],
  ['two passes, pass 2 only', { passes: 2 }, pass1, 2 * unit],
  ['two passes, pass 2 only, no loads', { passes: 2 }, (c) => noLoads(pass1(c)), 2 * unit],
  ['two passes, pass 2 only, no score products', { passes: 2 }, (c) => noScores(pass1(c)), unit],
  ['two passes, pass 2 only, no P V products', { passes: 2 }, (c) => noPv(pass1(c)), unit],
  ['two passes, pass 2 only, no products', { passes: 2 }, (c) => noPv(noScores(pass1(c))), 0],
];
// ONLY: the variant labels to time, separated by '|' (or by ',' where no label has a comma; default every one)
const only = process.env.ONLY ? new Set(process.env.ONLY.split(process.env.ONLY.includes('|') ? '|' : ',')) : null;
for (const [label, o, transform, flops] of variants.filter(([label]) => !only || only.has(label))) {
  const code = build(o), t = transform(code);
  if (t === code && label.includes(',') && !label.includes('two buffers')) console.log(`${label}: (the transform changed nothing)`);
  await time(label, t, bindings, [grid[0], Math.ceil(T / (o.rows ?? TC_TILE_Q)), grid[2]], flops);
}
if (split) await time('merge', attentionMergeWgsl(s, kv, split), [parts, ml, out, step], [T * s.numHeads, 1, 1], 0);
// SPLITS (e.g. "8,32"): the one-pass kernel and its merge at other split counts (PDVM_ATTENTION_SPLITS)
for (const target of (process.env.SPLITS ?? '').split(',').filter(Boolean).map(Number)) {
  const sp = splitOf(target);
  if (!sp || sp.splits > ZMAX) { console.log(`${target} splits: ${sp ? `${sp.splits} splits, more than ${ZMAX}` : 'one split'} (skipped)`); continue; }
  await time(`one pass, ${sp.splits} splits of ${sp.keys} keys`, build({ passes: 1 }, sp), [qkv, K, V, parts, step, ml], [s.numHeads, Math.ceil(T / TC_TILE_Q), sp.splits], 2 * unit);
  await time(`one pass, two buffers, 128 rows, ${sp.splits} splits`, build({ passes: 1, kvBuffers: 2, rows: 128 }, sp), [qkv, K, V, parts, step, ml], [s.numHeads, Math.ceil(T / 128), sp.splits], 2 * unit);
  await time(`merge, ${sp.splits} splits`, attentionMergeWgsl(s, kv, sp), [parts, ml, out, step], [T * s.numHeads, 1, 1], 0);
}
kit.destroy();
process.exit(0);
