/**
 * The GPU kernels of every UPG encoding against that encoding's CPU `matmul` (and `readRow` for the
 * embedding lookup), on random and odd shapes: one token (matvec) and several (prefill, 8 tokens a
 * pass), with bias and residual epilogues.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { embeddingOp, matmulOp } from '../../../src/backends/webgpu/ops.js';
import { uploadEncoded } from '../../../src/backends/webgpu/weights.js';
import { BitmapTensor, CsrTensor, NmTensor, Q4Tensor, Q8Tensor } from '../../../src/format/upg/encodings/index.js';
import type { WeightTensor } from '../../../src/model/tensor.js';
import { assertClose, rng } from '../../helpers.js';
import { read, run, SKIP_GPU, stepBuffer, storage, testGpu, zeros } from './gpu.js';

function randomArray(n: number, seed: number): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => r() * 2 - 1);
}

/** Random weights with about `density` of them nonzero; row 1 keeps only its last column (long csr gaps). */
function sparse(rows: number, cols: number, density: number, seed: number): Float32Array {
  const r = rng(seed);
  const w = Float32Array.from({ length: rows * cols }, () => (r() < density ? r() * 2 - 1 : 0));
  if (rows > 1) w.fill(0, cols, 2 * cols - 1);
  return w;
}

/** Keeps the n largest magnitudes of each aligned block of m columns. */
function nmPrune(w: Float32Array, rows: number, cols: number, n: number, m: number): Float32Array {
  const out = Float32Array.from(w);
  for (let r = 0; r < rows; r++) {
    for (let b = 0; b < cols; b += m) {
      const idx = Array.from({ length: Math.min(m, cols - b) }, (_, k) => r * cols + b + k).sort((i, j) => Math.abs(w[j]!) - Math.abs(w[i]!));
      for (const i of idx.slice(n)) out[i] = 0;
    }
  }
  return out;
}

function tensors(rows: number, cols: number, seed: number): WeightTensor[] {
  const dense = randomArray(rows * cols, seed);
  const sp = sparse(rows, cols, 0.4, seed + 1);
  return [
    Q8Tensor.pack(rows, cols, dense),
    Q4Tensor.pack(rows, cols, dense, 32),
    Q4Tensor.pack(rows, cols, dense, 128),
    BitmapTensor.pack(rows, cols, sp, 64, 8),
    BitmapTensor.pack(rows, cols, sp, 256, 4),
    NmTensor.pack(rows, cols, nmPrune(dense, rows, cols, 2, 4), 2, 4, 8),
    NmTensor.pack(rows, cols, nmPrune(dense, rows, cols, 4, 8), 4, 8, 4, 64),
    CsrTensor.pack(rows, cols, sp),
  ];
}

function describe(t: WeightTensor): string {
  return `${t.encoding}${JSON.stringify((t as unknown as { params: object }).params)} [${t.rows}x${t.cols}]`;
}

test('webgpu encodings: q8, q4, bitmap, nm, csr products vs their CPU matmul', { skip: SKIP_GPU }, async () => {
    const gpu = await testGpu();
    // [T, rows, cols]: odd sizes, one-token and multi-token products (T not a multiple of 8)
    const shapes: [number, number, number][] = [[1, 37, 700], [11, 64, 127], [3, 40, 300]];
    let seed = 1;
    for (const [T, rows, cols] of shapes) {
      for (const w of tensors(rows, cols, seed++)) {
        const m = uploadEncoded(gpu, w, 'w');
        const x = randomArray(T * cols, seed++);
        const yStride = rows + 2, yOffset = 1;
        const y0 = randomArray(T * yStride, seed++);
        const bias = randomArray(rows + 1, seed++);
        const residual = T > 1;
        const prod = new Float32Array(T * yStride);
        w.matmul(x, T, prod, yStride, yOffset);
        const want = Float32Array.from(y0);
        for (let t = 0; t < T; t++) {
          for (let r = 0; r < rows; r++) {
            const o = t * yStride + yOffset + r;
            want[o] = prod[o]! + bias[yOffset + r]! + (residual ? y0[o]! : 0);
          }
        }
        const y = storage(gpu, y0);
        const io = { x: storage(gpu, x), y, yStride, yOffset, bias: storage(gpu, bias), residual, step: stepBuffer(gpu, T, 0) };
        await run(gpu, matmulOp(gpu, m, io, T === 1 ? 'matvec' : 'tiled', T), T);
        // q4 and q8 prefill through the f16 subgroup-matrix tiles where the device has them (matmul-tiled.test.ts)
        const tol = T > 1 && gpu.features.subgroupMatrixF16 && (w.encoding === 'q4' || w.encoding === 'q8') ? 3e-3 : 1e-5;
        assertClose(await read(gpu, y, T * yStride), want, tol, `${describe(w)} T=${T}`);
      }
    }
});

test('webgpu encodings: embedding lookup from every encoding vs readRow', { skip: SKIP_GPU }, async () => {
  const vocab = 50, H = 300;
  const ids = [0, 49, 1, 7, 7];
  // whole tables, and tables split by rows over 1 KiB bindings (a dispatch a block)
  for (const maxBindingBytes of [undefined, 1024]) {
    const gpu = await testGpu(maxBindingBytes ? { maxBindingBytes } : {});
    for (const table of tensors(vocab, H, 77)) {
      const want = new Float32Array(ids.length * H);
      ids.forEach((id, t) => table.readRow(id, want.subarray(t * H, (t + 1) * H)));
      const x = zeros(gpu, ids.length * H);
      const m = uploadEncoded(gpu, table, 'embed');
      await run(gpu, embeddingOp(gpu, m, H, ids.length, x, stepBuffer(gpu, ids.length, 0, ids)), ids.length);
      assertClose(await read(gpu, x, ids.length * H), want, 1e-6, `embedding ${describe(table)}${m.rowBlocks ? ` in ${m.rowBlocks.length} row blocks` : ''}`);
    }
  }
});

test('webgpu encodings: tensors larger than a storage binding are split by rows (every encoding) and their products match the CPU matmul; a row alone too large is refused in one line', { skip: SKIP_GPU }, async () => {
  // bindings of 1 KiB: every tensor below but the 4-bit bitmap of 37 rows is several blocks
  const gpu = await testGpu({ maxBindingBytes: 1024 });
  let seed = 500;
  for (const [T, rows, cols] of [[1, 37, 300], [5, 64, 127]] as const) {
    for (const w of tensors(rows, cols, seed++)) {
      const m = uploadEncoded(gpu, w, 'w');
      const over = (w as unknown as { buffers(): { bytes: Uint8Array }[] }).buffers().some((b) => b.bytes.length > 1024);
      assert.equal(Boolean(m.rowBlocks), over, `${describe(w)}: split into row blocks exactly when a buffer exceeds the binding`);
      if (m.rowBlocks) assert.equal(m.rowBlocks.reduce((a, b) => a + b.matrix.rows, 0), rows);
      const x = randomArray(T * cols, seed++);
      const yStride = rows + 2, yOffset = 1;
      const y0 = randomArray(T * yStride, seed++);
      const bias = randomArray(rows + 1, seed++);
      const prod = new Float32Array(T * yStride);
      w.matmul(x, T, prod, yStride, yOffset);
      const want = Float32Array.from(y0);
      for (let t = 0; t < T; t++) for (let r = 0; r < rows; r++) { const o = t * yStride + yOffset + r; want[o] = prod[o]! + bias[yOffset + r]! + y0[o]!; }
      const y = storage(gpu, y0);
      const io = { x: storage(gpu, x), y, yStride, yOffset, bias: storage(gpu, bias), residual: true, step: stepBuffer(gpu, T, 0) };
      await run(gpu, matmulOp(gpu, m, io, T === 1 ? 'matvec' : 'tiled', T), T);
      const tol = T > 1 && gpu.features.subgroupMatrixF16 && (w.encoding === 'q4' || w.encoding === 'q8') ? 3e-3 : 1e-5;
      assertClose(await read(gpu, y, T * yStride), want, tol, `${describe(w)} T=${T} in ${m.rowBlocks?.length ?? 1} row blocks`);
    }
  }
  // one row of 4,096 int8 values does not fit 1 KiB
  const wide = CsrTensor.pack(2, 4096, randomArray(2 * 4096, 9));
  assert.throws(() => uploadEncoded(gpu, wide, 'model.layers.0.mlp.down_proj'), (e: Error) => {
    assert.match(e.message, /^model\.layers\.0\.mlp\.down_proj: the adapter is too small for this tensor: its csr 'entries' buffer \([0-9.]+ MiB\) exceeds the adapter's storage binding limit \(maxStorageBufferBindingSize, 0\.0 MiB\) even for a single row; .*backend: 'cpu'$/);
    assert.ok(!e.message.includes('\n'), 'one line');
    return true;
  });
});
