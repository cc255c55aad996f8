/**
 * The fused matvec's workgroup-block layout at the row lengths of the benchmark shapes, including
 * invocations-per-row that are not powers of two (phi-4's down_proj: 560 q4 units, 288 lanes;
 * llama-3.1-8b's: 448 units, 224 lanes; 288 f32 units, 96 lanes), with the residual epilogue, against the encoding's
 * own CPU product, with and without subgroups. (Fixture models are too small to reach these layouts.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { uploadFusedMatrix } from '../../../src/backends/webgpu/fused/weights.js';
import { fusedBlocks, fusedLayout, fusedMatvecBindings, fusedMatvecWgsl, type FusedMatvecShape } from '../../../src/backends/webgpu/kernels/fused-matvec.js';
import { Q4Tensor } from '../../../src/format/upg/encodings/index.js';
import { DenseTensor, type WeightTensor } from '../../../src/model/tensor.js';
import { f16ToF32, f32ToF16 } from '../../../src/format/dtype.js';
import { rmsnorm } from '../../../src/backends/cpu/ops.js';
import { assertClose, compare, rng } from '../../helpers.js';
import { SKIP_GPU, featureVariants, read, run, storage, testGpu, zeros } from './gpu.js';

test('fused matvec: non-power-of-two lanes per row (q4 and f32, residual epilogue) match the CPU product', { skip: SKIP_GPU }, async () => {
  // [encoding, cols, lanes per row the layout should pick]
  const cases: ['q4' | 'f32', number, number][] = [['q4', 5120, 64], ['q4', 17920, 288], ['q4', 14336, 224], ['f32', 640, 64], ['f32', 1152, 96]];
  for (const { name, options } of await featureVariants()) {
    const gpu = await testGpu(options);
    const f = { subgroups: gpu.subgroups };
    for (const [encoding, cols, lanes] of cases) {
      const rows = 13;
      const next = rng(cols + rows);
      const w = Float32Array.from({ length: rows * cols }, () => next() * 2 - 1);
      const t: WeightTensor = encoding === 'q4' ? Q4Tensor.pack(rows, cols, w, 64) : new DenseTensor(rows, cols, w, 'F32');
      const m = uploadFusedMatrix(gpu, [t], 'layout test');
      const shape: FusedMatvecShape = {
        encoding: m.encoding, rows, cols, units: m.units, group: m.group, input: 'global', epilogue: 'residual', bias: false, eps: 1e-5,
        numHeads: 0, numKvHeads: 0, headDim: 0, rotaryDim: 0, workgroups: 0,
      };
      assert.equal(fusedLayout(shape).tpr, lanes, `${encoding} ${cols} columns: lanes per row`);
      shape.workgroups = fusedBlocks(shape);
      const x = Float32Array.from({ length: cols }, () => next() * 2 - 1);
      const y0 = Float32Array.from({ length: rows }, () => next() - 0.5);
      const want = new Float32Array(rows);
      t.matmul(x, 1, want, rows, 0);
      for (let r = 0; r < rows; r++) want[r] = want[r]! + y0[r]!;
      const xPadded = new Float32Array(m.units * 32);
      xPadded.set(x);
      const io: Record<string, GPUBuffer> = { ...m.buffers, X: storage(gpu, xPadded), Y: storage(gpu, y0) };
      const pipeline = gpu.pipeline('fused_matvec_layout_test', { ...shape, ...f }, () => fusedMatvecWgsl(shape, f));
      const bindGroup = gpu.bindGroup('fused_matvec_layout_test', pipeline, fusedMatvecBindings(shape).map((n) => io[n]!));
      await run(gpu, [{ label: 'matvec', pipeline, bindGroup, workgroups: () => [shape.workgroups, 1, 1] }], 1);
      assertClose(await read(gpu, io.Y!, rows), want, 1e-5, `${encoding} [${rows}, ${cols}] residual, ${lanes} lanes a row (${name})`);
      for (const b of [...Object.values(m.buffers), io.X!, io.Y!]) b.destroy();
    }
  }
});

test('fused matvec: q4 subgroup workers after the norm prologue, several row groups a worker, match rmsnorm and the CPU product', { skip: SKIP_GPU }, async () => {
  for (const { name, options } of await featureVariants()) {
    const gpu = await testGpu(options);
    const f = { subgroups: gpu.subgroups };
    // [rows, cols, workgroups]: one workgroup or three for 51 row groups (a worker takes several);
    // a row of 10 units (lanes idle past the row's end) and one of 160 (several passes)
    for (const [rows, cols, workgroups] of [[202, 320, 1], [202, 5120, 3], [37, 5120, 1]] as const) {
      const next = rng(rows * 7 + cols);
      const t = Q4Tensor.pack(rows, cols, Float32Array.from({ length: rows * cols }, () => next() * 2 - 1), 64);
      const m = uploadFusedMatrix(gpu, [t], 'workers test');
      const x = Float32Array.from({ length: cols }, () => next() * 2 - 1);
      const nw = Float32Array.from({ length: cols }, () => 0.5 + next());
      const xn = new Float32Array(cols);
      rmsnorm(x, nw, 1e-5, 1, xn);
      const want = new Float32Array(rows);
      t.matmul(xn, 1, want, rows, 0);
      for (const workerWorkgroup of [256, 1024]) {
        const shape: FusedMatvecShape = {
          encoding: 'q4', rows, cols, units: m.units, group: m.group, input: 'norm', epilogue: 'store', bias: false, eps: 1e-5,
          numHeads: 0, numKvHeads: 0, headDim: 0, rotaryDim: 0, workgroups, workerWorkgroup, interleaveWorkers: workerWorkgroup === 1024,
        };
        const io: Record<string, GPUBuffer> = { ...m.buffers, X: storage(gpu, x), NW: storage(gpu, nw), Y: storage(gpu, new Float32Array(rows)) };
        const pipeline = gpu.pipeline('fused_matvec_workers_test', { ...shape, ...f }, () => fusedMatvecWgsl(shape, f));
        const bindGroup = gpu.bindGroup('fused_matvec_workers_test', pipeline, fusedMatvecBindings(shape).map((n) => io[n]!));
        await run(gpu, [{ label: 'matvec', pipeline, bindGroup, workgroups: () => [workgroups, 1, 1] }], 1);
        assertClose(await read(gpu, io.Y!, rows), want, 1e-5, `q4 [${rows}, ${cols}] norm, ${workgroups} workgroups of ${workerWorkgroup}${shape.interleaveWorkers ? ', interleaved' : ''} (${name})`);
        for (const b of [io.X!, io.NW!, io.Y!]) b.destroy();
      }
      for (const b of Object.values(m.buffers)) b.destroy();
    }
  }
});

/** x quantized as the int8 kernel does: blocks of 32, d = max|x| / 127 (f32), q = round-half-even(x / d). */
function quantizeInt8(x: Float32Array): Float32Array {
  const out = new Float32Array(x.length);
  for (let b = 0; b < x.length; b += 32) {
    let amax = 0;
    for (let i = b; i < Math.min(b + 32, x.length); i++) amax = Math.max(amax, Math.abs(x[i]!));
    const d = Math.fround(amax / 127), id = amax > 0 ? Math.fround(127 / amax) : 0;
    for (let i = b; i < Math.min(b + 32, x.length); i++) {
      const v = Math.fround(x[i]! * id), r = Math.round(v);
      const q = Math.abs(v - Math.trunc(v)) === 0.5 && r % 2 !== 0 ? r - 1 : r; // ties to even
      out[i] = q * d;
    }
  }
  return out;
}

test('fused matvec: q4 with int8 activations (dot4I8Packed and its polyfill, norm and global input) matches the product of the int8-rounded x', { skip: SKIP_GPU }, async () => {
  for (const packed of [true, false]) {
    const gpu = await testGpu({ disablePackedDot: !packed });
    if (!gpu.subgroups) return; // the int8 kernel runs on subgroup workers only (the decoder falls back to f32)
    const f = { subgroups: true, packedDot: gpu.features.packed4x8IntegerDotProduct };
    // [rows, cols, group, workgroups, unit-major global x]: a partial last worker, several row groups a worker, odd units
    for (const [rows, cols, group, workgroups, unitMajor] of [[37, 320, 64, 1, false], [202, 5120, 64, 3, true], [50, 96, 32, 2, true]] as const) {
      const next = rng(rows * 13 + cols + (packed ? 1 : 0));
      const t = Q4Tensor.pack(rows, cols, Float32Array.from({ length: rows * cols }, () => next() * 2 - 1), group);
      const m = uploadFusedMatrix(gpu, [t], 'int8 test');
      const x = Float32Array.from({ length: cols }, () => (next() * 2 - 1) * (next() < 0.05 ? 20 : 1)); // a few outliers
      const nw = Float32Array.from({ length: cols }, () => 0.5 + next());
      // the norm input with x read once (default, at most 256 units) and twice
      // octets: x * the norm weight quantized by octets of lanes, rmsnorm's scale applied to the sums;
      // xF16: a global x stored as f16 pairs (an act: 'f16' SwiGLU's output), so the product of its f16 values
      for (const [input, normOneRead, octets, xF16] of [['norm', true, false, false], ['norm', false, false, false], ['norm', false, true, false], ['global', true, false, false], ['global', true, false, true]] as const) {
        const xin = new Float32Array(cols);
        if (input === 'norm') rmsnorm(x, nw, 1e-5, 1, xin);
        else for (let i = 0; i < cols; i++) xin[i] = xF16 ? f16ToF32(f32ToF16(x[i]!)) : x[i]!;
        const exact = new Float32Array(rows), want = new Float32Array(rows);
        t.matmul(xin, 1, exact, rows, 0);
        // the kernel's sum: scale * sum(u xq) from the rounded x, min * sum(x) from the exact one
        const xq = quantizeInt8(xin);
        t.matmul(xq, 1, want, rows, 0);
        for (let r = 0; r < rows; r++) {
          for (let g = 0; g * group < cols; g++) {
            let dx = 0;
            for (let c = g * group; c < Math.min(cols, (g + 1) * group); c++) dx += xin[c]! - xq[c]!;
            want[r] = want[r]! + f16ToF32(t.scaleMin[(r * t.groups + g) * 2 + 1]!) * dx;
          }
        }
        const shape: FusedMatvecShape = {
          encoding: 'q4', rows, cols, units: m.units, group: m.group, input, epilogue: 'store', bias: false, eps: 1e-5,
          numHeads: 0, numKvHeads: 0, headDim: 0, rotaryDim: 0, workgroups, activations: 'int8', normOneRead, int8Octets: octets, interleaveWorkers: octets || input === 'global', xUnitMajor: input === 'global' && unitMajor, unroll: cols === 5120 ? 4 : cols === 320 ? 2 : 1, xF16,
        };
        // a global x as the producers store it: unit-major (vec4 e of unit k at e * units + k) or in order, zero-padded
        const xg = new Float32Array(m.units * 32);
        for (let i = 0; i < cols; i++) xg[shape.xUnitMajor ? ((((i >> 2) % 8) * m.units + ((i >> 2) >> 3)) * 4 + (i & 3)) : i] = x[i]!;
        // as f16 pairs: float i of that order is half i, word i / 2
        const xh = new Uint32Array(xg.length / 2);
        for (let i = 0; i < xg.length; i++) xh[i >> 1] = xh[i >> 1]! | (f32ToF16(xg[i]!) << (16 * (i & 1)));
        const io: Record<string, GPUBuffer> = { ...m.buffers, X: storage(gpu, input === 'norm' ? x : xF16 ? xh : xg), NW: storage(gpu, nw), Y: zeros(gpu, rows) };
        const pipeline = gpu.pipeline('fused_matvec_int8_test', { ...shape, ...f }, () => fusedMatvecWgsl(shape, f));
        const bindGroup = gpu.bindGroup('fused_matvec_int8_test', pipeline, fusedMatvecBindings(shape).map((n) => io[n]!));
        await run(gpu, [{ label: 'matvec', pipeline, bindGroup, workgroups: () => [workgroups, 1, 1] }], 1);
        const got = await read(gpu, io.Y!, rows);
        assertClose(got, want, 1e-5, `q4 int8 [${rows}, ${cols}] g${group} ${input}${octets ? ' (octets)' : input === 'norm' && !normOneRead ? ' (x read twice)' : ''}${shape.xUnitMajor ? ' unit-major' : ''}${shape.interleaveWorkers ? ' interleaved' : ''}${xF16 ? ' f16 x' : ''} (${packed ? 'dot4I8Packed' : 'polyfill'}) vs the int8-rounded x`);
        // and how far int8 rounding moves the product from the f32 one (printed; bounded loosely)
        const e = compare(got, exact);
        console.log(`q4 int8 [${rows}, ${cols}] ${input}: relative difference to the f32-x product ${e.rel.toExponential(2)}`);
        assert.ok(e.rel < 0.1, `int8 rounding moved the product by ${e.rel} (random weights and outliers in x: loose)`);
        for (const b of [io.X!, io.NW!, io.Y!]) b.destroy();
      }
      for (const b of Object.values(m.buffers)) b.destroy();
    }
  }
});
