/**
 * `q8`: int8 weights with one float32 scale per output row (docs/upg-format.md, "q8").
 *   qweight I8 [rows, stride = roundUp(cols, 4)], scales F32 [rows];  W[r, c] = q[r, c] * scales[r]
 */
import { bytesOf, concatArrays, int8Quantize, int8Scale, matmulByRows, roundUp, unpackByRows, view, type EncodedTensor, type UpgBuffer } from './common.js';

export class Q8Tensor implements EncodedTensor {
  readonly encoding = 'q8';
  readonly params = {};
  readonly stride: number;

  constructor(readonly rows: number, readonly cols: number, readonly qweight: Int8Array, readonly scales: Float32Array) {
    this.stride = roundUp(cols, 4);
    if (qweight.length !== rows * this.stride || scales.length !== rows) throw new Error(`Q8Tensor: buffers do not match [${rows}, ${cols}]`);
  }

  /** Quantizes a float32 [rows, cols] matrix. */
  static pack(rows: number, cols: number, w: Float32Array): Q8Tensor {
    const stride = roundUp(cols, 4);
    const qweight = new Int8Array(rows * stride);
    const scales = new Float32Array(rows);
    for (let r = 0; r < rows; r++) {
      const scale = int8Scale(w, r * cols, (r + 1) * cols);
      scales[r] = scale;
      for (let c = 0; c < cols; c++) qweight[r * stride + c] = int8Quantize(w[r * cols + c]!, scale);
    }
    return new Q8Tensor(rows, cols, qweight, scales);
  }

  /** The tensor of consecutive row blocks packed separately (the compressor packs big matrices a block at a time). */
  /** Rows r0 .. r1 - 1 as a tensor of their own (views of these buffers; the inverse of concatRows). */
  sliceRows(r0: number, r1: number): Q8Tensor {
    return new Q8Tensor(r1 - r0, this.cols, this.qweight.subarray(r0 * this.stride, r1 * this.stride), this.scales.subarray(r0, r1));
  }

  static concatRows(parts: Q8Tensor[]): Q8Tensor {
    const rows = parts.reduce((a, p) => a + p.rows, 0);
    return new Q8Tensor(rows, parts[0]!.cols, concatArrays(parts.map((p) => p.qweight)), concatArrays(parts.map((p) => p.scales)));
  }

  static fromBuffers(rows: number, cols: number, b: Map<string, Uint8Array>): Q8Tensor {
    return new Q8Tensor(rows, cols, view(b.get('qweight')!, Int8Array), view(b.get('scales')!, Float32Array));
  }

  static expectedBuffers(rows: number, cols: number): Omit<UpgBuffer, 'bytes'>[] {
    return [
      { role: 'qweight', dtype: 'I8', shape: [rows, roundUp(cols, 4)] },
      { role: 'scales', dtype: 'F32', shape: [rows] },
    ];
  }

  buffers(): UpgBuffer[] {
    const [q, s] = Q8Tensor.expectedBuffers(this.rows, this.cols);
    return [{ ...q!, bytes: bytesOf(this.qweight) }, { ...s!, bytes: bytesOf(this.scales) }];
  }

  get byteLength(): number {
    return this.qweight.byteLength + this.scales.byteLength;
  }

  decodeRow(r: number, out: Float32Array): void {
    const scale = this.scales[r]!;
    const base = r * this.stride;
    for (let c = 0; c < this.cols; c++) out[c] = this.qweight[base + c]! * scale;
  }

  unpack(): Float32Array {
    return unpackByRows(this.rows, this.cols, (r, out) => this.decodeRow(r, out));
  }

  matmul(x: Float32Array, T: number, y: Float32Array, yStride: number, yOffset: number): void {
    if (T >= 4) return matmulByRows(this.rows, this.cols, (r, out) => this.decodeRow(r, out), x, T, y, yStride, yOffset);
    // decode (T < 4): y[r] = scales[r] * sum_c q[r, c] * x[c], straight from the int8 row
    const { rows, cols, stride, qweight: q, scales } = this;
    for (let t = 0; t < T; t++) {
      const xo = t * cols;
      for (let r = 0; r < rows; r++) {
        const base = r * stride;
        let s0 = 0, s1 = 0;
        let c = 0;
        for (; c + 2 <= cols; c += 2) {
          s0 += q[base + c]! * x[xo + c]!;
          s1 += q[base + c + 1]! * x[xo + c + 1]!;
        }
        if (c < cols) s0 += q[base + c]! * x[xo + c]!;
        y[t * yStride + yOffset + r] = (s0 + s1) * scales[r]!;
      }
    }
  }

  // batched decoding: the T < 4 arithmetic above for each row, four rows of x at a time sharing each int8 read
  matmulRows(x: Float32Array, T: number, y: Float32Array, yStride: number, yOffset: number): void {
    const { rows, cols, stride, qweight: q, scales } = this;
    let t = 0;
    for (; t + 4 <= T; t += 4) {
      const x0 = t * cols, x1 = x0 + cols, x2 = x1 + cols, x3 = x2 + cols;
      for (let r = 0; r < rows; r++) {
        const base = r * stride;
        let a0 = 0, b0 = 0, a1 = 0, b1 = 0, a2 = 0, b2 = 0, a3 = 0, b3 = 0;
        let c = 0;
        for (; c + 2 <= cols; c += 2) {
          const qa = q[base + c]!, qb = q[base + c + 1]!;
          a0 += qa * x[x0 + c]!; b0 += qb * x[x0 + c + 1]!;
          a1 += qa * x[x1 + c]!; b1 += qb * x[x1 + c + 1]!;
          a2 += qa * x[x2 + c]!; b2 += qb * x[x2 + c + 1]!;
          a3 += qa * x[x3 + c]!; b3 += qb * x[x3 + c + 1]!;
        }
        if (c < cols) {
          const qa = q[base + c]!;
          a0 += qa * x[x0 + c]!; a1 += qa * x[x1 + c]!; a2 += qa * x[x2 + c]!; a3 += qa * x[x3 + c]!;
        }
        const o = t * yStride + yOffset + r, sc = scales[r]!;
        y[o] = (a0 + b0) * sc;
        y[o + yStride] = (a1 + b1) * sc;
        y[o + 2 * yStride] = (a2 + b2) * sc;
        y[o + 3 * yStride] = (a3 + b3) * sc;
      }
    }
    for (; t < T; t++) this.matmul(x.subarray(t * cols, (t + 1) * cols), 1, y, yStride, yOffset + t * yStride);
  }

  readRow(r: number, out: Float32Array): void {
    this.decodeRow(r, out);
  }
}
