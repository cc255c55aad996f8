/**
 * The prefill's matrix-matrix kernels (kernels/matmul-tiled.ts) against each encoding's CPU matmul:
 * q4 (g64, g32), q8, dense f32 / bf16 / f16, with bias and residual epilogues, on shapes with partial
 * tiles of tokens, rows and k. Each kernel the device can run: the f32 tiles everywhere (within 1e-5),
 * the tensor-core kernel where device.ts's self-test passed (within F16_TOLERANCE: x and W are
 * rounded to f16, about 2^-12 relative each, the sums are f32), in each tile it may choose.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { matmulOp, prefillKernel } from '../../../src/backends/webgpu/ops.js';
import { TENSOR_CORE_TILES, tensorCoreTileName } from '../../../src/backends/webgpu/kernels/matmul-tiled.js';
import { uploadDense, uploadEncoded } from '../../../src/backends/webgpu/weights.js';
import { f16ToF32, f32ToBf16, f32ToF16 } from '../../../src/format/dtype.js';
import { Q4Tensor, Q8Tensor } from '../../../src/format/upg/encodings/index.js';
import { DenseTensor, type WeightTensor } from '../../../src/model/tensor.js';
import { assertClose, compare, rng } from '../../helpers.js';
import { read, run, SKIP_GPU, stepBuffer, storage, testGpu } from './gpu.js';

/** Norm-relative tolerance of the f16 subgroup-matrix products (docs/PERFORMANCE.md). */
export const F16_TOLERANCE = 3e-3;

function randomArray(n: number, seed: number): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => r() * 2 - 1);
}

function dense(rows: number, cols: number, dtype: 'F32' | 'BF16' | 'F16', seed: number): DenseTensor {
  const data = randomArray(rows * cols, seed);
  if (dtype === 'BF16') for (let i = 0; i < data.length; i++) data[i] = new Float32Array(new Uint32Array([f32ToBf16(data[i]!) << 16]).buffer)[0]!;
  if (dtype === 'F16') for (let i = 0; i < data.length; i++) data[i] = f16ToF32(f32ToF16(data[i]!));
  return new DenseTensor(rows, cols, data, dtype);
}

// the f32 tiles also on a device with WebGPU's default limits (the browser's): on the first shape only;
// the f16 tensor cores with the int8 products (the q4 default where offered) off: matmul-int8.test has those
const variants = SKIP_GPU ? [] : [
  { name: 'f32 tiles', options: { subgroupMatrix: false } },
  { name: 'f32 tiles, default limits', options: { subgroupMatrix: false, limits: 'default' as const } },
  { name: 'subgroup matrices where offered', options: { subgroupMatrix: true, prefillInt8: false } },
  // each tile the tensor-core path may choose, on every shape
  ...TENSOR_CORE_TILES.map((tile) => ({ name: `subgroup matrices, tile ${tensorCoreTileName(tile)}`, options: { subgroupMatrix: true, prefillInt8: false, subgroupMatrixTile: tile } })),
  // the same tiles with q4 dequantized in f32 (PDVM_SM_TILE=s64-4422), and a tile of 8 subgroups
  ...[...TENSOR_CORE_TILES.map((tile) => ({ ...tile, f16Dequant: false })), { am: 4, an: 4, gm: 2, gn: 4, kind: 'staged' as const, ks: 32, f16Dequant: true }]
    .map((tile) => ({ name: `subgroup matrices, tile ${tensorCoreTileName(tile)}`, options: { subgroupMatrix: true, prefillInt8: false, subgroupMatrixTile: tile } })),
];

for (const { name, options } of variants) {
  test(`webgpu prefill products (${name}): q4, q8, dense vs their CPU matmul`, async (t) => {
    const gpu = await testGpu(options);
    if ('limits' in options) assert.equal(gpu.device.limits.maxComputeWorkgroupStorageSize, 16384);
    const kernel = prefillKernel(gpu);
    if (options.subgroupMatrix && kernel === 'f32') {
      t.skip('no f16 subgroup matrices on this device (the f32 tiles are tested above)');
      return;
    }
    const tol = kernel === 'f32' ? 1e-5 : F16_TOLERANCE;
    // [T, rows, cols]: partial tiles of tokens (64 / 128), rows (128) and k (16 / 32)
    const shapes: [number, number, number][] = [[200, 300, 512], [5, 130, 72], [129, 64, 200]].slice(0, 'limits' in options ? 1 : 3) as [number, number, number][];
    let seed = 1;
    for (const [T, rows, cols] of shapes) {
      const w0 = randomArray(rows * cols, seed++);
      const tensors: WeightTensor[] = [
        Q4Tensor.pack(rows, cols, w0, 64), Q4Tensor.pack(rows, cols, w0, 32), Q8Tensor.pack(rows, cols, w0),
        dense(rows, cols, 'F32', seed++), dense(rows, cols, 'BF16', seed++), dense(rows, cols, 'F16', seed++),
      ];
      for (const w of tensors) {
        const m = w instanceof DenseTensor ? uploadDense(gpu, w, 'w') : uploadEncoded(gpu, w, 'w');
        const x = randomArray(T * cols, seed++);
        const yStride = rows + 3, yOffset = 2;
        const y0 = randomArray(T * yStride, seed++);
        // no bias on the first shape: the tensor-core kernel's whole tiles store straight to y there
        // (loading the residual as their initial sums); partial tiles and bias go through its scratch
        const bias = rows === 300 ? null : randomArray(rows + 2, seed++);
        const residual = rows !== 64;
        const prod = new Float32Array(T * yStride);
        w.matmul(x, T, prod, yStride, yOffset);
        const want = Float32Array.from(y0);
        for (let i = 0; i < T; i++) {
          for (let r = 0; r < rows; r++) {
            const o = i * yStride + yOffset + r;
            want[o] = prod[o]! + (bias ? bias[yOffset + r]! : 0) + (residual ? y0[o]! : 0);
          }
        }
        const y = storage(gpu, y0);
        await run(gpu, matmulOp(gpu, m, { x: storage(gpu, x), y, yStride, yOffset, bias: bias ? storage(gpu, bias) : null, residual, step: stepBuffer(gpu, T, 0) }, 'tiled', T), T);
        const got = await read(gpu, y, T * yStride);
        const what = `${kernel}: ${w.encoding}${w instanceof DenseTensor ? ` ${w.storedDtype}` : ''} T=${T} [${rows}x${cols}]`;
        console.log(`${what}: relative difference ${compare(got, want).rel.toExponential(2)}`);
        assertClose(got, want, tol, what);
      }
    }
  });
}
