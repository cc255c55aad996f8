/**
 * `q4`: 4-bit weights with an f16 scale and minimum per group of `group` inputs (docs/upg-format.md, "q4").
 *   qweight   U32 [rows, groups * group / 8]  nibble c of row r = u[r, c] in 0..15
 *   scale_min F16 [rows, groups, 2]           (scale, min) per group
 *   W[r, c] = fround(fround(u * scale) + min)
 */
import { bytesOf, concatArrays, f16ArrayToF32, matmulByRows, roundToF16, setNibble, unpackByRows, view, type EncodedTensor, type UpgBuffer } from './common.js';
import { ModelFormatError } from '../../../errors.js';

export const Q4_GROUPS = [32, 64, 128];

export class Q4Tensor implements EncodedTensor {
  readonly encoding = 'q4';
  readonly params: { group: number };
  readonly groups: number;
  readonly wordsPerRow: number;
  /** scale_min decoded to float32 once, for the CPU path: (rows, groups, 2). */
  private readonly scaleMinF32: Float32Array;

  constructor(readonly rows: number, readonly cols: number, readonly group: number, readonly qweight: Uint32Array, readonly scaleMin: Uint16Array) {
    if (!Q4_GROUPS.includes(group)) throw new ModelFormatError('q4', `group ${group} is not one of ${Q4_GROUPS.join(', ')}`);
    this.params = { group };
    this.groups = Math.ceil(cols / group);
    this.wordsPerRow = (this.groups * group) / 8;
    if (qweight.length !== rows * this.wordsPerRow || scaleMin.length !== rows * this.groups * 2) throw new Error(`Q4Tensor: buffers do not match [${rows}, ${cols}] g${group}`);
    this.scaleMinF32 = f16ArrayToF32(scaleMin);
  }

  static pack(rows: number, cols: number, w: Float32Array, group: number): Q4Tensor {
    const groups = Math.ceil(cols / group);
    const wordsPerRow = (groups * group) / 8;
    const qweight = new Uint32Array(rows * wordsPerRow);
    const scaleMin = new Uint16Array(rows * groups * 2);
    for (let r = 0; r < rows; r++) {
      const words = qweight.subarray(r * wordsPerRow, (r + 1) * wordsPerRow);
      for (let g = 0; g < groups; g++) {
        const begin = r * cols + g * group, end = r * cols + Math.min(cols, (g + 1) * group);
        let lo = Infinity, hi = -Infinity;
        for (let i = begin; i < end; i++) {
          lo = Math.min(lo, w[i]!);
          hi = Math.max(hi, w[i]!);
        }
        const min = roundToF16(lo);
        const scale = roundToF16((hi - min.value) / 15);
        scaleMin[(r * groups + g) * 2] = scale.bits;
        scaleMin[(r * groups + g) * 2 + 1] = min.bits;
        for (let i = begin; i < end; i++) {
          const u = scale.value === 0 ? 0 : Math.max(0, Math.min(15, Math.round((w[i]! - min.value) / scale.value)));
          setNibble(words, i - r * cols, u);
        }
      }
    }
    return new Q4Tensor(rows, cols, group, qweight, scaleMin);
  }

  /** Rows r0 .. r1 - 1 as a tensor of their own (views of these buffers; the inverse of concatRows). */
  sliceRows(r0: number, r1: number): Q4Tensor {
    return new Q4Tensor(r1 - r0, this.cols, this.group, this.qweight.subarray(r0 * this.wordsPerRow, r1 * this.wordsPerRow), this.scaleMin.subarray(r0 * this.groups * 2, r1 * this.groups * 2));
  }

  static concatRows(parts: Q4Tensor[]): Q4Tensor {
    const rows = parts.reduce((a, p) => a + p.rows, 0);
    return new Q4Tensor(rows, parts[0]!.cols, parts[0]!.group, concatArrays(parts.map((p) => p.qweight)), concatArrays(parts.map((p) => p.scaleMin)));
  }

  static expectedBuffers(rows: number, cols: number, group: number): Omit<UpgBuffer, 'bytes'>[] {
    const groups = Math.ceil(cols / group);
    return [
      { role: 'qweight', dtype: 'U32', shape: [rows, (groups * group) / 8] },
      { role: 'scale_min', dtype: 'F16', shape: [rows, groups, 2] },
    ];
  }

  static fromBuffers(rows: number, cols: number, group: number, b: Map<string, Uint8Array>): Q4Tensor {
    return new Q4Tensor(rows, cols, group, view(b.get('qweight')!, Uint32Array), view(b.get('scale_min')!, Uint16Array));
  }

  buffers(): UpgBuffer[] {
    const [q, s] = Q4Tensor.expectedBuffers(this.rows, this.cols, this.group);
    return [{ ...q!, bytes: bytesOf(this.qweight) }, { ...s!, bytes: bytesOf(this.scaleMin) }];
  }

  get byteLength(): number {
    return this.qweight.byteLength + this.scaleMin.byteLength;
  }

  decodeRow(r: number, out: Float32Array): void {
    const words = this.qweight.subarray(r * this.wordsPerRow, (r + 1) * this.wordsPerRow);
    const sm = this.scaleMinF32;
    const cols = this.cols;
    for (let g = 0; g < this.groups; g++) {
      const scale = sm[(r * this.groups + g) * 2]!, min = sm[(r * this.groups + g) * 2 + 1]!;
      // hot loop: a word at a time, 8 nibbles each (the group's tail past cols is skipped)
      for (let c = g * this.group; c < Math.min(cols, (g + 1) * this.group); c += 8) {
        let word = words[c >>> 3]!;
        const end = Math.min(8, cols - c);
        for (let k = 0; k < end; k++, word >>>= 4) out[c + k] = Math.fround((word & 15) * scale) + min;
      }
    }
  }

  unpack(): Float32Array {
    return unpackByRows(this.rows, this.cols, (r, out) => this.decodeRow(r, out));
  }

  matmul(x: Float32Array, T: number, y: Float32Array, yStride: number, yOffset: number): void {
    if (T >= 4) return matmulByRows(this.rows, this.cols, (r, out) => this.decodeRow(r, out), x, T, y, yStride, yOffset);
    // decode (T < 4): per group, y += scale * sum(u * x) + min * sum(x), straight from the nibbles
    const { rows, cols, group, groups, wordsPerRow, qweight: q } = this;
    const sm = this.scaleMinF32;
    const xSums = new Float32Array(groups); // (groups) sum of x over each group
    for (let t = 0; t < T; t++) {
      const xo = t * cols;
      xSums.fill(0);
      for (let c = 0; c < cols; c++) xSums[Math.floor(c / group)] += x[xo + c]!;
      for (let r = 0; r < rows; r++) {
        let acc = 0;
        for (let g = 0; g < groups; g++) {
          let dot = 0;
          const end = Math.min(cols, (g + 1) * group);
          for (let c = g * group; c < end; c += 8) {
            let word = q[r * wordsPerRow + (c >>> 3)]!;
            const n = Math.min(8, end - c);
            // hot loop: 8 nibbles of one word
            for (let k = 0; k < n; k++, word >>>= 4) dot += (word & 15) * x[xo + c + k]!;
          }
          acc += dot * sm[(r * groups + g) * 2]! + xSums[g]! * sm[(r * groups + g) * 2 + 1]!;
        }
        y[t * yStride + yOffset + r] = acc;
      }
    }
  }

  /**
   * Batched decoding: the T < 4 arithmetic above for each row (the same sums in the same order), eight
   * (then four) rows of x at a time sharing each word's nibbles: independent sums keep the FPU busy.
   * x is read as float64 (the same values, converted once instead of at every use).
   */
  matmulRows(x: Float32Array, T: number, y: Float32Array, yStride: number, yOffset: number): void {
    const { cols, group, groups } = this;
    const xSums = new Float32Array(T * groups); // (T, groups) sum of x over each group
    for (let t = 0; t < T; t++) for (let c = 0; c < cols; c++) xSums[t * groups + Math.floor(c / group)] += x[t * cols + c]!;
    const x64 = Float64Array.from(x.subarray(0, T * cols));
    let t = 0;
    for (; t + 8 <= T; t += 8) this.rowsOf8(x64, xSums, t, y, yStride, yOffset);
    for (; t + 4 <= T; t += 4) this.rowsOf4(x64, xSums, t, y, yStride, yOffset);
    for (; t < T; t++) this.matmul(x.subarray(t * cols, (t + 1) * cols), 1, y, yStride, yOffset + t * yStride);
  }

  private rowsOf8(x: Float64Array, xSums: Float32Array, t: number, y: Float32Array, yStride: number, yOffset: number): void {
    const { rows, cols, group, groups, wordsPerRow, qweight: q } = this;
    const sm = this.scaleMinF32;
    const x0 = t * cols, x1 = x0 + cols, x2 = x1 + cols, x3 = x2 + cols, x4 = x3 + cols, x5 = x4 + cols, x6 = x5 + cols, x7 = x6 + cols;
    for (let r = 0; r < rows; r++) {
      let a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
      for (let g = 0; g < groups; g++) {
        let d0 = 0, d1 = 0, d2 = 0, d3 = 0, d4 = 0, d5 = 0, d6 = 0, d7 = 0;
        const end = Math.min(cols, (g + 1) * group);
        for (let c = g * group; c < end; c += 8) {
          let word = q[r * wordsPerRow + (c >>> 3)]!;
          const n = Math.min(8, end - c);
          // hot loop: one nibble, eight rows of x
          for (let k = 0; k < n; k++, word >>>= 4) {
            const u = word & 15, i = c + k;
            d0 += u * x[x0 + i]!; d1 += u * x[x1 + i]!; d2 += u * x[x2 + i]!; d3 += u * x[x3 + i]!;
            d4 += u * x[x4 + i]!; d5 += u * x[x5 + i]!; d6 += u * x[x6 + i]!; d7 += u * x[x7 + i]!;
          }
        }
        const scale = sm[(r * groups + g) * 2]!, min = sm[(r * groups + g) * 2 + 1]!;
        const b = t * groups + g;
        a0 += d0 * scale + xSums[b]! * min;
        a1 += d1 * scale + xSums[b + groups]! * min;
        a2 += d2 * scale + xSums[b + 2 * groups]! * min;
        a3 += d3 * scale + xSums[b + 3 * groups]! * min;
        a4 += d4 * scale + xSums[b + 4 * groups]! * min;
        a5 += d5 * scale + xSums[b + 5 * groups]! * min;
        a6 += d6 * scale + xSums[b + 6 * groups]! * min;
        a7 += d7 * scale + xSums[b + 7 * groups]! * min;
      }
      const o = t * yStride + yOffset + r;
      y[o] = a0; y[o + yStride] = a1; y[o + 2 * yStride] = a2; y[o + 3 * yStride] = a3;
      y[o + 4 * yStride] = a4; y[o + 5 * yStride] = a5; y[o + 6 * yStride] = a6; y[o + 7 * yStride] = a7;
    }
  }

  private rowsOf4(x: Float64Array, xSums: Float32Array, t: number, y: Float32Array, yStride: number, yOffset: number): void {
    const { rows, cols, group, groups, wordsPerRow, qweight: q } = this;
    const sm = this.scaleMinF32;
    const x0 = t * cols, x1 = x0 + cols, x2 = x1 + cols, x3 = x2 + cols;
    for (let r = 0; r < rows; r++) {
      let a0 = 0, a1 = 0, a2 = 0, a3 = 0;
      for (let g = 0; g < groups; g++) {
        let d0 = 0, d1 = 0, d2 = 0, d3 = 0;
        const end = Math.min(cols, (g + 1) * group);
        for (let c = g * group; c < end; c += 8) {
          let word = q[r * wordsPerRow + (c >>> 3)]!;
          const n = Math.min(8, end - c);
          for (let k = 0; k < n; k++, word >>>= 4) {
            const u = word & 15, i = c + k;
            d0 += u * x[x0 + i]!; d1 += u * x[x1 + i]!; d2 += u * x[x2 + i]!; d3 += u * x[x3 + i]!;
          }
        }
        const scale = sm[(r * groups + g) * 2]!, min = sm[(r * groups + g) * 2 + 1]!;
        const b = t * groups + g;
        a0 += d0 * scale + xSums[b]! * min;
        a1 += d1 * scale + xSums[b + groups]! * min;
        a2 += d2 * scale + xSums[b + 2 * groups]! * min;
        a3 += d3 * scale + xSums[b + 3 * groups]! * min;
      }
      const o = t * yStride + yOffset + r;
      y[o] = a0; y[o + yStride] = a1; y[o + 2 * yStride] = a2; y[o + 3 * yStride] = a3;
    }
  }

  readRow(r: number, out: Float32Array): void {
    this.decodeRow(r, out);
  }
}
