/**
 * Each WebGPU kernel against the CPU backend's op (src/backends/cpu/ops.ts) on random inputs with odd
 * sizes (hidden 127, MLP widths not a multiple of 64, one-token and long prompts), with and without
 * subgroups. Failures print the worst element (assertClose).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { addInPlace, applyRope, attention, rmsnorm, ropeTables, swiglu } from '../../../src/backends/cpu/ops.js';
import { attentionOp, attentionTensorCoreOp, attentionTiledOp, embeddingOp, matmulOp, rmsnormOp, ropeKvOp, swigluOp } from '../../../src/backends/webgpu/ops.js';
import {
  attentionSplits, splitAttentionFits, decodeAttentionPartGqaWgsl, decodeAttentionPartWgsl, decodeCombineWgsl, chunkedAttentionConfig, chunkedAttentionSplits,
  chunkedAttentionPartFloats, chunkedAttentionWorkgroupBytes, decodeAttentionChunksWgsl, decodeAttentionMergeWgsl, decodeArgmaxWgsl, mergeLayout,
} from '../../../src/backends/webgpu/kernels/fused-attention.js';
import { kvDefines, type KvLayout, type KvStorage } from '../../../src/backends/webgpu/kernels/kv.js';
import { uploadDense } from '../../../src/backends/webgpu/weights.js';
import { f32ToBf16, f32ToF16, f16ToF32 } from '../../../src/format/dtype.js';
import type { ModelConfig } from '../../../src/model/config.js';
import { DenseTensor } from '../../../src/model/tensor.js';
import { assertClose, compare, rng } from '../../helpers.js';
import { featureVariants, read, run, SKIP_GPU, stepBuffer, storage, testGpu, zeros } from './gpu.js';
import { kvStorages, poolBuffer, readPool, roundF16, stepWithRows } from './kv.js';

/**
 * Norm-relative tolerance of the tensor-core prompt attention (kernels/attention-tensor-core.ts): q, k,
 * v and the probabilities rounded to f16 (2^-11 relative each), scores and sums in f32.
 */
const TC_ATTENTION_TOLERANCE = 5e-3;

function randomArray(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => (r() * 2 - 1) * scale);
}

/** A DenseTensor whose values are exactly representable in `dtype` (as a checkpoint of that dtype would be). */
function randomDense(rows: number, cols: number, dtype: 'F32' | 'BF16' | 'F16', seed: number): DenseTensor {
  const data = randomArray(rows * cols, seed);
  if (dtype === 'BF16') for (let i = 0; i < data.length; i++) data[i] = new Float32Array(new Uint32Array([f32ToBf16(data[i]!) << 16]).buffer)[0]!;
  if (dtype === 'F16') for (let i = 0; i < data.length; i++) data[i] = f16ToF32(f32ToF16(data[i]!));
  return new DenseTensor(rows, cols, data, dtype);
}

function config(over: Partial<ModelConfig>): ModelConfig {
  return {
    architecture: 'LlamaForCausalLM', hiddenSize: 64, intermediateSize: 96, numLayers: 1, numHeads: 4, numKvHeads: 2, headDim: 16,
    rotaryDim: 16, vocabSize: 100, rmsNormEps: 1e-5, ropeTheta: 10000, ropeScaling: { type: 'default' }, maxPositionEmbeddings: 4096,
    tieWordEmbeddings: false, slidingWindow: null, attentionBias: false, bosTokenId: null, eosTokenIds: [], ...over,
  };
}

const variants = SKIP_GPU ? [] : await featureVariants();

for (const { name, options } of variants) {
  test(`webgpu kernels (${name}): dense matvec and tiled matmul vs DenseTensor.matmul`, async () => {
    const gpu = await testGpu({ ...options, maxBindingBytes: 65536 }); // small: the 300-row matrix is split
    // [dtype, T, rows, cols, residual]: matvec (T = 1) and tiled (T > 1); odd sizes; the 300-row one is split
    const cases: ['F32' | 'BF16' | 'F16', number, number, number, boolean][] = [
      ['F32', 1, 127, 127, false], ['F32', 70, 127, 130, true], ['F32', 3, 300, 127, false],
      ['BF16', 1, 200, 96, true], ['BF16', 130, 64, 33, false], ['BF16', 1, 5, 9, false],
      ['F16', 1, 127, 300, false], ['F16', 17, 127, 300, true],
    ];
    let seed = 1;
    for (const [dtype, T, rows, cols, residual] of cases) {
      const w = randomDense(rows, cols, dtype, seed++);
      const m = uploadDense(gpu, w, 'w');
      const x = randomArray(T * cols, seed++);
      const bias = randomArray(rows + 3, seed++);
      const yStride = rows + 5, yOffset = 3;
      const y0 = randomArray(T * yStride, seed++);
      const want = Float32Array.from(y0);
      const prod = new Float32Array(T * yStride);
      w.matmul(x, T, prod, yStride, yOffset);
      for (let t = 0; t < T; t++) {
        for (let r = 0; r < rows; r++) {
          const o = t * yStride + yOffset + r;
          want[o] = prod[o]! + bias[yOffset + r]! + (residual ? y0[o]! : 0);
        }
      }
      const yBuf = storage(gpu, y0);
      const step = stepBuffer(gpu, T, 0);
      const io = { x: storage(gpu, x), y: yBuf, yStride, yOffset, bias: storage(gpu, bias), residual, step };
      await run(gpu, matmulOp(gpu, m, io, T === 1 ? 'matvec' : 'tiled', T), T);
      // the prefill's f16 subgroup-matrix tiles where the device has them: matmul-tiled.test.ts's tolerance
      const tol = T > 1 && gpu.features.subgroupMatrixF16 ? 3e-3 : 1e-6;
      assertClose(await read(gpu, yBuf, T * yStride), want, tol, `${dtype} T=${T} [${rows}x${cols}] residual=${residual} (${m.segments.length} segments)`);
    }
  });

  test(`webgpu kernels (${name}): rmsnorm (all rows, last row) vs rmsnorm`, async () => {
    const gpu = await testGpu(options);
    for (const [T, H] of [[1, 127], [5, 384], [33, 1000]] as const) {
      const x = randomArray(T * H, 10 + H, 3);
      const w = randomArray(H, 20 + H);
      const want = new Float32Array(T * H);
      rmsnorm(x, w, 1e-5, T, want);
      const out = zeros(gpu, T * H);
      const step = stepBuffer(gpu, T, 0);
      const xb = storage(gpu, x), wb = storage(gpu, w);
      await run(gpu, [rmsnormOp(gpu, { hidden: H, eps: 1e-5, mode: 'all' }, T, xb, wb, out, step)], T);
      assertClose(await read(gpu, out, T * H), want, 1e-6, `rmsnorm all T=${T} H=${H}`);
      await run(gpu, [rmsnormOp(gpu, { hidden: H, eps: 1e-5, mode: 'last' }, T, xb, wb, out, step)], T);
      assertClose(await read(gpu, out, H), want.subarray((T - 1) * H), 1e-6, `rmsnorm last T=${T} H=${H}`);
      // with the f16 copy the tensor-core products read (columns padded to a stage)
      const cols = Math.ceil(H / 64) * 64;
      const x16 = zeros(gpu, (T * cols) / 2);
      await run(gpu, [rmsnormOp(gpu, { hidden: H, eps: 1e-5, mode: 'all', f16Cols: cols }, T, xb, wb, out, step, x16)], T);
      const got = await read(gpu, out, T * H);
      assertClose(got, want, 1e-6, `rmsnorm all (f16 too) T=${T} H=${H}`);
      assertF16Copy(await read(gpu, x16, (T * cols) / 2), got, T, H, cols, `rmsnorm f16 T=${T} H=${H}`);
    }
  });

  test(`webgpu kernels (${name}): rope + KV cache append and attention over slots (f32, f16, packed f16) vs applyRope and attention`, async () => {
    const gpu = await testGpu(options);
    // rows: one sequence's prompt (consecutive positions of one slot), or a batch (rows of different slots)
    const prompt = (slot: number, pos0: number, T: number) => Array.from({ length: T }, (_, t) => ({ slot, pos: pos0 + t }));
    const cases: { c: ModelConfig; rows: { slot: number; pos: number }[] }[] = [
      { c: config({}), rows: prompt(0, 0, 1) },
      { c: config({}), rows: prompt(1, 0, 77) }, // more keys than one 64-key block
      { c: config({ numHeads: 6, numKvHeads: 2, headDim: 24, rotaryDim: 12 }), rows: prompt(2, 5, 3) }, // partial rotary
      { c: config({ slidingWindow: 16, ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 64 } }), rows: prompt(1, 30, 20) },
      { c: config({ numHeads: 2, numKvHeads: 2, headDim: 128, rotaryDim: 128 }), rows: prompt(0, 130, 1) }, // head dim > 64 threads, long cache
      { c: config({ numHeads: 8, numKvHeads: 2, headDim: 64, rotaryDim: 64 }), rows: [{ slot: 2, pos: 90 }, { slot: 0, pos: 3 }, { slot: 1, pos: 0 }] }, // a batch
    ];
    const slots = 3;
    let seed = 100;
    for (const { c, rows } of cases) {
      const T = rows.length;
      const ctx = Math.max(...rows.map((r) => r.pos)) + 4;
      const qDim = c.numHeads * c.headDim, kvDim = c.numKvHeads * c.headDim, stride = qDim + 2 * kvDim;
      const qkv = randomArray(T * stride, seed++);
      const kHist = randomArray(slots * ctx * kvDim, seed++), vHist = randomArray(slots * ctx * kvDim, seed++); // earlier positions: random history
      const { cos, sin } = ropeTables(c, ctx);
      // CPU: rotate q and k of each row at its position, write k and v into its slot, attend
      const q = Float32Array.from(qkv);
      rows.forEach((r, t) => {
        const row = q.subarray(t * stride, (t + 1) * stride);
        applyRope(row, 1, stride, 0, c.numHeads, c.headDim, c.rotaryDim, r.pos, cos, sin);
        applyRope(row, 1, stride, qDim, c.numKvHeads, c.headDim, c.rotaryDim, r.pos, cos, sin);
      });
      for (const kv of kvStorages(gpu)) {
        const f16 = kv !== 'f32';
        const kWant = f16 ? roundF16(kHist) : Float32Array.from(kHist), vWant = f16 ? roundF16(vHist) : Float32Array.from(vHist);
        rows.forEach((r, t) => {
          const k = q.subarray(t * stride + qDim, t * stride + qDim + kvDim), v = q.subarray(t * stride + qDim + kvDim, (t + 1) * stride);
          kWant.set(f16 ? roundF16(k) : k, (r.slot * ctx + r.pos) * kvDim);
          vWant.set(f16 ? roundF16(v) : v, (r.slot * ctx + r.pos) * kvDim);
        });
        const attWant = new Float32Array(T * qDim);
        rows.forEach((r, t) => {
          const cache = (a: Float32Array) => a.subarray(r.slot * ctx * kvDim, (r.slot + 1) * ctx * kvDim);
          attention(q.subarray(t * stride, (t + 1) * stride), stride, 1, r.pos, cache(kWant), cache(vWant), c, attWant.subarray(t * qDim, (t + 1) * qDim), new Float32Array(ctx));
        });

        const layout: KvLayout = { storage: kv, contextLength: ctx, rowsAt: 8 + T, kvBuffer: -1 };
        const qkvB = storage(gpu, qkv), out = zeros(gpu, T * qDim);
        const kB = poolBuffer(gpu, kHist, kvDim, c.headDim, c.rotaryDim, kv, true), vB = poolBuffer(gpu, vHist, kvDim, c.headDim, c.rotaryDim, kv, false);
        const step = stepWithRows(gpu, T, layout.rowsAt, rows);
        const shape = { numHeads: c.numHeads, numKvHeads: c.numKvHeads, headDim: c.headDim };
        await run(gpu, [
          ropeKvOp(gpu, { ...shape, rotaryDim: c.rotaryDim }, layout, qkvB, storage(gpu, cos), storage(gpu, sin), kB, vB, step),
          attentionOp(gpu, { ...shape, slidingWindow: c.slidingWindow, rotaryDim: c.rotaryDim }, layout, qkvB, kB, vB, out, step),
        ], T);
        const what = `${kv} cache, heads ${c.numHeads}/${c.numKvHeads}x${c.headDim} rot ${c.rotaryDim} window ${c.slidingWindow} rows ${JSON.stringify(rows.length > 4 ? [rows[0], `x${T}`] : rows)}`;
        const qGot = await read(gpu, qkvB, T * stride);
        for (let t = 0; t < T; t++) assertClose(qGot.subarray(t * stride, t * stride + qDim), q.subarray(t * stride, t * stride + qDim), 1e-6, `rope q ${what}`);
        // f16: the GPU's rotated k may round to the other neighbouring f16 (one f16 step, 2^-11 relative)
        assertClose(await readPool(gpu, kB, slots * ctx * kvDim, kvDim, c.headDim, c.rotaryDim, kv, true), kWant, f16 ? 1e-3 : 1e-6, `rope k cache ${what}`);
        assertClose(await readPool(gpu, vB, slots * ctx * kvDim, kvDim, c.headDim, c.rotaryDim, kv, false), vWant, 0, `v cache ${what}`);
        assertClose(await read(gpu, out, T * qDim), attWant, f16 ? 1e-3 : 1e-5, `attention ${what}`);
      }
    }
  });

  test(`webgpu kernels (${name}): prompt attention in tiles of queries x keys (causal, windows cutting tiles, f32 and f16 caches) vs attention`, async () => {
    const gpu = await testGpu(options);
    // [config, slot, pos0, T, storages]: head dims 64/96/128, GQA 1-4, windows cutting key tiles, a
    // partial last query tile, 4000 keys. Few variants: lavapipe's LLVM takes minutes to compile each.
    const packed: KvStorage[] = ['f16-packed'];
    const cases: [ModelConfig, number, number, number, KvStorage[]][] = [
      [config({ numHeads: 4, numKvHeads: 2, headDim: 64, rotaryDim: 64 }), 1, 0, 77, ['f32', 'f16-packed']],
      [config({ numHeads: 8, numKvHeads: 2, headDim: 128, rotaryDim: 128, slidingWindow: 21 }), 0, 30, 40, packed],
      [config({ numHeads: 6, numKvHeads: 6, headDim: 96, rotaryDim: 32 }), 2, 5, 16, gpu.features.shaderF16 && gpu.subgroups ? ['f16'] : packed],
      [config({ numHeads: 4, numKvHeads: 1, headDim: 64, rotaryDim: 64, slidingWindow: 100 }), 1, 3984, 16, ['f32']],
    ];
    const slots = 3;
    let seed = 700;
    for (const [c, slot, pos0, T, storages] of cases) {
      const ctx = pos0 + T + 3;
      const qDim = c.numHeads * c.headDim, kvDim = c.numKvHeads * c.headDim, stride = qDim + 2 * kvDim;
      const qkv = randomArray(T * stride, seed++, 2);
      const kHist = randomArray(slots * ctx * kvDim, seed++, 2), vHist = randomArray(slots * ctx * kvDim, seed++);
      const shape = { numHeads: c.numHeads, numKvHeads: c.numKvHeads, headDim: c.headDim, slidingWindow: c.slidingWindow, rotaryDim: c.rotaryDim };
      for (const kv of storages) {
        const f16 = kv !== 'f32';
        const kc = f16 ? roundF16(kHist) : kHist, vc = f16 ? roundF16(vHist) : vHist;
        const cache = (x: Float32Array) => x.subarray(slot * ctx * kvDim, (slot + 1) * ctx * kvDim);
        const want = new Float32Array(T * qDim);
        attention(qkv, stride, T, pos0, cache(kc), cache(vc), c, want, new Float32Array(ctx));
        const layout: KvLayout = { storage: kv, contextLength: ctx, rowsAt: 8 + T, kvBuffer: -1 };
        const out = zeros(gpu, T * qDim);
        const d = attentionTiledOp(gpu, shape, layout, storage(gpu, qkv), poolBuffer(gpu, kHist, kvDim, c.headDim, c.rotaryDim, kv, true), poolBuffer(gpu, vHist, kvDim, c.headDim, c.rotaryDim, kv, false), out, stepWithRows(gpu, T, layout.rowsAt, Array.from({ length: T }, (_, t) => ({ slot, pos: pos0 + t }))));
        assert.ok(d, `the tiled kernel takes head dim ${c.headDim}`);
        await run(gpu, [d], T);
        const what = `(${kv} cache) heads ${c.numHeads}/${c.numKvHeads}x${c.headDim} window ${c.slidingWindow} slot ${slot} pos0 ${pos0} T ${T}`;
        assertClose(await read(gpu, out, T * qDim), want, f16 ? 1e-4 : 1e-5, `tiled attention ${what}`);
        // the tensor-core kernel where the device self-tested it (f16 q, k, v and probabilities): the
        // context's own split over keys, and splits of one key tile each (many splits, then merged)
        for (const splitKeys of [undefined, 32]) {
          const step = stepWithRows(gpu, T, layout.rowsAt, Array.from({ length: T }, (_, t) => ({ slot, pos: pos0 + t })));
          const tcOut = zeros(gpu, T * qDim);
          const tc = attentionTensorCoreOp(gpu, shape, layout, storage(gpu, qkv), poolBuffer(gpu, kHist, kvDim, c.headDim, c.rotaryDim, kv, true), poolBuffer(gpu, vHist, kvDim, c.headDim, c.rotaryDim, kv, false), tcOut, step, T, splitKeys);
          if (!tc) break;
          await run(gpu, tc, T);
          const got = await read(gpu, tcOut, T * qDim);
          const how = `${what}, ${tc.length > 1 ? `split, ${tc[0]!.workgroups(T)[2]} splits` : 'one split'}`;
          console.log(`tensor-core attention ${how}: relative difference ${compare(got, want).rel.toExponential(2)}`);
          assertClose(got, want, TC_ATTENTION_TOLERANCE, `tensor-core attention ${how}`);
        }
      }
    }
  });

  test(`webgpu kernels (${name}): decode attention split into chunks of keys (per head and grouped), then combined, over slots (f32, f16, packed f16) vs attention`, async () => {
    const gpu = await testGpu(options);
    const f = { subgroups: gpu.subgroups };
    // [config, context length, rows (slot, position)]: more chunks than keys early, a window cutting
    // chunks, head dims 32/64/96/128, 4000 keys, a batch of rows of different slots
    const cases: [ModelConfig, number, { slot: number; pos: number }[]][] = [
      [config({}), 300, [{ slot: 0, pos: 0 }]], [config({}), 300, [{ slot: 1, pos: 250 }]], [config({ slidingWindow: 100 }), 300, [{ slot: 2, pos: 250 }]],
      [config({ numHeads: 8, numKvHeads: 2, headDim: 128, rotaryDim: 128 }), 700, [{ slot: 1, pos: 650 }]],
      [config({ numHeads: 6, numKvHeads: 3, headDim: 32, rotaryDim: 32 }), 4000, [{ slot: 0, pos: 3999 }]],
      [config({ numHeads: 6, numKvHeads: 2, headDim: 64, rotaryDim: 64 }), 500, [{ slot: 2, pos: 480 }, { slot: 0, pos: 17 }, { slot: 1, pos: 499 }]],
    ];
    // head dim 96 (24 vec4 lanes, not a power of two) is not the split kernels' shape: the decoder takes the row kernel there
    assert.equal(splitAttentionFits({ numHeads: 12, numKvHeads: 4, headDim: 96, slidingWindow: null, contextLength: 333 }), false);
    const slots = 3;
    let seed = 900;
    for (const [index, [c, ctx, rows]] of cases.entries()) {
      const B = rows.length;
      const qDim = c.numHeads * c.headDim, kvDim = c.numKvHeads * c.headDim, stride = qDim + 2 * kvDim;
      const qkv = randomArray(B * stride, seed++, 2), kHist = randomArray(slots * ctx * kvDim, seed++, 2), vHist = randomArray(slots * ctx * kvDim, seed++);
      const shape = { numHeads: c.numHeads, numKvHeads: c.numKvHeads, headDim: c.headDim, slidingWindow: c.slidingWindow, contextLength: ctx, rotaryDim: c.rotaryDim };
      const s = { ...shape, splits: attentionSplits(shape) };
      assert.ok(s.splits > 1, 'each case runs more than one chunk');
      // native f16 loads on one case (lavapipe compiles each variant slowly)
      for (const kv of kvStorages(gpu).filter((k) => k !== 'f16' || index === 3)) {
        const f16 = kv !== 'f32';
        const kc = f16 ? roundF16(kHist) : kHist, vc = f16 ? roundF16(vHist) : vHist;
        const want = new Float32Array(B * qDim);
        rows.forEach((r, t) => {
          const cache = (a: Float32Array) => a.subarray(r.slot * ctx * kvDim, (r.slot + 1) * ctx * kvDim);
          attention(qkv.subarray(t * stride, (t + 1) * stride), stride, 1, r.pos, cache(kc), cache(vc), c, want.subarray(t * qDim, (t + 1) * qDim), new Float32Array(ctx));
        });
        const layout: KvLayout = { storage: kv, contextLength: ctx, rowsAt: 9, kvBuffer: -1 };
        const defines = { ...s, slidingWindow: s.slidingWindow ?? 0, ...kvDefines(layout) };
        const kB = poolBuffer(gpu, kHist, kvDim, c.headDim, c.rotaryDim, kv, true), vB = poolBuffer(gpu, vHist, kvDim, c.headDim, c.rotaryDim, kv, false);
        // the per-head chunks, and the grouped-query chunks (a workgroup per KV head and chunk)
        for (const gqa of c.numHeads > c.numKvHeads ? [false, true] : [false]) {
          const part = zeros(gpu, B * c.numHeads * s.splits * (c.headDim + 2)), out = zeros(gpu, B * qDim);
          const p1 = gqa
            ? gpu.pipeline('test_part_gqa', defines, () => decodeAttentionPartGqaWgsl(s, layout))
            : gpu.pipeline('test_part', { ...defines, ...f }, () => decodeAttentionPartWgsl(s, layout, f));
          const p2 = gpu.pipeline('test_combine', defines, () => decodeCombineWgsl(s));
          const step = stepWithRows(gpu, 1, layout.rowsAt, rows);
          await run(gpu, [
            { label: 'part', pipeline: p1, bindGroup: gpu.bindGroup('part', p1, [storage(gpu, qkv), kB, vB, part, step]), workgroups: () => [(gqa ? c.numKvHeads : c.numHeads) * s.splits, B, 1] },
            { label: 'combine', pipeline: p2, bindGroup: gpu.bindGroup('combine', p2, [part, out]), workgroups: () => [c.numHeads, B, 1] },
          ], 1);
          assertClose(await read(gpu, out, B * qDim), want, f16 ? 1e-4 : 1e-5, `split attention (${kv} cache, ${s.splits} chunks${gqa ? ', grouped' : ''}) heads ${c.numHeads}/${c.numKvHeads}x${c.headDim} window ${c.slidingWindow} ctx ${ctx} rows ${JSON.stringify(rows)}`);
        }
      }
    }
  });

  test(`webgpu kernels (${name}): decode attention in chunks with every load issued first (the default), then merged, over slots (f32, f16, packed f16) vs attention`, async () => {
    const gpu = await testGpu(options);
    const f = { subgroups: gpu.subgroups };
    // [config, context length, rows (slot, position), default limits?]: fewer keys than chunks, a
    // window cutting chunks, head dims 32/64/96/128, one KV head a query head, 4 and 8 query heads a KV
    // head, 4000 keys (63 chunks), a batch of rows of different slots
    const cases: [ModelConfig, number, { slot: number; pos: number }[]][] = [
      [config({}), 300, [{ slot: 0, pos: 0 }]], [config({ slidingWindow: 100 }), 300, [{ slot: 2, pos: 250 }]],
      [config({ numHeads: 8, numKvHeads: 2, headDim: 128, rotaryDim: 128 }), 700, [{ slot: 1, pos: 650 }]],
      [config({ numHeads: 12, numKvHeads: 4, headDim: 96, rotaryDim: 96 }), 333, [{ slot: 1, pos: 300 }, { slot: 0, pos: 40 }]],
      [config({ numHeads: 4, numKvHeads: 4, headDim: 96, rotaryDim: 48 }), 200, [{ slot: 2, pos: 199 }]],
      [config({ numHeads: 6, numKvHeads: 3, headDim: 32, rotaryDim: 32 }), 4000, [{ slot: 0, pos: 3999 }]],
      [config({ numHeads: 16, numKvHeads: 2, headDim: 128, rotaryDim: 128 }), 150, [{ slot: 0, pos: 149 }]],
      [config({ numHeads: 6, numKvHeads: 2, headDim: 64, rotaryDim: 64 }), 500, [{ slot: 2, pos: 480 }, { slot: 0, pos: 17 }, { slot: 1, pos: 499 }]],
    ];
    const slots = 3;
    let seed = 1900;
    // the grouped cases also on a device with WebGPU's default limits (16 KiB of workgroup memory: 8 query heads a KV head take 64 invocations)
    const defaults = await testGpu({ ...options, limits: 'default' });
    const runs = [...cases.map((k, index) => ({ k, index, gpu })), ...[2, 6].map((index) => ({ k: cases[index]!, index: -1, gpu: defaults }))];
    for (const { k: [c, ctx, rows], index, gpu } of runs) {
      const B = rows.length;
      const qDim = c.numHeads * c.headDim, kvDim = c.numKvHeads * c.headDim, stride = qDim + 2 * kvDim;
      const qkv = randomArray(B * stride, seed++, 2), kHist = randomArray(slots * ctx * kvDim, seed++, 2), vHist = randomArray(slots * ctx * kvDim, seed++);
      const shape = { numHeads: c.numHeads, numKvHeads: c.numKvHeads, headDim: c.headDim, slidingWindow: c.slidingWindow, contextLength: ctx, rotaryDim: c.rotaryDim };
      const config_ = chunkedAttentionConfig(shape, gpu.device.limits);
      assert.ok(config_, `the chunked kernel takes heads ${c.numHeads}/${c.numKvHeads}x${c.headDim} within the device's limits`);
      assert.ok(chunkedAttentionWorkgroupBytes(shape, config_) <= gpu.device.limits.maxComputeWorkgroupStorageSize);
      const s = { ...shape, splits: chunkedAttentionSplits(shape, config_), config: config_ };
      assert.ok(s.splits > 1, 'each case runs more than one chunk');
      for (const kv of kvStorages(gpu).filter((k) => k !== 'f16' || index === 2)) {
        const f16 = kv !== 'f32';
        const kc = f16 ? roundF16(kHist) : kHist, vc = f16 ? roundF16(vHist) : vHist;
        const want = new Float32Array(B * qDim);
        rows.forEach((r, t) => {
          const cache = (a: Float32Array) => a.subarray(r.slot * ctx * kvDim, (r.slot + 1) * ctx * kvDim);
          attention(qkv.subarray(t * stride, (t + 1) * stride), stride, 1, r.pos, cache(kc), cache(vc), c, want.subarray(t * qDim, (t + 1) * qDim), new Float32Array(ctx));
        });
        const layout: KvLayout = { storage: kv, contextLength: ctx, rowsAt: 9, kvBuffer: -1 };
        const defines = { ...s, ...s.config, config: 0, slidingWindow: s.slidingWindow ?? 0, ...kvDefines(layout) };
        const kB = poolBuffer(gpu, kHist, kvDim, c.headDim, c.rotaryDim, kv, true), vB = poolBuffer(gpu, vHist, kvDim, c.headDim, c.rotaryDim, kv, false);
        const part = zeros(gpu, chunkedAttentionPartFloats(s, B)), out = zeros(gpu, B * qDim);
        const p1 = gpu.pipeline('test_chunks', defines, () => decodeAttentionChunksWgsl(s, layout));
        const step = stepWithRows(gpu, 1, layout.rowsAt, rows);
        // the merge as the decoder builds it (records unrolled, groups merged in shared memory where
        // several), and with one group of HD/4 lanes (more than 16 records a lane: the loop form)
        for (const lanes of index === 5 ? [256, c.headDim / 4] : [256]) {
          const merge = mergeLayout(s, lanes);
          const p2 = gpu.pipeline('test_merge', { ...defines, lanes }, () => decodeAttentionMergeWgsl(s, lanes));
          await run(gpu, [
            { label: 'chunks', pipeline: p1, bindGroup: gpu.bindGroup('chunks', p1, [storage(gpu, qkv), kB, vB, part, step]), workgroups: () => [c.numKvHeads * s.splits, B, 1] },
            { label: 'merge', pipeline: p2, bindGroup: gpu.bindGroup('merge', p2, [part, out]), workgroups: () => [c.numHeads, B, 1] },
          ], 1);
          assertClose(await read(gpu, out, B * qDim), want, f16 ? 1e-4 : 1e-5, `chunked attention (${index < 0 ? 'default limits, ' : ''}${kv} cache, ${s.splits} chunks of ${s.config.chunk}, ${s.config.wg} invocations; merge ${merge.nc} groups x ${merge.r} records) heads ${c.numHeads}/${c.numKvHeads}x${c.headDim} window ${c.slidingWindow} ctx ${ctx} rows ${JSON.stringify(rows)}`);
        }
      }
    }
  });

  test(`webgpu kernels (${name}): swiglu and embedding vs swiglu and readRow`, async () => {
    const gpu = await testGpu({ ...options, maxBindingBytes: 2048 }); // embedding table split into segments
    for (const [T, ffn] of [[1, 100], [7, 1000], [64, 33]] as const) {
      const gu = randomArray(T * 2 * ffn, ffn, 6);
      const want = new Float32Array(T * ffn);
      swiglu(gu, T, ffn, want);
      const out = zeros(gpu, T * ffn);
      await run(gpu, [swigluOp(gpu, ffn, T, storage(gpu, gu), out, stepBuffer(gpu, T, 0))], T);
      assertClose(await read(gpu, out, T * ffn), want, 1e-6, `swiglu T=${T} ffn=${ffn}`);
      const cols = Math.ceil(ffn / 64) * 64;
      const x16 = zeros(gpu, (T * cols) / 2), out2 = zeros(gpu, T * ffn);
      await run(gpu, [swigluOp(gpu, ffn, T, storage(gpu, gu), out2, stepBuffer(gpu, T, 0), x16)], T);
      const got = await read(gpu, out2, T * ffn);
      assertClose(got, want, 1e-6, `swiglu (f16 too) T=${T} ffn=${ffn}`);
      assertF16Copy(await read(gpu, x16, (T * cols) / 2), got, T, ffn, cols, `swiglu f16 T=${T} ffn=${ffn}`);
    }
    for (const dtype of ['F32', 'BF16', 'F16'] as const) {
      const vocab = 101, H = 127;
      const table = randomDense(vocab, H, dtype, 7);
      const m = uploadDense(gpu, table, 'embed');
      assert.ok(m.segments.length > 1, 'the table should be split at this binding size');
      const ids = [0, 100, 5, 5, 63, 64, 99];
      const want = new Float32Array(ids.length * H);
      ids.forEach((id, t) => table.readRow(id, want.subarray(t * H, (t + 1) * H)));
      const x = zeros(gpu, ids.length * H);
      await run(gpu, embeddingOp(gpu, m, H, ids.length, x, stepBuffer(gpu, ids.length, 0, ids)), ids.length);
      assertClose(await read(gpu, x, ids.length * H), want, 0, `embedding ${dtype}`);
    }
  });
}

/** x16 (T rows of `cols` f16, packed in pairs) holds each of T x n values rounded to f16 (within one f16 step), then zeros. */
function assertF16Copy(packed: Float32Array, want: Float32Array, T: number, n: number, cols: number, what: string): void {
  const halves = new Uint16Array(packed.buffer, packed.byteOffset, T * cols);
  for (let t = 0; t < T; t++) {
    for (let c = 0; c < cols; c++) {
      const got = f16ToF32(halves[t * cols + c]!);
      const w = c < n ? Math.max(-65504, Math.min(65504, want[t * n + c]!)) : 0;
      assert.ok(Math.abs(got - w) <= Math.abs(w) * 2 ** -10 + 2 ** -24, `${what}: row ${t} column ${c} is ${got}, want ${w} in f16`);
    }
  }
}

test('webgpu kernels: the fused residual add equals addInPlace', { skip: SKIP_GPU }, async () => {
  // the residual add lives in the matmul epilogue (y += W x); check it against addInPlace explicitly
  const gpu = await testGpu();
  const rows = 127, cols = 64, T = 2;
  const w = randomDense(rows, cols, 'F32', 3);
  const x = randomArray(T * cols, 4), y0 = randomArray(T * rows, 5);
  const prod = new Float32Array(T * rows);
  w.matmul(x, T, prod, rows, 0);
  const want = Float32Array.from(y0);
  addInPlace(want, prod, T * rows);
  const yb = storage(gpu, y0);
  await run(gpu, matmulOp(gpu, uploadDense(gpu, w, 'w'), { x: storage(gpu, x), y: yb, yStride: rows, yOffset: 0, bias: null, residual: true, step: stepBuffer(gpu, T, 0) }, 'tiled', T), T);
  assertClose(await read(gpu, yb, T * rows), want, gpu.features.subgroupMatrixF16 ? 3e-3 : 1e-6, 'residual add');
});

test('webgpu kernels: the fused decoder\'s argmax (8 loads a pass, then the tail) equals the CPU argmax, lowest index on ties', { skip: SKIP_GPU }, async () => {
  const gpu = await testGpu();
  const wg = Math.min(1024, gpu.device.limits.maxComputeInvocationsPerWorkgroup);
  // vocabularies below one pass, across the 8-load passes and the tail, and one not a multiple of 4
  for (const vocab of [7, 4 * wg + 3, 32 * wg + 5, 128256]) {
    const r = rng(vocab);
    const logits = Float32Array.from({ length: vocab }, () => Math.round(r() * 50) / 10);
    // ties of the maximum at several places (the lowest must win)
    const at = [vocab - 1, Math.floor(vocab / 2), Math.floor(vocab / 3) + 1];
    for (const i of at) logits[i] = 9;
    const padded = new Float32Array(Math.ceil(vocab / 4) * 4);
    padded.set(logits);
    padded.fill(100, vocab); // past the vocabulary: never chosen
    const out = storage(gpu, new Uint32Array(4));
    const pipeline = gpu.pipeline('test_decode_argmax', { vocab, wg }, () => decodeArgmaxWgsl(vocab, wg));
    await run(gpu, [{ label: 'argmax', pipeline, bindGroup: gpu.bindGroup('argmax', pipeline, [storage(gpu, padded), out]), workgroups: () => [1, 1, 1] }], 1);
    const got = new Uint32Array((await read(gpu, out, 1)).buffer)[0];
    assert.equal(got, Math.min(...at), `argmax over ${vocab} logits`);
  }
});
