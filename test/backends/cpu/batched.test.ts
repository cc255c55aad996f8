/**
 * The batched products of the CPU backend: `matmulEachRow` (WeightTensor.matmulRows where an encoding
 * has one) gives every row exactly what a one-row matmul gives, for every encoding and any number of
 * rows (the blocks of 8 and 4 and the remainder), so a sequence's tokens never depend on its batch.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BitmapTensor } from '../../../src/format/upg/encodings/bitmap.js';
import { CsrTensor } from '../../../src/format/upg/encodings/csr.js';
import { DenseUpgTensor } from '../../../src/format/upg/encodings/dense.js';
import { NmTensor } from '../../../src/format/upg/encodings/nm.js';
import { Q4Tensor } from '../../../src/format/upg/encodings/q4.js';
import { Q8Tensor } from '../../../src/format/upg/encodings/q8.js';
import { DenseTensor, matmulEachRow, type WeightTensor } from '../../../src/model/tensor.js';
import { compare, rng } from '../../helpers.js';

test('matmulEachRow equals one-row products bit for bit, every encoding, 1 to 19 rows', () => {
  const random = rng(7);
  const rows = 37, cols = 136; // odd sizes: partial groups, tiles and words
  const w = new Float32Array(rows * cols).map(() => (random() - 0.5) * (random() < 0.4 ? 0 : 1));
  const tensors: WeightTensor[] = [
    new DenseTensor(rows, cols, w.slice()),
    DenseUpgTensor.pack(rows, cols, w, 'BF16'),
    Q4Tensor.pack(rows, cols, w, 32),
    Q4Tensor.pack(rows, cols, w, 64),
    Q8Tensor.pack(rows, cols, w),
    BitmapTensor.pack(rows, cols, w, 64, 4),
    NmTensor.pack(rows, cols, w.map((v, i) => (i % 4 < 2 ? v : 0)), 2, 4, 8),
    CsrTensor.pack(rows, cols, w),
  ];
  for (const t of tensors) {
    for (const T of [1, 3, 4, 7, 8, 12, 19]) {
      const x = new Float32Array(T * cols).map(() => random() * 2 - 1);
      const want = new Float32Array(T * rows);
      for (let i = 0; i < T; i++) t.matmul(x.subarray(i * cols, (i + 1) * cols), 1, want, rows, i * rows);
      const got = new Float32Array(T * rows);
      matmulEachRow(t, x, T, got, rows, 0);
      const r = compare(got, want);
      assert.equal(r.worst, 0, `${t.encoding} T=${T}: worst |diff| ${r.worst} at [${r.worstAt}]: ${r.a} vs ${r.b}`);
    }
  }
});
