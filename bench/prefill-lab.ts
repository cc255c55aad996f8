/**
 * Prefill lab: times variants of the prefill's matrix-matrix kernels (kernels/matmul-tiled.ts) on the
 * real q4 g64 shapes, each checked against the f32 tile kernel on the same weights (itself tested
 * against the CPU in matmul-tiled.test.ts), to choose designs and tiles with figures (not a test).
 * Each timing encodes `reps` copies of the dispatches in one compute pass and one submit and divides;
 * the median of 5. Prints µs, TFLOP/s and the norm-relative difference from the f32 reference.
 *   node dist/bench/prefill-lab.js [--variants cur,d4422,...] [--shapes ...] [--tokens 512] [--json FILE]
 * On the device: bundle with --inject:src/backends/webgpu/node-gpu.ts (bench/prefill-device.sh --lab).
 */
import { scriptArgs } from '../scripts/args.js';
import { appendFileSync } from 'node:fs';
import '../src/backends/webgpu/node-gpu.js';
import { Gpu } from '../src/backends/webgpu/device.js';
import {
  convertF16Invocations, convertF16Wgsl, dequantF16Wgsl, linearGrid, matmulTensorCoreWgsl, matmulTiledF32Wgsl, paddedCols, tensorCoreTileName,
  tensorCoreTileSize, type TensorCoreTile, type TiledMatmulShape,
} from '../src/backends/webgpu/kernels/matmul-tiled.js';
import { f16ToF32, f32ToF16 } from '../src/format/dtype.js';
import { BENCH_SHAPES } from '../src/bench/synthetic.js';

const { values } = scriptArgs({
  options: {
    variants: { type: 'string', default: '' },
    shapes: { type: 'string', default: 'llama-3.1-8b:gate_up,llama-3.2-1b:qkv,phi-4:qkv,llama-3.1-8b:down,llama-3.2-1b:gate_up,llama-3.2-1b:down,llama-3.1-8b:qkv,phi-4:down' },
    tokens: { type: 'string', default: '512' },
    json: { type: 'string' },
    budget: { type: 'string', default: '1e9' },
  },
});
const T = Number(values.tokens);

const gpu = await Gpu.acquire();
const device = gpu.device;
const f = gpu.features;
console.log(`device: ${gpu.adapterDescription}; ${gpu.featureSummary}`);
if (!f.subgroupMatrixF16) {
  console.log('no self-tested f16 subgroup matrices here: only the f32 reference runs');
}
const sg = f.subgroupMaxSize;
const indexing = f.subgroupMatrixIndexing ?? 'invocation-index';
const syntax = f.subgroupMatrixSyntax;

type Variant =
  | { name: string; kind: 'f32' }
  | { name: string; kind: 'direct'; tile: TensorCoreTile; lab?: 'workgroup-only' };
const d = (am: number, an: number, gm: number, gn: number, kind: TensorCoreTile['kind'] = 'direct', ks = 32, lab?: 'workgroup-only', f16Dequant = false): Variant => {
  const tile: TensorCoreTile = { am, an, gm, gn, kind, ks, ...(f16Dequant ? { f16Dequant } : {}) };
  return { name: `${tensorCoreTileName(tile)}${lab ? '-wgonly' : ''}`, kind: 'direct', tile, ...(lab ? { lab } : {}) };
};
const ALL: Variant[] = [
  { name: 'f32', kind: 'f32' },
  d(4, 4, 2, 2, 'hybrid', 64), d(2, 4, 2, 2, 'hybrid', 64), d(4, 4, 2, 4, 'hybrid', 64), d(4, 4, 2, 4, 'hybrid', 32),
  d(4, 4, 2, 2, 'staged', 32), d(4, 4, 2, 2, 'staged', 64), d(2, 4, 2, 2, 'staged', 32), d(2, 4, 2, 2, 'staged', 64), d(4, 4, 2, 4, 'staged', 32),
  d(4, 4, 2, 2, 'direct', 32, 'workgroup-only'), d(4, 4, 2, 4, 'direct', 32, 'workgroup-only'),
  // q4 dequantized in f16 arithmetic
  d(4, 4, 2, 2, 'staged', 64, undefined, true), d(2, 4, 2, 2, 'staged', 64, undefined, true), d(4, 4, 2, 4, 'staged', 32, undefined, true), d(4, 4, 2, 2, 'staged', 32, undefined, true),
  // 8 subgroups of 32 tokens x 64 rows on a 128 x 128 tile (half the accumulators a subgroup, twice the subgroups)
  d(2, 4, 4, 2, 'staged', 64, undefined, true), d(2, 4, 4, 2, 'staged', 32, undefined, true),
];
const wanted = values.variants ? new Set(values.variants.split(',')) : null;
const variants = ALL.filter((v) => v.name === 'f32' || ((!wanted || wanted.has(v.name)) && f.subgroupMatrixF16));

let seed = 12345;
const rnd = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 8) / 2 ** 24;
function buffer(label: string, bytes: number, fill?: (u: ArrayBuffer) => void, extra = 0): GPUBuffer {
  const b = gpu.createBuffer(label, bytes, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST | extra, !!fill);
  if (fill) {
    fill(b.getMappedRange());
    b.unmap();
  }
  return b;
}
async function readBack(b: GPUBuffer, n: number): Promise<Float32Array> {
  const rb = gpu.createBuffer('rb', n * 4, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST);
  const e = device.createCommandEncoder();
  e.copyBufferToBuffer(b, 0, rb, 0, n * 4);
  device.queue.submit([e.finish()]);
  await rb.mapAsync(GPUMapMode.READ);
  const out = new Float32Array(rb.getMappedRange().slice(0));
  rb.destroy();
  return out;
}
function relDiff(a: Float32Array, b: Float32Array): number {
  let w = 0, scale = 0;
  for (let i = 0; i < a.length; i++) scale = Math.max(scale, Math.abs(b[i]!));
  for (let i = 0; i < a.length; i++) {
    const e = Math.abs(a[i]! - b[i]!);
    if (!(e <= w)) w = Number.isNaN(e) ? Infinity : e;
  }
  return w / scale;
}

const pipelines = new Map<string, GPUComputePipeline | string>();
async function pipe(code: string): Promise<GPUComputePipeline | string> {
  let p = pipelines.get(code);
  if (p) return p;
  const module = device.createShaderModule({ code });
  const info = await module.getCompilationInfo();
  const errors = info.messages.filter((m) => m.type === 'error');
  if (errors.length) {
    p = `compile: ${errors.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`).join(' | ').slice(0, 600)}`;
  } else {
    try {
      p = await device.createComputePipelineAsync({ layout: 'auto', compute: { module, entryPoint: 'main' } });
    } catch (e) {
      p = `pipeline: ${(e as Error).message.slice(0, 400)}`;
    }
  }
  pipelines.set(code, p);
  return p;
}
type Launch = { pipeline: GPUComputePipeline; bindGroup: GPUBindGroup; wg: [number, number, number] };
function launch(pipeline: GPUComputePipeline, buffers: GPUBuffer[], wg: [number, number, number], first = 0): Launch {
  const bindGroup = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: buffers.map((buffer, i) => ({ binding: first + i, resource: { buffer } })) });
  return { pipeline, bindGroup, wg };
}
async function runOnce(ls: Launch[]): Promise<void> {
  const e = device.createCommandEncoder();
  const pass = e.beginComputePass();
  for (const l of ls) { pass.setPipeline(l.pipeline); pass.setBindGroup(0, l.bindGroup); pass.dispatchWorkgroups(...l.wg); }
  pass.end();
  device.queue.submit([e.finish()]);
  await device.queue.onSubmittedWorkDone();
}
/** Median µs of one repetition of the launches, `reps` of them in a pass. */
async function time(ls: Launch[]): Promise<number> {
  const t0 = performance.now();
  await runOnce(ls);
  const once = (performance.now() - t0) * 1000;
  const reps = Math.max(3, Math.min(50, Math.ceil(30000 / Math.max(once, 1))));
  const samples: number[] = [];
  for (let r = 0; r < 5; r++) {
    const e = device.createCommandEncoder();
    const pass = e.beginComputePass();
    for (let i = 0; i < reps; i++) for (const l of ls) { pass.setPipeline(l.pipeline); pass.setBindGroup(0, l.bindGroup); pass.dispatchWorkgroups(...l.wg); }
    pass.end();
    const s0 = performance.now();
    device.queue.submit([e.finish()]);
    await device.queue.onSubmittedWorkDone();
    samples.push(((performance.now() - s0) * 1000) / reps);
  }
  samples.sort((a, b) => a - b);
  return samples[2]!;
}

function matrixOf(spec: string): { name: string; rows: number; cols: number } {
  const [shape, which] = spec.split(':') as [string, string];
  const s = BENCH_SHAPES[shape]!;
  const rows = { qkv: (s.heads + 2 * s.kvHeads) * s.headDim, o: s.hidden, gate_up: 2 * s.intermediate, down: s.hidden }[which]!;
  const cols = which === 'down' ? s.intermediate : which === 'o' ? s.heads * s.headDim : s.hidden;
  return { name: spec, rows, cols };
}

const results: Record<string, unknown>[] = [];
const cases: { spec: string; T: number; residual: boolean; timed: boolean }[] = [
  // partial tiles of tokens, a residual epilogue: correctness only
  { spec: 'llama-3.2-1b:qkv', T: 77, residual: true, timed: false },
  ...values.shapes!.split(',').map((spec) => ({ spec, T, residual: false, timed: true })),
];
const started = performance.now();
for (const c of cases) {
  if ((performance.now() - started) / 1000 > Number(values.budget)) { console.log(`budget of ${values.budget} s spent: ${c.spec} and the rest not run`); break; }
  const { name, rows, cols } = matrixOf(c.spec);
  const group = 64, groups = cols / group, wordsPerRow = cols / 8;
  const KP = paddedCols(cols), rowsPadded = Math.ceil(rows / 256) * 256, Tpad = Math.ceil(c.T / 128) * 128;
  const qweight = buffer('qweight', rows * wordsPerRow * 4, (a) => { const u = new Uint32Array(a); for (let i = 0; i < u.length; i++) u[i] = (rnd() * 2 ** 32) >>> 0; });
  const scaleMin = buffer('scale_min', rows * groups * 4, (a) => {
    const u = new Uint32Array(a);
    for (let i = 0; i < u.length; i++) u[i] = f32ToF16(0.002 + 0.008 * rnd()) | (f32ToF16(-0.04 + 0.03 * rnd()) << 16);
  });
  const x = buffer('x', Tpad * cols * 4, (a) => { const v = new Float32Array(a); for (let i = 0; i < c.T * cols; i++) v[i] = rnd() * 2 - 1; });
  const yStride = rows;
  const y0 = buffer('y0', c.T * yStride * 4, (a) => { const v = new Float32Array(a); for (let i = 0; i < v.length; i++) v[i] = rnd() * 2 - 1; });
  const y = buffer('y', c.T * yStride * 4);
  const step = buffer('step', 64, (a) => { new Uint32Array(a)[0] = c.T; });
  const x16 = buffer('x16', Tpad * KP * 2);
  const w16 = buffer('w16', rowsPadded * KP * 2);
  const shape: TiledMatmulShape = { weight: { encoding: 'q4', wordsPerRow, group, groups }, rows, cols, yStride, yOffset: 0, bias: false, residual: c.residual };
  const flop = 2 * c.T * rows * cols;
  const resetY = async () => {
    const e = device.createCommandEncoder();
    e.copyBufferToBuffer(y0, 0, y, 0, c.T * yStride * 4);
    device.queue.submit([e.finish()]);
    await device.queue.onSubmittedWorkDone();
  };
  // the prep kernels
  const conv = await pipe(convertF16Wgsl(cols));
  const deq = await pipe(dequantF16Wgsl(shape.weight, rows, cols, rowsPadded));
  if (typeof conv === 'string' || typeof deq === 'string') { console.log(`${name}: prep kernels failed: ${conv} ${deq}`); continue; }
  const convL = launch(conv, [x, x16, step], linearGrid(convertF16Invocations(c.T, cols)));
  const deqL = launch(deq, [qweight, scaleMin, w16], linearGrid(rowsPadded * (KP / 8)));
  await runOnce([convL, deqL]);
  if (!c.timed) {
    // the prep kernels against the CPU: W's first rows and x's first tokens, as f16
    const words = new Uint32Array((await readBack(qweight, 2 * wordsPerRow)).buffer), sms = new Uint32Array((await readBack(scaleMin, 2 * groups)).buffer);
    const w16got = new Uint16Array((await readBack(w16, KP)).buffer), xs = await readBack(x, cols), x16got = new Uint16Array((await readBack(x16, KP / 2)).buffer);
    let bad = 0;
    for (let r = 0; r < 2; r++) for (let k = 0; k < KP; k++) {
      const sm = sms[r * groups + Math.floor(k / group)]!;
      const q = (words[r * wordsPerRow + Math.floor(k / 8)]! >>> (4 * (k % 8))) & 15;
      const want = k < cols ? f32ToF16(q * f16ToF32(sm & 0xffff) + f16ToF32(sm >>> 16)) : 0;
      if (Math.abs(f16ToF32(w16got[r * KP + k]!) - f16ToF32(want)) > 1e-3 * Math.abs(f16ToF32(want)) + 1e-6) bad++;
    }
    for (let k = 0; k < KP; k++) if (x16got[k] !== (k < cols ? f32ToF16(xs[k]!) : 0)) bad++;
    console.log(`prep kernels vs the CPU (2 rows of W, 1 token of x, as f16): ${bad} mismatches`);
  }
  let ref: Float32Array | null = null;
  if (c.timed) {
    const tc = await time([convL]), td = await time([deqL]);
    console.log(`${name} T=${c.T}: convert x ${tc.toFixed(1)} µs (${((c.T * cols * 6) / tc / 1e3).toFixed(0)} GB/s), dequant W ${td.toFixed(1)} µs (${((rows * cols * (0.5 + 2)) / td / 1e3).toFixed(0)} GB/s)`);
    results.push({ matrix: name, T: c.T, variant: 'prep', convert_us: tc, dequant_us: td });
  }
  for (const v of variants) {
    let code: string, buffers: GPUBuffer[], wg: [number, number, number], prep: Launch[] = [];
    if (v.kind === 'f32') {
      code = matmulTiledF32Wgsl(shape); buffers = [qweight, scaleMin, x, y, step]; wg = [Math.ceil(rows / 128), Math.ceil(c.T / 128), 1];
    } else {
      try { code = matmulTensorCoreWgsl(shape, sg, indexing, v.tile, syntax, v.lab); } catch (e) { console.log(`${name} ${v.name}: ${(e as Error).message}`); continue; }
      const ts = tensorCoreTileSize(v.tile);
      if (rowsPadded % ts.rows !== 0) { console.log(`${name} ${v.name}: rows tile ${ts.rows} does not divide ${rowsPadded}`); continue; }
      buffers = v.lab ? [y, step] : v.tile.kind !== 'direct' ? [qweight, scaleMin, x16, y, step] : [w16, x16, y, step];
      wg = [Math.ceil(c.T / ts.tokens), Math.ceil(rows / ts.rows), 1];
      prep = v.lab ? [] : v.tile.kind !== 'direct' ? [convL] : [convL, deqL];
    }
    const p = await pipe(code);
    if (typeof p === 'string') { console.log(`${name} ${v.name}: ${p}`); results.push({ matrix: name, variant: v.name, error: p }); continue; }
    const L = launch(p, buffers, wg, v.kind === 'direct' && v.lab ? 2 : 0);
    await resetY();
    await runOnce([...prep, L]);
    const got = await readBack(y, c.T * yStride);
    let diff = NaN;
    if (v.kind === 'f32') ref = got;
    else if (ref) diff = relDiff(got, ref);
    let us = NaN, total = NaN;
    if (c.timed && v.kind !== 'f32') {
      us = await time([L]);
      total = prep.length ? await time([...prep, L]) : us;
    }
    const line = `${name} T=${c.T}${c.residual ? ' +residual' : ''} ${v.name}: ${c.timed ? `${us.toFixed(1)} µs ${(flop / us / 1e6).toFixed(1)} TFLOP/s; with prep ${total.toFixed(1)} µs ${(flop / total / 1e6).toFixed(1)} TFLOP/s; ` : ''}grid ${wg.join('x')}; rel diff ${diff.toExponential(2)}`;
    console.log(line);
    results.push({ matrix: name, T: c.T, residual: c.residual, variant: v.name, us, total_us: total, tflops: flop / us / 1e6, tflops_with_prep: flop / total / 1e6, rel_diff: diff, grid: wg });
  }
  for (const b of [qweight, scaleMin, x, y0, y, step, x16, w16]) b.destroy();
}
if (values.json) appendFileSync(values.json, results.map((r) => JSON.stringify(r)).join('\n') + '\n');
gpu.destroy();
