/**
 * A weight matrix in some encoding. Every encoding keeps its reference product next to its data, so the
 * CPU backend is just "call matmul", and the GPU backend reads the same buffers with its own kernels.
 */
export interface WeightTensor {
  /** 'dense' or a UPG encoding name ('q8', 'q4', 'bitmap', 'nm', 'csr'). */
  readonly encoding: string;
  /** Output features (rows of the [rows, cols] matrix, as in torch's Linear.weight). */
  readonly rows: number;
  /** Input features. */
  readonly cols: number;
  /** Bytes the stored encoding takes (weights, indices and scales). */
  readonly byteLength: number;
  /**
   * Reference product for T input vectors x: [T, cols] (row-major):
   *   y[t * yStride + yOffset + r] = sum_c W[r, c] * x[t * cols + c]   for t < T, r < rows.
   */
  matmul(x: Float32Array, T: number, y: Float32Array, yStride: number, yOffset: number): void;
  /**
   * The same product where each of the T rows gets exactly the arithmetic of `matmul` with T = 1 (so a
   * row's result never depends on which other rows share the call), each weight read once for all T.
   * Batched decoding uses it; absent, `matmulEachRow()` calls matmul once per row.
   */
  matmulRows?(x: Float32Array, T: number, y: Float32Array, yStride: number, yOffset: number): void;
  /** Row r as float32 (embedding lookup). */
  readRow(r: number, out: Float32Array): void;
}

/** Dense float32 weights, row-major [rows, cols]. */
export class DenseTensor implements WeightTensor {
  readonly encoding = 'dense';
  constructor(readonly rows: number, readonly cols: number, readonly data: Float32Array, readonly storedDtype: 'F32' | 'F16' | 'BF16' = 'F32') {
    if (data.length !== rows * cols) throw new Error(`DenseTensor: ${data.length} values for [${rows}, ${cols}]`);
  }

  get byteLength(): number {
    return this.data.length * (this.storedDtype === 'F32' ? 4 : 2);
  }

  // hot loop: four tokens share each weight row read, four partial sums hide FP latency.
  matmul(x: Float32Array, T: number, y: Float32Array, yStride: number, yOffset: number): void {
    const { rows, cols, data: w } = this;
    let t = 0;
    for (; t + 4 <= T; t += 4) {
      const x0 = t * cols, x1 = x0 + cols, x2 = x1 + cols, x3 = x2 + cols;
      for (let r = 0; r < rows; r++) {
        const wr = r * cols;
        let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (let c = 0; c < cols; c++) {
          const wv = w[wr + c]!;
          s0 += wv * x[x0 + c]!;
          s1 += wv * x[x1 + c]!;
          s2 += wv * x[x2 + c]!;
          s3 += wv * x[x3 + c]!;
        }
        const o = t * yStride + yOffset + r;
        y[o] = s0;
        y[o + yStride] = s1;
        y[o + 2 * yStride] = s2;
        y[o + 3 * yStride] = s3;
      }
    }
    for (; t < T; t++) {
      const xo = t * cols;
      for (let r = 0; r < rows; r++) {
        const wr = r * cols;
        let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        let c = 0;
        for (; c + 4 <= cols; c += 4) {
          s0 += w[wr + c]! * x[xo + c]!;
          s1 += w[wr + c + 1]! * x[xo + c + 1]!;
          s2 += w[wr + c + 2]! * x[xo + c + 2]!;
          s3 += w[wr + c + 3]! * x[xo + c + 3]!;
        }
        for (; c < cols; c++) s0 += w[wr + c]! * x[xo + c]!;
        y[t * yStride + yOffset + r] = s0 + s1 + (s2 + s3);
      }
    }
  }

  // hot loop of batched decoding: the T = 1 arithmetic above (four partial sums) for each row, two
  // rows of x at a time sharing each weight read
  matmulRows(x: Float32Array, T: number, y: Float32Array, yStride: number, yOffset: number): void {
    const { rows, cols, data: w } = this;
    let t = 0;
    for (; t + 2 <= T; t += 2) {
      const x0 = t * cols, x1 = x0 + cols;
      for (let r = 0; r < rows; r++) {
        const wr = r * cols;
        let s0 = 0, s1 = 0, s2 = 0, s3 = 0, u0 = 0, u1 = 0, u2 = 0, u3 = 0;
        let c = 0;
        for (; c + 4 <= cols; c += 4) {
          const w0 = w[wr + c]!, w1 = w[wr + c + 1]!, w2 = w[wr + c + 2]!, w3 = w[wr + c + 3]!;
          s0 += w0 * x[x0 + c]!; s1 += w1 * x[x0 + c + 1]!; s2 += w2 * x[x0 + c + 2]!; s3 += w3 * x[x0 + c + 3]!;
          u0 += w0 * x[x1 + c]!; u1 += w1 * x[x1 + c + 1]!; u2 += w2 * x[x1 + c + 2]!; u3 += w3 * x[x1 + c + 3]!;
        }
        for (; c < cols; c++) {
          s0 += w[wr + c]! * x[x0 + c]!;
          u0 += w[wr + c]! * x[x1 + c]!;
        }
        const o = t * yStride + yOffset + r;
        y[o] = s0 + s1 + (s2 + s3);
        y[o + yStride] = u0 + u1 + (u2 + u3);
      }
    }
    for (; t < T; t++) this.matmul(x.subarray(t * cols, (t + 1) * cols), 1, y, yStride, yOffset + t * yStride);
  }

  readRow(r: number, out: Float32Array): void {
    out.set(this.data.subarray(r * this.cols, (r + 1) * this.cols));
  }
}

/** y = x W^T for T rows, each row with the arithmetic of a one-row product (see WeightTensor.matmulRows). */
export function matmulEachRow(w: WeightTensor, x: Float32Array, T: number, y: Float32Array, yStride: number, yOffset: number): void {
  if (w.matmulRows) return w.matmulRows(x, T, y, yStride, yOffset);
  for (let t = 0; t < T; t++) w.matmul(x.subarray(t * w.cols, (t + 1) * w.cols), 1, y, yStride, yOffset + t * yStride);
}
