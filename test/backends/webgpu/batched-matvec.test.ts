/**
 * The batched decode products (kernels/batched-matvec.ts) against a float64 CPU product of the same
 * q4 matrix, for T rows of x in passes of NB: f32 activations at 1e-5, int8 activations at the int8
 * reference (x quantized as the kernel does) at 1e-5 and the f32 product at 2e-2; a residual and a
 * bias; both lane layouts ('units', 'rows'); and every row's result bitwise the same whatever T (issue 15.3). Also the per-row token
 * choice (kernels/sample.ts `rows`) against the CPU rule.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { argmaxOp, batchedMatvecOp, chooseRowsOp, decodeCombineOp, quantizeRowsOp, sampleOp, type BatchedMatvecSplit } from '../../../src/backends/webgpu/ops.js';
import type { GpuMatrix } from '../../../src/backends/webgpu/weights.js';
import { f16ToF32, f32ToF16 } from '../../../src/format/dtype.js';
import { assertClose, rng } from '../../helpers.js';
import { read, readU32, run, SKIP_GPU, stepBuffer, storage, testGpu, zeros } from './gpu.js';

/** A random q4 matrix (rows, cols) in the fused layout and its dequantized values. */
function q4Matrix(rows: number, cols: number, group: number, seed: number) {
  const r = rng(seed);
  const words = new Uint32Array((rows * cols) / 8).map(() => Math.floor(r() * 4294967296));
  const groups = cols / group;
  const sm = new Uint32Array(rows * groups);
  const w = new Float64Array(rows * cols), scaled = new Float64Array(rows * cols), mins = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) {
    for (let g = 0; g < groups; g++) {
      const scale = f32ToF16((r() + 0.1) * 0.05), min = f32ToF16(-(r() * 0.4));
      sm[i * groups + g] = scale | (min << 16);
      for (let c = g * group; c < (g + 1) * group; c++) {
        const nibble = (words[(i * cols + c) >> 3]! >>> ((c & 7) * 4)) & 15;
        scaled[i * cols + c] = nibble * f16ToF32(scale);
        mins[i * cols + c] = f16ToF32(min);
        w[i * cols + c] = scaled[i * cols + c]! + mins[i * cols + c]!;
      }
    }
  }
  return { words, sm, w, scaled, mins };
}

/** The int8 rounding of x the kernel does (per unit of 32: d = max|x| / 127, q = round(x / d)). */
function quantized(x: Float32Array): Float64Array {
  const out = new Float64Array(x.length);
  for (let u = 0; u < x.length; u += 32) {
    let amax = 0;
    for (let i = u; i < u + 32; i++) amax = Math.max(amax, Math.abs(x[i]!));
    const d = Math.fround(amax / 127), id = amax > 0 ? Math.fround(127 / amax) : 0;
    for (let i = u; i < u + 32; i++) out[i] = Math.round(Math.fround(x[i]! * id)) * d;
  }
  return out;
}

test('webgpu batched q4 products: T rows in passes of NB equal the CPU product, and each row is the same whatever T', { skip: SKIP_GPU }, async (t) => {
  const gpu = await testGpu();
  if (!gpu.subgroups) {
    t.skip('the batched q4 kernel needs subgroups (the engine falls back to the tiled kernels)');
    return;
  }
  const r = rng(7);
  // 2,112 columns: 66 units, more than the 'rows' layout's 64 lanes across the columns
  for (const [rows, cols, group] of [[37, 96, 32], [70, 256, 64], [21, 2112, 64]] as const) {
    const { words, sm, w, scaled, mins } = q4Matrix(rows, cols, group, rows);
    const m = {
      encoding: 'q4', rows, cols, bytes: words.byteLength + sm.byteLength,
      shape: { encoding: 'q4', rows, cols, group, groups: cols / group, wordsPerRow: cols / 8 },
      buffers: [storage(gpu, words), storage(gpu, sm)],
    } as unknown as GpuMatrix;
    const T = 11, yStride = rows + 5, yOffset = 3;
    const x = Float32Array.from({ length: T * cols }, () => r() * 2 - 1);
    const y0 = Float32Array.from({ length: T * yStride }, () => r());
    const biasValues = Float32Array.from({ length: yStride }, () => r() - 0.5);
    const xb = storage(gpu, x), bias = storage(gpu, biasValues);
    const xq = zeros(gpu, T * cols), xd = zeros(gpu, (T * cols) / 16);
    for (const activations of ['f32', 'int8'] as const) {
      const splits: BatchedMatvecSplit[] = [
        { layout: 'units', nb: 4, rps: 2, groups: 4 }, { layout: 'units', nb: 3, rps: 4, groups: 4 },
        { layout: 'rows', nb: 8, rps: 2, groups: 4 }, { layout: 'rows', nb: 8, rps: 2, groups: 4, slices: 2, unroll: 2 },
        { layout: 'rows', nb: 3, rps: 1, groups: 2, unroll: 3 }, { layout: 'rows', nb: 5, rps: 4, groups: 1, slices: 4 },
      ];
      for (const split of splits) {
        const { nb, rps } = split;
        const results: Float32Array[] = [];
        for (const steps of [T, 1, 5]) {
          const y = storage(gpu, y0);
          const step = stepBuffer(gpu, steps, 0);
          const op = batchedMatvecOp(gpu, m, { x: xb, y, yStride, yOffset, bias, residual: true, step }, { activations, ...split, xq, xd });
          assert.ok(op, 'the kernel applies');
          // the 'rows' layout runs wherever subgroups hold its sets of 8 lanes (lavapipe's hold 8)
          if (gpu.features.subgroupMinSize >= 8) assert.ok(op[0]!.label.includes(split.layout), `${op[0]!.label} for ${split.layout}`);
          await run(gpu, [...(activations === 'int8' ? [quantizeRowsOp(gpu, cols, T, xb, xq, xd, step)] : []), ...op], steps);
          results.push(await read(gpu, y, T * yStride));
        }
        const [all, one, five] = results as [Float32Array, Float32Array, Float32Array];
        // each row's sums are bitwise the same whether it ran among 1, 5 or 11 rows
        for (let i = 0; i < yStride; i++) assert.equal(one[i], all[i], `row 0, output ${i}: alone vs among ${T} (${activations}, ${JSON.stringify(split)})`);
        for (let i = 0; i < 5 * yStride; i++) assert.equal(five[i], all[i], `output ${i}: among 5 vs ${T} (${activations}, ${JSON.stringify(split)})`);
        for (let i = 5 * yStride; i < T * yStride; i++) assert.equal(five[i], y0[i], `row ${Math.floor(i / yStride)} untouched by a step of 5`);
        // against the CPU: y0 + W x + bias over the rows this matrix writes
        // int8: scale * nibble applied to the rounded x, min to the exact x (its sum is kept exact)
        const want = (xs: ArrayLike<number>) => {
          const out = Float64Array.from(y0);
          for (let tt = 0; tt < T; tt++) {
            for (let i = 0; i < rows; i++) {
              let s = 0;
              for (let c = 0; c < cols; c++) s += scaled[i * cols + c]! * xs[tt * cols + c]! + mins[i * cols + c]! * x[tt * cols + c]!;
              out[tt * yStride + yOffset + i] += s + biasValues[yOffset + i]!;
            }
          }
          return out;
        };
        const exact = want(x);
        const ref = activations === 'f32' ? exact : want(quantized(x));
        void w;
        assertClose(all, ref, 1e-5, `${rows} x ${cols} g${group} ${activations} ${JSON.stringify(split)} vs the CPU`);
        if (activations === 'int8') assertClose(all, exact, 2e-2, `${rows} x ${cols} int8 vs the f32 product`);
      }
    }
  }
});

test('webgpu attention merge with the int8 blocks: the x, int8 values and scales of the merge then the quantization (to 1e-6, int8 within 1)', { skip: SKIP_GPU }, async () => {
  const gpu = await testGpu();
  const r = rng(11);
  const shape = { numHeads: 3, numKvHeads: 1, headDim: 64, contextLength: 256, slidingWindow: null, splits: 4 };
  const T = 5, cols = shape.numHeads * shape.headDim, record = shape.headDim + 2;
  // records (row, head, chunk): o, then (m, l); chunk 3 of every head empty (m = -3e38, l = 0, as a chunk past the keys)
  const records = Float32Array.from({ length: T * shape.numHeads * shape.splits * record }, (_, i) => {
    const chunk = Math.floor(i / record) % shape.splits, at = i % record;
    if (chunk === 3) return at === shape.headDim ? -3e38 : 0;
    return at === shape.headDim ? r() * 4 - 2 : at === shape.headDim + 1 ? r() * 3 + 0.5 : r() * 2 - 1;
  });
  const part = storage(gpu, records), step = stepBuffer(gpu, T, 0);
  const outputs = async (merged: boolean) => {
    const att = zeros(gpu, T * cols), xq = zeros(gpu, T * cols), xd = zeros(gpu, (T * cols) / 16);
    const ops = merged
      ? [quantizeRowsOp(gpu, cols, T, att, xq, xd, step, undefined, { records: part, shape })]
      : [decodeCombineOp(gpu, shape, part, att), quantizeRowsOp(gpu, cols, T, att, xq, xd, step)];
    await run(gpu, ops, T);
    return [await read(gpu, att, T * cols), await readU32(gpu, xq, T * cols / 4), await readU32(gpu, xd, (T * cols) / 16)] as const;
  };
  // not bitwise: the two kernels' a += w * o may be contracted differently (on the H100 1 ulp apart),
  // and an int8 value may then round the other way
  const [want, got] = [await outputs(false), await outputs(true)];
  assertClose(got[0], want[0], 1e-6, 'att: merged vs merge then quantize');
  assertClose(new Float32Array(got[2].buffer), new Float32Array(want[2].buffer), 1e-6, 'scales and sums: merged vs merge then quantize');
  const bytes = (u: Uint32Array) => new Int8Array(u.buffer, u.byteOffset, u.byteLength);
  const [gq, wq] = [bytes(got[1]), bytes(want[1])];
  for (let i = 0; i < wq.length; i++) assert.ok(Math.abs(gq[i]! - wq[i]!) <= 1, `int8 value ${i}: merged ${gq[i]} vs ${wq[i]}`);
});

test('webgpu per-row token choice: each row as the one-row argmax or sample kernel chooses (sample.test.ts checks those against the CPU rule)', { skip: SKIP_GPU }, async () => {
  const gpu = await testGpu();
  const r = rng(3);
  const vocab = 1000, rows = 6;
  const logits = Float32Array.from({ length: rows * vocab }, () => (r() * 2 - 1) * 6);
  const settings = [
    { temperature: 0, topK: 0, topP: 1, minP: 0 },
    { temperature: 0.7, topK: 40, topP: 0.9, minP: 0 },
    { temperature: 0, topK: 40, topP: 0.9, minP: 0.05 },
    { temperature: 1.3, topK: 0, topP: 0.5, minP: 0.05 },
    { temperature: 1, topK: 0, topP: 1, minP: 0 },
    { temperature: 0.5, topK: 1, topP: 1, minP: 0 },
  ];
  const params = new Uint32Array(rows * 8), pf = new Float32Array(params.buffer);
  const draws = settings.map((_, i) => (i + 0.37) / 6.3);
  settings.forEach((s, i) => {
    pf[i * 8 + 2] = draws[i]!;
    params[i * 8 + 3] = s.topK;
    pf[i * 8 + 4] = s.temperature;
    pf[i * 8 + 5] = s.topP;
    pf[i * 8 + 6] = s.minP;
  });
  const out = zeros(gpu, rows);
  // row 2: the maximum at two indices in different chunks of the argmax (the lower one wins)
  logits[2 * vocab + 700] = 9;
  logits[2 * vocab + 5] = 9;
  await run(gpu, chooseRowsOp(gpu, vocab, rows, storage(gpu, logits), out, storage(gpu, params), zeros(gpu, rows * 64 * 2)), rows);
  const got = await readU32(gpu, out, rows);
  const one = zeros(gpu, 4);
  for (const [i, s] of settings.entries()) {
    const row = storage(gpu, logits.subarray(i * vocab, (i + 1) * vocab));
    const step = stepBuffer(gpu, 1, 0, [], { 2: draws[i]!, 3: s.topK, 4: s.temperature, 5: s.topP, 6: s.minP });
    await run(gpu, [s.temperature === 0 ? argmaxOp(gpu, vocab, row, one) : sampleOp(gpu, vocab, row, one, step)], 1);
    assert.equal(got[i], (await readU32(gpu, one, 1))[0], `row ${i} ${JSON.stringify(s)}`);
  }
  assert.equal(got[2], 5, 'a tie goes to the lowest index');
});
