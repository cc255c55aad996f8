/**
 * The batched step's tensor-core products (kernels/batched-tensor-core.ts, batched-products.ts):
 *  - the f16 rows of x (plain copy, SwiGLU, RMSNorm) against the CPU, in their permuted order, on any
 *    device (lavapipe in CI);
 *  - the product's WGSL, with the subgroup-matrix builtins rewritten into scalar stand-ins of the same
 *    arguments, passes Tint's checks in every stage split (where no device has subgroup matrices);
 *  - where the device has self-tested f16 subgroup matrices (the H200): the product of a random q4
 *    matrix against a float64 CPU product (x and the weights rounded to f16 as the kernel does), with
 *    bias and residual, and every row's result bitwise the same whatever T (issue 15.3).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { batchedTensorCoreOp, normX16Op, selfTestBatchedTensorCore, swigluX16Op, tensorCoreProductsUnavailable, x16Bytes, x16Op } from '../../../src/backends/webgpu/batched-products.js';
import { batchedTensorCoreWgsl, x16Cols } from '../../../src/backends/webgpu/kernels/batched-tensor-core.js';
import type { GpuMatrix } from '../../../src/backends/webgpu/weights.js';
import { f16ToF32, f32ToF16 } from '../../../src/format/dtype.js';
import { assertClose, rng } from '../../helpers.js';
import { read, readU32, run, SKIP_GPU, stepBuffer, storage, testGpu, withScalarStandIns, zeros } from './gpu.js';

const f16 = (v: number) => f16ToF32(f32ToF16(v));

/** The half of X16 holding row t's (permuted) half p: tile (t / 16, p / 16) of 256 halves, at (t % 16) * 16 + p % 16. */
function x16Half(t: number, p: number, kp: number): number {
  return ((t >> 4) * (kp / 16) + (p >> 4)) * 256 + (t & 15) * 16 + (p & 15);
}

/** Row t of X16 back in column order (column 8w + j + 4h of a unit at its half 8j + 2w + h). */
function x16Row(words: Uint32Array, t: number, cols: number): Float32Array {
  const kp = x16Cols(cols), out = new Float32Array(cols);
  for (let c = 0; c < kp; c++) {
    const w = (c & 31) >> 3, j = c & 3, h = (c & 7) >> 2;
    const p = (c & ~31) + 8 * j + 2 * w + h;
    const half = x16Half(t, p, kp);
    const word = words[half >> 1]!;
    const v = f16ToF32((half & 1 ? word >>> 16 : word) & 0xffff);
    if (c < cols) out[c] = v;
    else assert.equal(v, 0, `row ${t}: pad column ${c} is ${v}`);
  }
  return out;
}

test('webgpu x16 rows: plain, SwiGLU and RMSNorm rows of x as f16 in the tensor-core products\' order', { skip: SKIP_GPU }, async () => {
  const gpu = await testGpu({ limits: 'default' });
  const r = rng(3);
  const T = 5, cols = 96, eps = 1e-5;
  const x = Float32Array.from({ length: T * cols }, () => r() * 4 - 2);
  const gu = Float32Array.from({ length: T * 2 * cols }, () => r() * 4 - 2);
  const w = Float32Array.from({ length: cols }, () => r() + 0.5);
  const step = stepBuffer(gpu, T - 1, 0); // the last row is left alone
  for (const source of ['plain', 'swiglu', 'norm'] as const) {
    const xb = storage(gpu, x), gub = storage(gpu, gu), wb = storage(gpu, w), out = zeros(gpu, T * cols);
    const x16 = zeros(gpu, x16Bytes(T, cols) / 4);
    const op = source === 'plain' ? x16Op(gpu, cols, xb, x16, step) : source === 'swiglu' ? swigluX16Op(gpu, cols, gub, out, x16, step) : normX16Op(gpu, cols, eps, xb, wb, out, x16, step);
    await run(gpu, [op], T - 1);
    const words = await readU32(gpu, x16, x16Bytes(T, cols) / 4);
    const stored = await read(gpu, out, T * cols);
    for (let t = 0; t < T - 1; t++) {
      const want = new Float32Array(cols);
      let ss = 0;
      for (let c = 0; c < cols; c++) ss += x[t * cols + c]! ** 2;
      for (let c = 0; c < cols; c++) {
        const g = gu[t * 2 * cols + c]!, u = gu[t * 2 * cols + cols + c]!;
        want[c] = source === 'plain' ? x[t * cols + c]! : source === 'swiglu' ? (g / (1 + Math.exp(-g))) * u : (x[t * cols + c]! / Math.sqrt(ss / cols + eps)) * w[c]!;
      }
      if (source !== 'plain') assertClose(stored.subarray(t * cols, (t + 1) * cols), want, 1e-5, `${source} row ${t} (f32)`);
      assertClose(x16Row(words, t, cols), want.map(f16), 1e-3, `${source} row ${t} (f16)`);
    }
    for (let p = 0; p < x16Cols(cols); p += 2) assert.equal(words[x16Half(T - 1, p, x16Cols(cols)) >> 1], 0, 'a row past T is untouched');
  }
});

test('the batched tensor-core product\'s WGSL passes Tint\'s checks outside the subgroup-matrix builtins', { skip: SKIP_GPU }, async (t) => {
  const gpu = await testGpu();
  if (!gpu.device.features.has('shader-f16')) {
    t.skip('no shader-f16 on this adapter');
    return;
  }
  const failures: string[] = [];
  for (const [rows, cols, group, bias, residual] of [[4096, 14336, 64, false, true], [48, 192, 64, true, true], [130, 96, 32, false, false]] as const) {
    for (const [ks, nsg, depth] of [[64, 1, 1], [64, 4, 2], [128, 2, 1], [32, 8, 2], [256, 1, 1]] as const) {
      for (const indexing of ['subgroup-id', 'invocation-index'] as const) {
        const code = withScalarStandIns(batchedTensorCoreWgsl({ rows, cols, units: cols / 32, group, yStride: rows + 2, yOffset: 1, bias, residual, ks, nsg, depth }, 32, indexing, 'template'));
        const info = await gpu.device.createShaderModule({ code }).getCompilationInfo();
        const errors = info.messages.filter((m) => m.type === 'error');
        if (errors.length) failures.push(`${rows}x${cols} ks ${ks} nsg ${nsg} ${indexing}: ${errors.map((e) => `line ${e.lineNum}: ${e.message}`).join('; ')}`);
      }
    }
  }
  // the timing-only variants of bench/batched-step.ts
  for (const lab of ['no-dequant', 'no-x-loads'] as const) {
    const code = withScalarStandIns(batchedTensorCoreWgsl({ rows: 4096, cols: 14336, units: 448, group: 64, yStride: 4096, yOffset: 0, bias: false, residual: true, ks: 64, nsg: 8, lab }, 32, 'subgroup-id', 'template'));
    const errors = (await gpu.device.createShaderModule({ code }).getCompilationInfo()).messages.filter((m) => m.type === 'error');
    if (errors.length) failures.push(`${lab}: ${errors.map((e) => `line ${e.lineNum}: ${e.message}`).join('; ')}`);
  }
  assert.deepEqual(failures, []);
});

/**
 * The kernel with each subgroup matrix emulated by every invocation on its own (a 16 x 16 array in
 * registers, loads, products and stores done element by element, the same on every lane): runs
 * anywhere, slowly, with the kernel's own addressing.
 */
function withEmulatedMatrices(code: string): string {
  const block = /var<workgroup> ws: array<array<f16, (\d+)>/.exec(code)![1]; // ws in blocks of 16 rows, reached through pointers
  const helpers = `
alias Mat = array<f32, 256>;
fn sm_left_X16(tile: u32, off: u32, stride: u32) -> Mat { var m: Mat; for (var i = 0u; i < 16u; i++) { for (var k = 0u; k < 16u; k++) { m[i * 16u + k] = f32(X16[tile][off + i * stride + k]); } } return m; }
fn sm_right_ws(p: ptr<workgroup, array<f16, ${block}>>, off: u32, stride: u32) -> Mat { var m: Mat; for (var k = 0u; k < 16u; k++) { for (var n = 0u; n < 16u; n++) { m[k * 16u + n] = f32((*p)[off + n * stride + k]); } } return m; }
fn sm_mma(l: Mat, r: Mat, a: Mat) -> Mat {
  var o = a;
  for (var i = 0u; i < 16u; i++) { for (var n = 0u; n < 16u; n++) { var s = o[i * 16u + n]; for (var k = 0u; k < 16u; k++) { s += l[i * 16u + k] * r[k * 16u + n]; } o[i * 16u + n] = s; } }
  return o;
}
fn sm_store_cs(p: ptr<workgroup, array<f32, 256>>, off: u32, v: Mat, stride: u32) { for (var i = 0u; i < 16u; i++) { for (var n = 0u; n < 16u; n++) { (*p)[off + i * stride + n] = v[i * 16u + n]; } } }
`;
  return code
    .replace('enable chromium_experimental_subgroup_matrix;\n', '')
    .replace(/\n@compute/, `${helpers}\n@compute`)
    .replace(/subgroup_matrix_result<f32, 16, 16>\(\)/g, 'Mat()')
    .replace(/subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>\(&X16\[([^\]]*)\], /g, 'sm_left_X16($1, ')
    .replace(/subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>\(/g, 'sm_right_ws(')
    .replace(/subgroupMatrixMultiplyAccumulate\(/g, 'sm_mma(')
    .replace(/subgroupMatrixStore<row_major>\(/g, 'sm_store_cs(');
}

test('the batched tensor-core product with emulated subgroup matrices gives the exact answer of a small q4 product (4 stages over 2 subgroups; its addressing, permutation and epilogue)', { skip: SKIP_GPU }, async (t) => {
  const gpu = await testGpu();
  if (!gpu.device.features.has('shader-f16')) {
    t.skip('no shader-f16 on this adapter');
    return;
  }
  const device = gpu.device;
  const T = 37, rows = 48, cols = 128, group = 64, units = cols / 32, groups = cols / group;
  const q = new Uint32Array(rows * units * 4), sm = new Uint32Array(rows * groups).fill(0x3c00 | (0xc000 << 16)); // scale 1, min -2
  for (let i = 0; i < q.length; i++) q[i] = (Math.imul(i + 1, 2654435761) >>> 0) ^ (i * 40503);
  const x = Float32Array.from({ length: T * cols }, (_, i) => ((i * 5) % 7) - 3);
  const yStride = rows + 3, yOffset = 2;
  const bias = Float32Array.from({ length: yStride }, (_, i) => (i % 5) - 2), y0 = Float32Array.from({ length: T * yStride }, (_, i) => (i % 3) - 1);
  const want = Float32Array.from(y0);
  for (let tt = 0; tt < T; tt++) for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let c = 0; c < cols; c++) s += (((q[(r * units + (c >> 5)) * 4 + ((c & 31) >> 3)]! >>> (4 * (c & 7))) & 15) - 2) * x[tt * cols + c]!;
    want[tt * yStride + yOffset + r] = s + bias[yOffset + r]! + y0[tt * yStride + yOffset + r]!;
  }
  const step = stepBuffer(gpu, T, 0), x16 = zeros(gpu, x16Bytes(T, cols) / 4), xb = storage(gpu, x);
  const convert = x16Op(gpu, cols, xb, x16, step);
  for (const [ks, nsg, depth] of [[32, 2, 2]] as const) {
    const code = withEmulatedMatrices(batchedTensorCoreWgsl({ rows, cols, units, group, yStride, yOffset, bias: true, residual: true, ks, nsg, depth }, 32, 'invocation-index', 'template'));
    const module = device.createShaderModule({ code });
    const errors = (await module.getCompilationInfo()).messages.filter((m) => m.type === 'error');
    assert.deepEqual(errors.map((e) => `line ${e.lineNum}: ${e.message}`), [], `ks ${ks} nsg ${nsg} compiles`);
    const pipeline = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
    const y = storage(gpu, y0);
    const product = { label: 'emulated', pipeline, bindGroup: gpu.bindGroup('emulated', pipeline, [storage(gpu, q), storage(gpu, sm), x16, y, step, storage(gpu, bias)]), workgroups: () => [Math.ceil(rows / 32), 1, 1] as [number, number, number] };
    await run(gpu, [convert, product], T);
    const got = await read(gpu, y, T * yStride);
    const bad = want.findIndex((v, i) => got[i] !== v);
    assert.equal(bad, -1, `ks ${ks} nsg ${nsg}: element ${bad} (token ${Math.floor(bad / yStride)}, column ${bad % yStride}) is ${got[bad]}, want ${want[bad]}`);
  }
});

test('webgpu batched tensor-core products: q4 x f16 rows equal the CPU product, and each row is the same whatever T', { skip: SKIP_GPU }, async (t) => {
  const gpu = await testGpu();
  const why = tensorCoreProductsUnavailable(gpu);
  if (why) {
    t.skip(`no tensor-core products here (${why})`);
    return;
  }
  assert.equal(await selfTestBatchedTensorCore(gpu), 'passed');
  const r = rng(11);
  for (const [rows, cols, group] of [[70, 256, 64], [33, 4096, 32]] as const) {
    const words = new Uint32Array((rows * cols) / 8).map(() => Math.floor(r() * 4294967296));
    const groups = cols / group, sm = new Uint32Array(rows * groups), w = new Float64Array(rows * cols);
    for (let i = 0; i < rows; i++) {
      for (let g = 0; g < groups; g++) {
        const scale = f32ToF16((r() + 0.1) * 0.05), min = f32ToF16(-(r() * 0.4));
        sm[i * groups + g] = scale | (min << 16);
        for (let c = g * group; c < (g + 1) * group; c++) {
          const nibble = (words[(i * cols + c) >> 3]! >>> ((c & 7) * 4)) & 15;
          w[i * cols + c] = f16(nibble * f16ToF32(scale) + f16ToF32(min)); // the kernel's f16 dequantization
        }
      }
    }
    const m = {
      encoding: 'q4', rows, cols, bytes: words.byteLength + sm.byteLength,
      shape: { encoding: 'q4', rows, cols, group, groups, wordsPerRow: cols / 8 },
      buffers: [storage(gpu, words), storage(gpu, sm)],
    } as unknown as GpuMatrix;
    const T = 40, yStride = rows + 5, yOffset = 3;
    const x = Float32Array.from({ length: T * cols }, () => r() * 2 - 1);
    const y0 = Float32Array.from({ length: T * yStride }, () => r());
    const biasValues = Float32Array.from({ length: yStride }, () => r() - 0.5);
    const xb = storage(gpu, x), bias = storage(gpu, biasValues), x16 = zeros(gpu, x16Bytes(T, cols) / 4);
    const want = Float64Array.from(y0);
    for (let tt = 0; tt < T; tt++) for (let i = 0; i < rows; i++) {
      let s = 0;
      for (let c = 0; c < cols; c++) s += w[i * cols + c]! * f16(x[tt * cols + c]!);
      want[tt * yStride + yOffset + i] += s + biasValues[yOffset + i]!;
    }
    for (const split of [{ ks: 64, warps: 1 }, { ks: 64, warps: 100000, depth: 2 }, { ks: 128, warps: 8, depth: 2 }]) {
      const results: Float32Array[] = [];
      for (const steps of [T, 1, 17]) {
        const y = storage(gpu, y0);
        const step = stepBuffer(gpu, steps, 0);
        const op = batchedTensorCoreOp(gpu, m, { x: xb, y, yStride, yOffset, bias, residual: true, step }, { x16, split });
        assert.ok(op, 'the kernel applies');
        await run(gpu, [x16Op(gpu, cols, xb, x16, step), ...op], steps);
        results.push(await read(gpu, y, T * yStride));
      }
      const [all, one, some] = results as [Float32Array, Float32Array, Float32Array];
      const what = `${rows} x ${cols} g${group} ${op(split)}`;
      for (let i = 0; i < yStride; i++) assert.equal(one[i], all[i], `${what}: row 0, output ${i}: alone vs among ${T}`);
      for (let i = 0; i < 17 * yStride; i++) assert.equal(some[i], all[i], `${what}: output ${i}: among 17 vs ${T}`);
      for (let i = 17 * yStride; i < T * yStride; i++) assert.equal(some[i], y0[i], `${what}: row ${Math.floor(i / yStride)} untouched by a step of 17`);
      assertClose(all, want, 1e-4, `${what} vs the CPU`);
    }
  }
  function op(split: { ks: number; warps: number; depth?: number }): string {
    return `ks ${split.ks}, warps ${split.warps}, depth ${split.depth ?? 1}`;
  }
});
