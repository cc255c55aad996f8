/**
 * `csr`: the seed design's "MdCSR" (docs/upg-format.md, "csr"): int8 values with 8-bit delta-coded
 * column indices, row pointers and per-row scales.
 *   row_ptr U32 [rows + 1]
 *   entries U16 [count]   low byte: column delta (u8), high byte: int8 value
 *   scales  F32 [rows]
 * Gaps over 255 columns are bridged by escape entries (delta 255, value 0).
 */
import { bytesOf, concatArrays, int8Quantize, int8Scale, matmulByRows, unpackByRows, view, type EncodedTensor, type UpgBuffer } from './common.js';

const MAX_DELTA = 255;

export class CsrTensor implements EncodedTensor {
  readonly encoding = 'csr';
  readonly params = {};

  constructor(readonly rows: number, readonly cols: number, readonly rowPtr: Uint32Array, readonly entries: Uint16Array, readonly scales: Float32Array) {
    if (rowPtr.length !== rows + 1 || scales.length !== rows || rowPtr[rows] !== entries.length) throw new Error(`CsrTensor: buffers do not match [${rows}, ${cols}]`);
  }

  /** Stores the nonzeros of w (zeros are the pruned weights). */
  static pack(rows: number, cols: number, w: Float32Array): CsrTensor {
    const rowPtr = new Uint32Array(rows + 1);
    const scales = new Float32Array(rows);
    const entries: number[] = [];
    for (let r = 0; r < rows; r++) {
      rowPtr[r] = entries.length;
      const base = r * cols;
      scales[r] = int8Scale(w, base, base + cols);
      let col = 0;
      for (let c = 0; c < cols; c++) {
        const v = w[base + c]!;
        if (v === 0) continue;
        while (c - col > MAX_DELTA) {
          entries.push(MAX_DELTA); // escape: move on 255 columns, value 0
          col += MAX_DELTA;
        }
        const q = int8Quantize(v, scales[r]!);
        entries.push((c - col) | ((q & 0xff) << 8));
        col = c;
      }
    }
    rowPtr[rows] = entries.length;
    return new CsrTensor(rows, cols, rowPtr, Uint16Array.from(entries), scales);
  }

  /** Row pointers of later blocks move on by the entries before them. */
  static concatRows(parts: CsrTensor[]): CsrTensor {
    const rows = parts.reduce((a, p) => a + p.rows, 0);
    const rowPtr = new Uint32Array(rows + 1);
    let r = 0, base = 0;
    for (const p of parts) {
      for (let i = 0; i < p.rows; i++) rowPtr[r + i] = base + p.rowPtr[i]!;
      r += p.rows;
      base += p.entries.length;
    }
    rowPtr[rows] = base;
    return new CsrTensor(rows, parts[0]!.cols, rowPtr, concatArrays(parts.map((p) => p.entries)), concatArrays(parts.map((p) => p.scales)));
  }

  /** Rows r0 .. r1 - 1 as a tensor of their own (the inverse of concatRows; buffers are views where they can be). */
  sliceRows(r0: number, r1: number): CsrTensor {
    const a = this.rowPtr[r0]!, b = this.rowPtr[r1]!;
    const rowPtr = this.rowPtr.slice(r0, r1 + 1).map((p) => p - a);
    return new CsrTensor(r1 - r0, this.cols, rowPtr, this.entries.subarray(a, b), this.scales.subarray(r0, r1));
  }

  static expectedBuffers(rows: number, count: number): Omit<UpgBuffer, 'bytes'>[] {
    return [
      { role: 'row_ptr', dtype: 'U32', shape: [rows + 1] },
      { role: 'entries', dtype: 'U16', shape: [count] },
      { role: 'scales', dtype: 'F32', shape: [rows] },
    ];
  }

  static fromBuffers(rows: number, cols: number, b: Map<string, Uint8Array>): CsrTensor {
    return new CsrTensor(rows, cols, view(b.get('row_ptr')!, Uint32Array), view(b.get('entries')!, Uint16Array), view(b.get('scales')!, Float32Array));
  }

  buffers(): UpgBuffer[] {
    const [p, e, s] = CsrTensor.expectedBuffers(this.rows, this.entries.length);
    return [{ ...p!, bytes: bytesOf(this.rowPtr) }, { ...e!, bytes: bytesOf(this.entries) }, { ...s!, bytes: bytesOf(this.scales) }];
  }

  get byteLength(): number {
    return this.rowPtr.byteLength + this.entries.byteLength + this.scales.byteLength;
  }

  decodeRow(r: number, out: Float32Array): void {
    out.fill(0, 0, this.cols);
    const scale = this.scales[r]!;
    let col = 0;
    for (let i = this.rowPtr[r]!; i < this.rowPtr[r + 1]!; i++) {
      const e = this.entries[i]!;
      col += e & 0xff;
      const q = (e << 16) >> 24; // sign-extend the high byte
      if (q !== 0) out[col] = q * scale;
    }
  }

  unpack(): Float32Array {
    return unpackByRows(this.rows, this.cols, (r, out) => this.decodeRow(r, out));
  }

  matmul(x: Float32Array, T: number, y: Float32Array, yStride: number, yOffset: number): void {
    if (T >= 4) return matmulByRows(this.rows, this.cols, (r, out) => this.decodeRow(r, out), x, T, y, yStride, yOffset);
    // decode (T < 4): only the stored entries are visited
    const { rows, rowPtr, entries, scales } = this;
    for (let t = 0; t < T; t++) {
      const xo = t * this.cols;
      for (let r = 0; r < rows; r++) {
        let s = 0;
        let col = xo;
        for (let i = rowPtr[r]!; i < rowPtr[r + 1]!; i++) {
          const e = entries[i]!;
          col += e & 0xff;
          s += ((e << 16) >> 24) * x[col]!;
        }
        y[t * yStride + yOffset + r] = s * scales[r]!;
      }
    }
  }

  readRow(r: number, out: Float32Array): void {
    this.decodeRow(r, out);
  }
}
