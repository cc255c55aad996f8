/**
 * Every UPG encoding on random and odd shapes: unpack(pack(W)) equals the pruned and quantized W computed
 * here independently from the spec's formulas (docs/upg-format.md), and the reference matmul equals the
 * dense product of the unpacked weights.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BitmapTensor, CsrTensor, DenseUpgTensor, NmTensor, Q4Tensor, Q8Tensor, concatRowBlocks, type EncodedTensor } from '../../../src/format/upg/encodings/index.js';
import { f16ToF32, f32ToF16 } from '../../../src/format/dtype.js';
import { DenseTensor } from '../../../src/model/tensor.js';
import { assertClose, rng } from '../../helpers.js';

const SHAPES: [number, number][] = [[1, 1], [3, 7], [5, 45], [17, 130], [64, 384], [33, 600]];

function randomMatrix(rows: number, cols: number, seed: number): Float32Array {
  const r = rng(seed);
  // mix of scales so groups differ; a few exact zeros and an all-zero row when possible
  const w = Float32Array.from({ length: rows * cols }, (_, i) => (r() - 0.5) * (1 + 3 * r()) * (i % 11 === 0 ? 0.01 : 0.1));
  if (rows > 2) w.fill(0, cols, 2 * cols);
  return w;
}

/** Zeroes a random half of each row (unstructured), or all but the first-largest n of each m-block. */
function prune(w: Float32Array, rows: number, cols: number, seed: number, nm?: [number, number], density = 0.5): Float32Array {
  const out = Float32Array.from(w);
  const r = rng(seed);
  if (!nm) {
    for (let i = 0; i < out.length; i++) if (r() > density) out[i] = 0;
    return out;
  }
  const [n, m] = nm;
  for (let row = 0; row < rows; row++) {
    for (let b = 0; b * m < cols; b++) {
      const idx = [];
      for (let c = b * m; c < Math.min(cols, (b + 1) * m); c++) idx.push(row * cols + c);
      idx.sort((a, c) => Math.abs(out[c]!) - Math.abs(out[a]!));
      for (const i of idx.slice(n)) out[i] = 0;
    }
  }
  return out;
}

const f16 = (x: number) => f16ToF32(f32ToF16(x));

function expectInt8PerRow(w: Float32Array, rows: number, cols: number, stored: (i: number) => boolean): Float32Array {
  const out = new Float32Array(w.length);
  for (let r = 0; r < rows; r++) {
    let maxAbs = 0;
    for (let c = 0; c < cols; c++) if (stored(r * cols + c)) maxAbs = Math.max(maxAbs, Math.abs(w[r * cols + c]!));
    const scale = Math.fround(maxAbs / 127);
    for (let c = 0; c < cols; c++) {
      const i = r * cols + c;
      if (!stored(i) || scale === 0) continue;
      out[i] = Math.max(-127, Math.min(127, Math.round(w[i]! / scale))) * scale;
    }
  }
  return out;
}

/** Signed 4-bit with one scale per group of value indices; groups given as lists of flat indices. */
function expectSigned4(w: Float32Array, groups: number[][]): Float32Array {
  const out = new Float32Array(w.length);
  for (const g of groups) {
    let m = 0;
    for (const i of g) if (Math.abs(w[i]!) > Math.abs(m)) m = w[i]!;
    const scale = f16(m / -8);
    for (const i of g) out[i] = scale === 0 ? 0 : Math.max(-8, Math.min(7, Math.round(w[i]! / scale))) * scale;
  }
  return out;
}

function expectQ4(w: Float32Array, rows: number, cols: number, group: number): Float32Array {
  const out = new Float32Array(w.length);
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g * group < cols; g++) {
      const idx = [];
      for (let c = g * group; c < Math.min(cols, (g + 1) * group); c++) idx.push(r * cols + c);
      const lo = f16(Math.min(...idx.map((i) => w[i]!)));
      const hi = Math.max(...idx.map((i) => w[i]!));
      const scale = f16((hi - lo) / 15);
      for (const i of idx) {
        const u = scale === 0 ? 0 : Math.max(0, Math.min(15, Math.round((w[i]! - lo) / scale)));
        out[i] = Math.fround(Math.fround(u * scale) + lo);
      }
    }
  }
  return out;
}

function exactlyEqual(got: Float32Array, want: Float32Array, what: string): void {
  assert.equal(got.length, want.length, `${what}: length`);
  for (let i = 0; i < want.length; i++) {
    if (!Object.is(got[i], want[i]) && !(got[i] === 0 && want[i] === 0)) {
      assert.fail(`${what}: element ${i} is ${got[i]}, expected ${want[i]} (first mismatch)`);
    }
  }
}

/** matmul from the encoding vs a dense product of its unpacked weights, for T = 1, 3 and 6. */
function checkMatmul(t: EncodedTensor, seed: number, what: string): void {
  const dense = new DenseTensor(t.rows, t.cols, t.unpack());
  for (const T of [1, 3, 6]) {
    const r = rng(seed + T);
    const x = Float32Array.from({ length: T * t.cols }, () => r() * 2 - 1);
    const stride = t.rows + 3;
    const got = new Float32Array(T * stride), want = new Float32Array(T * stride);
    t.matmul(x, T, got, stride, 2);
    dense.matmul(x, T, want, stride, 2);
    assertClose(got, want, 1e-5, `${what} matmul T=${T}`);
  }
  const row = new Float32Array(t.cols);
  t.readRow(t.rows - 1, row);
  exactlyEqual(row, dense.data.subarray((t.rows - 1) * t.cols), `${what} readRow`);
}

/** Every buffer's bytes match its declared dtype and shape, and the round trip through bytes is exact. */
function checkBuffers(t: EncodedTensor, what: string): void {
  const size: Record<string, number> = { I8: 1, U8: 1, U16: 2, F16: 2, BF16: 2, F32: 4, U32: 4 };
  for (const b of t.buffers()) {
    assert.equal(b.bytes.length, b.shape.reduce((a, d) => a * d, 1) * size[b.dtype]!, `${what} buffer ${b.role}`);
  }
}

for (const [rows, cols] of SHAPES) {
  const tag = `[${rows}, ${cols}]`;
  const w = randomMatrix(rows, cols, rows * 1000 + cols);

  test(`dense ${tag}: bf16, f16, f32 round trips`, () => {
    for (const dtype of ['BF16', 'F16', 'F32'] as const) {
      const t = DenseUpgTensor.pack(rows, cols, w, dtype);
      checkBuffers(t, `dense ${dtype} ${tag}`);
      if (dtype === 'F32') exactlyEqual(t.unpack(), w, `dense F32 ${tag}`);
      if (dtype === 'F16') exactlyEqual(t.unpack(), w.map(f16), `dense F16 ${tag}`);
      checkMatmul(t, 1, `dense ${dtype} ${tag}`);
    }
  });

  test(`q8 ${tag}: unpack(pack(W)) is W quantized per row; matmul matches`, () => {
    const t = Q8Tensor.pack(rows, cols, w);
    checkBuffers(t, `q8 ${tag}`);
    exactlyEqual(t.unpack(), expectInt8PerRow(w, rows, cols, () => true), `q8 ${tag}`);
    checkMatmul(t, 2, `q8 ${tag}`);
    const again = Q8Tensor.fromBuffers(rows, cols, new Map(t.buffers().map((b) => [b.role, b.bytes.slice()])));
    exactlyEqual(again.unpack(), t.unpack(), `q8 ${tag} from bytes`);
  });

  for (const group of [32, 64, 128]) {
    test(`q4 g${group} ${tag}: unpack(pack(W)) is W quantized per group; matmul matches`, () => {
      const t = Q4Tensor.pack(rows, cols, w, group);
      checkBuffers(t, `q4 ${tag}`);
      exactlyEqual(t.unpack(), expectQ4(w, rows, cols, group), `q4 g${group} ${tag}`);
      checkMatmul(t, 3, `q4 g${group} ${tag}`);
      const again = Q4Tensor.fromBuffers(rows, cols, group, new Map(t.buffers().map((b) => [b.role, b.bytes.slice()])));
      exactlyEqual(again.unpack(), t.unpack(), `q4 ${tag} from bytes`);
    });
  }

  for (const tile of [32, 64, 128, 256]) {
    test(`bitmap tile ${tile} ${tag}: q8 and q4 values`, () => {
      const p = prune(w, rows, cols, 7, undefined, 0.4);
      for (const bits of [8, 4] as const) {
        const t = BitmapTensor.pack(rows, cols, p, tile, bits);
        checkBuffers(t, `bitmap ${tag}`);
        let want: Float32Array;
        if (bits === 8) want = expectInt8PerRow(p, rows, cols, (i) => p[i] !== 0);
        else {
          const groups: number[][] = [];
          for (let r = 0; r < rows; r++) {
            for (let g = 0; g * tile < cols; g++) {
              const idx = [];
              for (let c = g * tile; c < Math.min(cols, (g + 1) * tile); c++) if (p[r * cols + c] !== 0) idx.push(r * cols + c);
              groups.push(idx);
            }
          }
          want = expectSigned4(p, groups);
        }
        exactlyEqual(t.unpack(), want, `bitmap tile ${tile} bits ${bits} ${tag}`);
        checkMatmul(t, 4, `bitmap tile ${tile} bits ${bits} ${tag}`);
        const again = BitmapTensor.fromBuffers(rows, cols, tile, bits, new Map(t.buffers().map((b) => [b.role, b.bytes.slice()])));
        exactlyEqual(again.unpack(), t.unpack(), `bitmap ${tag} from bytes`);
      }
    });
  }

  for (const [n, m] of [[2, 4], [4, 8]] as [number, number][]) {
    test(`nm ${n}:${m} ${tag}: q8 and q4 (groups 32, 64, 128) values`, () => {
      const p = prune(w, rows, cols, 9, [n, m]);
      for (const [bits, group] of [[8, 0], [4, 32], [4, 64], [4, 128]] as [4 | 8, number][]) {
        const t = NmTensor.pack(rows, cols, p, n, m, bits, group || 64);
        checkBuffers(t, `nm ${tag}`);
        let want: Float32Array;
        if (bits === 8) want = expectInt8PerRow(p, rows, cols, (i) => p[i] !== 0);
        else {
          const groups: number[][] = [];
          for (let r = 0; r < rows; r++) {
            for (let g = 0; g * group < cols; g++) {
              const idx = [];
              for (let c = g * group; c < Math.min(cols, (g + 1) * group); c++) if (p[r * cols + c] !== 0) idx.push(r * cols + c);
              groups.push(idx);
            }
          }
          want = expectSigned4(p, groups);
        }
        exactlyEqual(t.unpack(), want, `nm ${n}:${m} bits ${bits} g${group} ${tag}`);
        checkMatmul(t, 5, `nm ${n}:${m} bits ${bits} ${tag}`);
        const again = NmTensor.fromBuffers(rows, cols, n, m, bits, group || 64, new Map(t.buffers().map((b) => [b.role, b.bytes.slice()])));
        exactlyEqual(again.unpack(), t.unpack(), `nm ${tag} from bytes`);
      }
    });
  }

  test(`csr ${tag}: 10% and 60% density, escapes for long gaps`, () => {
    for (const density of [0.1, 0.6, 0.004]) {
      const p = prune(w, rows, cols, 11, undefined, density);
      const t = CsrTensor.pack(rows, cols, p);
      checkBuffers(t, `csr ${tag}`);
      exactlyEqual(t.unpack(), expectInt8PerRow(p, rows, cols, (i) => p[i] !== 0), `csr density ${density} ${tag}`);
      checkMatmul(t, 6, `csr ${tag}`);
      const again = CsrTensor.fromBuffers(rows, cols, new Map(t.buffers().map((b) => [b.role, b.bytes.slice()])));
      exactlyEqual(again.unpack(), t.unpack(), `csr ${tag} from bytes`);
    }
  });
}

test('csr: a gap of 600 columns is bridged by escape entries', () => {
  const w = new Float32Array(1 * 700);
  w[3] = 0.5;
  w[603] = -0.25;
  const t = CsrTensor.pack(1, 700, w);
  // entries: (3, q), (255, 0), (255, 0), (90, q)
  assert.deepEqual([...t.entries].map((e) => e & 0xff), [3, 255, 255, 90]);
  exactlyEqual(t.unpack(), expectInt8PerRow(w, 1, 700, (i) => w[i] !== 0), 'csr escapes');
});

test('nm: a block with more than n nonzeros is refused', () => {
  assert.throws(() => NmTensor.pack(1, 4, Float32Array.from([1, 2, 3, 0]), 2, 4, 8), /has 3 nonzeros; 2:4 allows 2/);
});

test('row blocks packed separately and joined give the same buffers as packing the whole matrix', () => {
  const rows = 17, cols = 70;
  const w = randomMatrix(rows, cols, 99);
  const splits = [0, 5, 12, 17]; // blocks of 5, 7 and 5 rows
  const unstructured = prune(w, rows, cols, 3, undefined, 0.45);
  const nm = prune(w, rows, cols, 4, [2, 4]);
  const cases: [string, (r: number, m: Float32Array) => EncodedTensor, Float32Array][] = [
    ['dense', (r, m) => DenseUpgTensor.pack(r, cols, m, 'BF16'), w],
    ['q8', (r, m) => Q8Tensor.pack(r, cols, m), w],
    ['q4', (r, m) => Q4Tensor.pack(r, cols, m, 32), w],
    ['bitmap q8', (r, m) => BitmapTensor.pack(r, cols, m, 32, 8), unstructured],
    ['bitmap q4', (r, m) => BitmapTensor.pack(r, cols, m, 64, 4), unstructured],
    ['nm q4', (r, m) => NmTensor.pack(r, cols, m, 2, 4, 4, 32), nm],
    ['nm q8', (r, m) => NmTensor.pack(r, cols, m, 2, 4, 8), nm],
    ['csr', (r, m) => CsrTensor.pack(r, cols, m), unstructured],
  ];
  for (const [what, pack, matrix] of cases) {
    const whole = pack(rows, matrix);
    const joined = concatRowBlocks(splits.slice(1).map((end, i) => pack(end - splits[i]!, matrix.slice(splits[i]! * cols, end * cols))));
    const a = whole.buffers(), b = joined.buffers();
    assert.deepEqual(b.map((x) => [x.role, x.dtype, x.shape]), a.map((x) => [x.role, x.dtype, x.shape]), what);
    for (let i = 0; i < a.length; i++) assert.deepEqual(Buffer.from(b[i]!.bytes), Buffer.from(a[i]!.bytes), `${what} ${a[i]!.role}`);
  }
});

test('upg encodings: sliceRows cuts any row range out of a tensor exactly (every value as unpacked), and concatRows of the slices gives it back', () => {
  const rows = 23, cols = 200;
  const w = randomMatrix(rows, cols, 71), sp = prune(w, rows, cols, 72), nm24 = prune(w, rows, cols, 73, [2, 4]), nm48 = prune(w, rows, cols, 74, [4, 8]);
  const all: { sliceRows(a: number, b: number): EncodedTensor; unpack(): Float32Array }[] = [
    Q8Tensor.pack(rows, cols, w), Q4Tensor.pack(rows, cols, w, 64), CsrTensor.pack(rows, cols, sp), BitmapTensor.pack(rows, cols, sp, 64, 8),
    BitmapTensor.pack(rows, cols, sp, 32, 4), NmTensor.pack(rows, cols, nm24, 2, 4, 8), NmTensor.pack(rows, cols, nm48, 4, 8, 4, 64),
  ];
  for (const t of all) {
    const whole = t.unpack();
    const cuts = [0, 1, 8, 9, 17, rows];
    const parts = cuts.slice(1).map((r1, i) => t.sliceRows(cuts[i]!, r1));
    parts.forEach((p, i) => {
      const r0 = cuts[i]!;
      assert.equal(p.rows, cuts[i + 1]! - r0);
      assert.deepEqual(Array.from(p.unpack()), Array.from(whole.subarray(r0 * cols, cuts[i + 1]! * cols)), `${(t as unknown as EncodedTensor).encoding} rows ${r0}..${cuts[i + 1]}`);
    });
    const back = (t.constructor as unknown as { concatRows(p: EncodedTensor[]): { unpack(): Float32Array } }).concatRows(parts);
    assert.deepEqual(Array.from(back.unpack()), Array.from(whole), `${(t as unknown as EncodedTensor).encoding}: concatRows of the slices`);
  }
});
