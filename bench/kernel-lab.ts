/**
 * Kernel lab: times kernels of the fused decode path one dispatch at a time, to choose between
 * designs and grid sizes with figures (not a test). Each timing encodes `reps` copies of one dispatch in one
 * compute pass and one submit, waits for the GPU, and divides; the median of 5 is printed with the
 * bytes the dispatch reads and the GB/s that makes.
 *   node dist/bench/kernel-lab.js [--only matvec,grids,attention,gap,roofline] [--reps 100] [--shapes phi-4,llama-3.2-1b]
 * 'roofline' is the ceiling of any design with a given number of dependent dispatches a layer: a
 * token's chain of pure-read dispatches, each reading exactly the bytes a fused kernel reads (per-layer
 * buffers of the shape's q4 g64 sizes, so nothing is served from L2), with nothing else to do.
 * On the device: bundle it like the CLI (bench/fused-device.sh) and run `node .gpu/lab.mjs`.
 */
import { scriptArgs } from '../scripts/args.js';
// Dawn registered statically, so that a bundle of this program (the device run) finds it
import '../src/backends/webgpu/node-gpu.js';
import { Gpu } from '../src/backends/webgpu/device.js';
import { fusedMatvecBindings, fusedMatvecWgsl, fusedBlocks, type FusedMatvecShape } from '../src/backends/webgpu/kernels/fused-matvec.js';
import {
  attentionSplits, chunkedAttentionConfig, chunkedAttentionPartFloats, chunkedAttentionSplits, decodeAttentionChunksWgsl, decodeAttentionMergeWgsl, decodeAttentionPartGqaWgsl,
  decodeCombineWgsl, type SplitAttentionShape,
} from '../src/backends/webgpu/kernels/fused-attention.js';
import { f32ToF16 } from '../src/format/dtype.js';
import type { KvLayout } from '../src/backends/webgpu/kernels/kv.js';
import { BENCH_SHAPES } from '../src/bench/synthetic.js';
import { fillKernel, measureReadBandwidth, readKernel } from '../src/bench/bandwidth.js';

const { values } = scriptArgs({
  options: {
    only: { type: 'string', default: 'matvec,attention,gap' },
    reps: { type: 'string', default: '100' },
    shapes: { type: 'string', default: 'phi-4,llama-3.2-1b' },
  },
});
const reps = Number(values.reps);
const only = new Set(values.only!.split(','));

const gpu = await Gpu.acquire();
const device = gpu.device;
console.log(`device: ${gpu.adapterDescription}, subgroups ${gpu.subgroups}`);
const f = { subgroups: gpu.subgroups };

function randomBuffer(label: string, bytes: number, fill: (u: Uint32Array) => void): GPUBuffer {
  const b = gpu.createBuffer(label, Math.ceil(bytes / 16) * 16, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC, true);
  const u = new Uint32Array(b.getMappedRange());
  fill(u);
  b.unmap();
  return b;
}
let seed = 12345;
const rnd = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 0);
const randomWords = (u: Uint32Array) => { for (let i = 0; i < u.length; i++) u[i] = rnd(); };
const f32s = (lo: number, hi: number) => (u: Uint32Array) => { const fl = new Float32Array(u.buffer); for (let i = 0; i < fl.length; i++) fl[i] = lo + ((rnd() >>> 8) / 2 ** 24) * (hi - lo); };
// f16 (scale, min) pairs: scale 0.003 (0x1A25), min -0.02 (0xA51F)
const scaleMins = (u: Uint32Array) => u.fill(0x1a25 | (0xa51f << 16));

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
function worst(a: Float32Array, b: Float32Array): number {
  let w = 0, scale = 0;
  for (let i = 0; i < a.length; i++) scale = Math.max(scale, Math.abs(b[i]!));
  for (let i = 0; i < a.length; i++) w = Math.max(w, Math.abs(a[i]! - b[i]!) / scale);
  return w;
}

async function time(pipeline: GPUComputePipeline, bindGroup: GPUBindGroup, wg: [number, number, number]): Promise<number> {
  const samples: number[] = [];
  for (let r = 0; r < 6; r++) {
    const encoder = device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    for (let i = 0; i < reps; i++) {
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, bindGroup);
      pass.dispatchWorkgroups(...wg);
    }
    pass.end();
    const t0 = performance.now();
    device.queue.submit([encoder.finish()]);
    await device.queue.onSubmittedWorkDone();
    if (r > 0) samples.push(((performance.now() - t0) * 1000) / reps);
  }
  gpu.check();
  samples.sort((a, b) => a - b);
  return samples[2]!;
}

function pipe(name: string, code: string): GPUComputePipeline {
  return gpu.pipeline(name, { code: code.length, hash: hash(code) }, () => code);
}
function hash(s: string): number {
  let h = 0;
  for (let i = 0; i < s.length; i++) h = (Math.imul(h, 31) + s.charCodeAt(i)) | 0;
  return h;
}

interface Mat { name: string; rows: number; cols: number }
function matsOf(shape: string): Mat[] {
  const s = BENCH_SHAPES[shape]!;
  const qkv = (s.heads + 2 * s.kvHeads) * s.headDim;
  return [
    { name: `${shape} qkv`, rows: qkv, cols: s.hidden },
    { name: `${shape} o`, rows: s.hidden, cols: s.heads * s.headDim },
    { name: `${shape} gate_up`, rows: 2 * s.intermediate, cols: s.hidden },
    { name: `${shape} down`, rows: s.hidden, cols: s.intermediate },
    { name: `${shape} lm_head`, rows: s.vocab, cols: s.hidden },
  ];
}

if (only.has('gap')) {
  const code = `@group(0) @binding(0) var<storage, read_write> y: array<u32>;
@compute @workgroup_size(64) fn main(@builtin(local_invocation_index) l: u32) { y[l] = y[l] + 1u; }`;
  const y = randomBuffer('y', 256, () => undefined);
  const p = pipe('gap', code);
  const bg = gpu.bindGroup('gap', p, [y]);
  console.log(`gap: one-workgroup dependent dispatch ${(await time(p, bg, [1, 1, 1])).toFixed(2)} µs`);
  // where it goes: encoding (JS + Dawn), submit (Dawn records the Vulkan commands), the GPU
  for (let r = 0; r < 3; r++) {
    const t0 = performance.now();
    const encoder = device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    for (let i = 0; i < 1000; i++) { pass.setPipeline(p); pass.setBindGroup(0, bg); pass.dispatchWorkgroups(1); }
    pass.end();
    const cb = encoder.finish();
    const t1 = performance.now();
    device.queue.submit([cb]);
    const t2 = performance.now();
    await device.queue.onSubmittedWorkDone();
    const t3 = performance.now();
    console.log(`gap: 1000 dispatches: encode ${(t1 - t0).toFixed(2)} ms, submit ${(t2 - t1).toFixed(2)} ms, then GPU until done ${(t3 - t2).toFixed(2)} ms`);
  }
  const p2 = pipe('gap132', code);
  console.log(`gap: 1056-workgroup dependent dispatch ${(await time(p2, gpu.bindGroup('gap', p2, [y]), [1056, 1, 1])).toFixed(2)} µs`);
}

// ablations (lab only, wrong results): 'stream' replaces the nibble arithmetic by one op a word,
// 'nosm' the (scale, min) loads by a constant, 'xbcast' the x reads by one address for all lanes;
// 'wgN': N invocations a workgroup for the subgroup workers; 'uN': N units a lane a pass
type Run = [label: string, input: 'global' | 'norm', cap: number, ablate: string];
async function matvecRuns(m: Mat, runs: Run[]): Promise<void> {
  const group = 64, units = m.cols / 32, groups = m.cols / group;
  // one copy of the matrix: rotating dispatches over several copies (to keep small matrices out of
  // L2) measured erratic, several times slower even for matrices larger than L2
  const Q = randomBuffer('Q', m.rows * units * 16, randomWords);
  const SM = randomBuffer('SM', m.rows * groups * 4, scaleMins);
  const X = randomBuffer('X', Math.ceil(m.cols / 256) * 256 * 4, f32s(-1, 1));
  const NW = randomBuffer('NW', m.cols * 4, f32s(0.5, 1.5));
  const Y = randomBuffer('Y', Math.ceil(m.rows / 256) * 256 * 4, () => undefined);
  const bytes = Q.size + SM.size;
  const report = (label: string, us: number) => console.log(`matvec ${m.name} (${m.rows}x${m.cols}, ${(bytes / 1e6).toFixed(1)} MB) ${label}: ${us.toFixed(2)} µs, ${(bytes / us / 1e3).toFixed(0)} GB/s`);
  const heads = { numHeads: 1, numKvHeads: 1, headDim: 2, rotaryDim: 2 };
  for (const [label, input, cap, ablate] of runs) {
    if (input === 'norm' && m.cols * 4 > 40000) continue;
    const wgMatch = /wg(\d+)/.exec(ablate);
    const unrollMatch = /\bu(\d+)/.exec(ablate);
    const s: FusedMatvecShape = {
      encoding: 'q4', rows: m.rows, cols: m.cols, units, group, input, epilogue: 'store', bias: false, eps: 1e-5, ...heads, workgroups: 0,
      ...(wgMatch ? { workerWorkgroup: Number(wgMatch[1]) } : {}),
      ...(unrollMatch ? { unroll: Number(unrollMatch[1]) } : {}),
    };
    s.workgroups = Math.min(cap, fusedBlocks(s));
    let code = fusedMatvecWgsl(s, f);
    if (ablate.includes('stream')) code = code.replace(/fn q4w\(w: u32, xl: vec4<f32>, xh: vec4<f32>\) -> f32 \{[^}]*\}/, 'fn q4w(w: u32, xl: vec4<f32>, xh: vec4<f32>) -> f32 { return bitcast<f32>(w & 0x3FFFFFFFu) * xl.x; }');
    // every lane reads the same x (a broadcast): what the lane-strided x reads cost
    if (ablate.includes('xbcast')) code = code.replace(/(xs|X)\[8u \* k(\d+) \+ (\d)u\]/g, '$1[$3u]');
    if (ablate.includes('nosm')) code = code.replace(/SM\[[^\]]*\]/g, '(0x1A25A51Fu | (SM[0] & 0u))');
    const p = pipe('old', code);
    const io: Record<string, GPUBuffer> = { Q, SM, X, NW, Y };
    const bg = gpu.bindGroup('lab', p, fusedMatvecBindings(s).map((n) => io[n]!));
    report(`${label}, ${s.workgroups} workgroups (cap ${cap})`, await time(p, bg, [s.workgroups, 1, 1]));
  }
  for (const b of [Q, SM, X, NW, Y]) b.destroy();
}

if (only.has('matvec')) {
  // global x (workgroup blocks) at several grid sizes, the norm prologue (subgroup workers), ablations
  const runs: Run[] = [
    ['global', 'global', 1024, ''], ['global', 'global', 2048, ''], ['norm', 'norm', 264, ''], ['norm', 'norm', 528, ''],
    ['global stream', 'global', 1024, 'stream'], ['global nosm', 'global', 1024, 'nosm'], ['norm stream', 'norm', 264, 'stream'], ['norm nosm', 'norm', 264, 'nosm'],
    ['global xbcast', 'global', 1024, 'xbcast'], ['norm xbcast', 'norm', 264, 'xbcast'],
    ['norm wg512', 'norm', 132, 'wg512'], ['norm wg512', 'norm', 264, 'wg512'], ['norm wg1024', 'norm', 132, 'wg1024'], ['norm wg128', 'norm', 528, 'wg128'],
  ];
  for (const shape of values.shapes!.split(',')) for (const m of matsOf(shape)) await matvecRuns(m, runs);
}

if (only.has('grids')) {
  // grid sizes against the rounds of row groups (the last round's idle workers) and units a lane a pass
  const norm = [132, 198, 264, 280, 396, 528, 560, 792, 1056, 1120].map((w): Run => ['norm', 'norm', w, '']);
  const unrolled = [264, 528].map((w): Run => ['norm u2', 'norm', w, 'u2']);
  const global = [462, 640, 924, 1024, 1280, 2048, 2560].map((w): Run => ['global', 'global', w, '']);
  for (const shape of values.shapes!.split(',')) for (const m of matsOf(shape)) await matvecRuns(m, [...norm, ...unrolled, ...global]);
}

if (only.has('roofline')) {
  const probe = await measureReadBandwidth(gpu);
  console.log(`roofline: read probe ${probe.medianGbps.toFixed(0)} GB/s (1 GiB, median of ${probe.samplesGbps.length})`);
  const ctx = 512;
  for (const shape of values.shapes!.split(',')) {
    const c = BENCH_SHAPES[shape]!;
    const q4Bytes = (rows: number, cols: number) => rows * (cols / 32) * 16 + rows * (cols / 64) * 4;
    const align = (n: number) => Math.ceil(n / 256) * 256;
    const [qkv, o, gu, down] = matsOf(shape).map((m) => q4Bytes(m.rows, m.cols));
    const lm = q4Bytes(c.vocab, c.hidden);
    const kv = 2 * ctx * c.kvHeads * c.headDim * 4;
    const parts = [qkv!, o!, gu!, down!];
    const offsets = parts.map((_, i) => parts.slice(0, i).reduce((a, b) => a + align(b), 0));
    const layerBytes = offsets[3]! + align(down!);
    const weightBytes = c.layers * (qkv! + o! + gu! + down!) + lm;
    const make = (label: string, bytes: number) => {
      const b = gpu.createBuffer(label, bytes, GPUBufferUsage.STORAGE);
      const p = pipe(`fill${bytes}`, fillKernel(Math.floor(bytes / 4)));
      const e = device.createCommandEncoder();
      const pass = e.beginComputePass();
      pass.setPipeline(p);
      pass.setBindGroup(0, gpu.bindGroup('fill', p, [b]));
      pass.dispatchWorkgroups(4096);
      pass.end();
      device.queue.submit([e.finish()]);
      return b;
    };
    const layers = Array.from({ length: c.layers }, (_, l) => ({ w: make(`layer${l}`, layerBytes), kv: make(`kv${l}`, kv) }));
    const lmBuf = make('lm', lm);
    const sink = gpu.createBuffer('sink', 64 << 20, GPUBufferUsage.STORAGE);
    const tiny = make('tiny', 4096);
    await device.queue.onSubmittedWorkDone();
    gpu.check();
    // one read dispatch: its pipeline (by size and vec4s an invocation), grid, and a bind group per range
    const reader = (bytes: number, perThread: number) => {
      const vec4s = Math.floor(bytes / 16);
      const wgs = Math.max(1, Math.ceil(vec4s / 256 / perThread));
      return { p: pipe(`read${vec4s}x${perThread}`, readKernel(vec4s, wgs * 256)), wgs };
    };
    type Step = { p: GPUComputePipeline; bg: GPUBindGroup; wgs: number };
    const step = (buffer: GPUBuffer, offset: number, bytes: number, perThread: number): Step => {
      const r = reader(bytes, perThread);
      const bg = device.createBindGroup({
        layout: r.p.getBindGroupLayout(0),
        entries: [{ binding: 0, resource: { buffer, offset, size: align(bytes) } }, { binding: 1, resource: { buffer: sink } }],
      });
      return { ...r, bg };
    };
    const variants: Record<string, (l: (typeof layers)[number], pt: number) => Step[]> = {
      // as built: qkv | attention | combine | o | gate/up | down
      '6 a layer': (l, pt) => [step(l.w, offsets[0]!, qkv!, pt), step(l.kv, 0, kv, pt), step(tiny, 0, 64, 1), step(l.w, offsets[1]!, o!, pt), step(l.w, offsets[2]!, gu!, pt), step(l.w, offsets[3]!, down!, pt)],
      '5 a layer (no combine)': (l, pt) => [step(l.w, offsets[0]!, qkv!, pt), step(l.kv, 0, kv, pt), step(l.w, offsets[1]!, o!, pt), step(l.w, offsets[2]!, gu!, pt), step(l.w, offsets[3]!, down!, pt)],
      '2 a layer (all weights in one, KV)': (l, pt) => [step(l.w, 0, layerBytes, pt), step(l.kv, 0, kv, pt)],
      '1 a layer (weights only, no KV)': (l, pt) => [step(l.w, 0, layerBytes, pt)],
    };
    const tokens = 10;
    for (const [name, build] of Object.entries(variants)) {
      for (const pt of [4, 8, 16, 32]) {
        const chain = [...layers.flatMap((l) => build(l, pt)), step(lmBuf, 0, lm, pt), step(tiny, 0, 64, 1), step(tiny, 0, 64, 1)];
        const samples: number[] = [];
        for (let r = 0; r < 6; r++) {
          const e = device.createCommandEncoder();
          for (let t = 0; t < tokens; t++) {
            const pass = e.beginComputePass();
            for (const s of chain) { pass.setPipeline(s.p); pass.setBindGroup(0, s.bg); pass.dispatchWorkgroups(s.wgs); }
            pass.end();
          }
          const t0 = performance.now();
          device.queue.submit([e.finish()]);
          await device.queue.onSubmittedWorkDone();
          if (r > 0) samples.push((performance.now() - t0) / tokens);
        }
        gpu.check();
        samples.sort((a, b) => a - b);
        const ms = samples[2]!;
        const share = (weightBytes / (ms / 1000)) / 1e9 / probe.medianGbps;
        console.log(`roofline ${shape} ctx ${ctx}, ${name}, ${pt} vec4s an invocation: ${chain.length} dispatches, ${ms.toFixed(3)} ms/token, ${(1000 / ms).toFixed(1)} tok/s, weights ${(weightBytes / 1e9).toFixed(3)} GB -> ${(100 * share).toFixed(1)}% of the probe`);
      }
    }
    for (const l of layers) { l.w.destroy(); l.kv.destroy(); }
    for (const b of [lmBuf, sink, tiny]) b.destroy();
  }
}

if (only.has('attention')) {
  // decode attention at 512 and 4096 keys with the f16 cache (as the decoder runs it): the earlier
  // grouped kernel (a lane a key row) + combine against the chunked kernel (every load first) + merge,
  // and one pure-read dispatch of the same K and V bytes (the floor of one dispatch)
  const probe = await measureReadBandwidth(gpu);
  console.log(`attention: read probe ${probe.medianGbps.toFixed(0)} GB/s`);
  const storages: KvLayout['storage'][] = gpu.features.shaderF16 ? ['f16'] : ['f16-packed'];
  for (const shape of values.shapes!.split(',')) {
    const c = BENCH_SHAPES[shape]!;
    for (const keys of [512, 4096]) {
      const ctx = keys;
      const kvDim = c.kvHeads * c.headDim;
      const s = { numHeads: c.heads, numKvHeads: c.kvHeads, headDim: c.headDim, slidingWindow: null, contextLength: ctx, rotaryDim: c.headDim };
      const qkv = randomBuffer('qkv', (c.heads + 2 * c.kvHeads) * c.headDim * 4, f32s(-1, 1));
      const halves = (u: Uint32Array) => { for (let i = 0; i < u.length; i++) u[i] = f32ToF16(((rnd() >>> 8) / 2 ** 24) * 2 - 1) | (f32ToF16(((rnd() >>> 8) / 2 ** 24) * 2 - 1) << 16); };
      const K = randomBuffer('K', ctx * kvDim * 2, halves);
      const V = randomBuffer('V', ctx * kvDim * 2, halves);
      const out = randomBuffer('out', c.heads * c.headDim * 4, () => undefined);
      const step = randomBuffer('step', 64, (u) => { u[0] = 1; u[1] = ctx - 1; u[2] = 0; u[3] = ctx - 1; });
      const bytes = 2 * ctx * kvDim * 2;
      const sink = randomBuffer('sink', 1 << 22, () => undefined);
      for (const pt of [4]) {
        const vec4s = bytes / 2 / 16, wgs = Math.max(1, Math.ceil(vec4s / 256 / pt));
        const p = pipe('kvread', readKernel(vec4s, wgs * 256));
        const t = await time(p, gpu.bindGroup('kvread', p, [K, sink]), [wgs, 1, 1]);
        const t2 = await time(p, gpu.bindGroup('kvread', p, [V, sink]), [wgs, 1, 1]);
        console.log(`attention ${shape} ${keys} keys: pure read of K, V (${(bytes / 1e6).toFixed(2)} MB, ${pt} vec4s an invocation): ${t.toFixed(2)} + ${t2.toFixed(2)} µs; bytes at the probe ${(bytes / probe.medianGbps / 1e3).toFixed(2)} µs`);
      }
      for (const storage of storages) {
        const kvl: KvLayout = { storage, contextLength: ctx, rowsAt: 2, kvBuffer: -1 };
        const ss: SplitAttentionShape = { ...s, splits: attentionSplits(s) };
        const part = randomBuffer('part', c.heads * ss.splits * (c.headDim + 2) * 4, () => undefined);
        const p1 = pipe('gqa', decodeAttentionPartGqaWgsl(ss, kvl));
        const p2 = pipe('comb', decodeCombineWgsl(ss));
        const t1 = await time(p1, gpu.bindGroup('gqa', p1, [qkv, K, V, part, step]), [c.kvHeads * ss.splits, 1, 1]);
        const t2 = await time(p2, gpu.bindGroup('comb', p2, [part, out]), [c.heads, 1, 1]);
        const ref = await readBack(out, c.heads * c.headDim);
        console.log(`attention ${shape} ${keys} keys ${storage}: split-gqa (${ss.splits} chunks) ${t1.toFixed(2)} + combine ${t2.toFixed(2)} = ${(t1 + t2).toFixed(2)} µs`);
        part.destroy();
        const base = chunkedAttentionConfig(s, device.limits)!;
        for (const config of [base, { wg: 128, chunk: 128, lanesPerKey: 4 }]) {
          const cs = { ...s, splits: chunkedAttentionSplits(s, config), config };
          const cpart = randomBuffer('cpart', chunkedAttentionPartFloats(cs) * 4, () => undefined);
          const q1 = pipe('chunks', decodeAttentionChunksWgsl(cs, kvl));
          const q2 = pipe('merge', decodeAttentionMergeWgsl(cs));
          const u1 = await time(q1, gpu.bindGroup('chunks', q1, [qkv, K, V, cpart, step]), [c.kvHeads * cs.splits, 1, 1]);
          const u2 = await time(q2, gpu.bindGroup('merge', q2, [cpart, out]), [c.heads, 1, 1]);
          const diff = worst(await readBack(out, c.heads * c.headDim), ref).toExponential(2);
          console.log(`attention ${shape} ${keys} keys ${storage}: chunks (wg ${config.wg}, ${config.chunk} keys, ${cs.splits} chunks) ${u1.toFixed(2)} + merge ${u2.toFixed(2)} = ${(u1 + u2).toFixed(2)} µs (${((u1 + u2) / (bytes / probe.medianGbps / 1e3)).toFixed(2)}x the bytes at the probe; worst relative difference to split-gqa ${diff})`);
          cpart.destroy();
        }
      }
      for (const b of [qkv, K, V, out, step, sink]) b.destroy();
    }
  }
}
gpu.destroy();
process.exit(0);
