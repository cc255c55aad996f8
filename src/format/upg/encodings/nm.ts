/**
 * `nm`: N:M structured sparsity, 2:4 or 4:8 (docs/upg-format.md, "nm"). Every aligned block of m columns
 * stores exactly n values, so values sit at fixed places; their positions are one mask bit per column.
 *   mask   U32 [rows, ceil(width / 32)]          exactly n bits set per block
 *   values I8 [rows, roundUp(perRow, 4)] (bits 8) | U32 [rows, perRow / 8] nibbles q + 8 (bits 4)
 *   scales F32 [rows] (bits 8) | F16 [rows, width / group] (bits 4)
 * with width = roundUp(cols, bits == 4 ? group : m), perRow = width / m * n.
 */
import { ModelFormatError } from '../../../errors.js';
import {
  bytesOf, concatArrays, f16ArrayToF32, getNibble, int8Quantize, int8Scale, matmulByRows, roundUp, setNibble, signed4Quantize, signed4Scale,
  unpackByRows, view, type EncodedTensor, type UpgBuffer,
} from './common.js';

export const NM_PATTERNS: [number, number][] = [[2, 4], [4, 8]];
export const NM_GROUPS = [32, 64, 128];

interface NmShape {
  width: number;
  perRow: number;
  maskWords: number;
  valueStride: number; // bytes (bits 8) or words (bits 4) per row
  groups: number;
}

function nmShape(cols: number, n: number, m: number, bits: number, group: number): NmShape {
  const width = roundUp(cols, bits === 4 ? group : m);
  const perRow = (width / m) * n;
  return {
    width,
    perRow,
    maskWords: Math.ceil(width / 32),
    valueStride: bits === 8 ? roundUp(perRow, 4) : perRow / 8,
    groups: bits === 4 ? width / group : 0,
  };
}

export class NmTensor implements EncodedTensor {
  readonly encoding = 'nm';
  readonly params: Record<string, number>;
  readonly shape: NmShape;
  private readonly scalesF32: Float32Array;

  constructor(
    readonly rows: number,
    readonly cols: number,
    readonly n: number,
    readonly m: number,
    readonly bits: 4 | 8,
    readonly group: number,
    readonly mask: Uint32Array,
    readonly values: Int8Array | Uint32Array,
    readonly scales: Float32Array | Uint16Array,
  ) {
    if (!NM_PATTERNS.some(([a, b]) => a === n && b === m)) throw new ModelFormatError('nm', `pattern ${n}:${m} is not 2:4 or 4:8`);
    if (bits === 4 && !NM_GROUPS.includes(group)) throw new ModelFormatError('nm', `group ${group} is not one of ${NM_GROUPS.join(', ')}`);
    this.params = bits === 4 ? { n, m, bits, group } : { n, m, bits };
    this.shape = nmShape(cols, n, m, bits, group);
    this.scalesF32 = scales instanceof Float32Array ? scales : f16ArrayToF32(scales);
    const s = this.shape;
    if (mask.length !== rows * s.maskWords || values.length !== rows * s.valueStride) throw new Error(`NmTensor: buffers do not match [${rows}, ${cols}]`);
  }

  /**
   * Stores w, whose zeros are the pruned weights: each block must hold at most n nonzeros. Blocks with
   * fewer keep zeros at their first free positions, so every block has exactly n stored values.
   */
  static pack(rows: number, cols: number, w: Float32Array, n: number, m: number, bits: 4 | 8, group = 64): NmTensor {
    const s = nmShape(cols, n, m, bits, group);
    const mask = new Uint32Array(rows * s.maskWords);
    const picked = new Float32Array(rows * s.perRow); // (rows, perRow) the stored values before quantization
    for (let r = 0; r < rows; r++) {
      for (let b = 0; b < s.width / m; b++) {
        const nonzero: number[] = [];
        const zero: number[] = [];
        for (let c = b * m; c < (b + 1) * m; c++) (c < cols && w[r * cols + c] !== 0 ? nonzero : zero).push(c);
        if (nonzero.length > n) throw new Error(`nm pack: row ${r}, block ${b} has ${nonzero.length} nonzeros; ${n}:${m} allows ${n}`);
        const cols_ = [...nonzero, ...zero.slice(0, n - nonzero.length)].sort((a, c) => a - c);
        cols_.forEach((c, k) => {
          const wi = r * s.maskWords + (c >>> 5);
          mask[wi] = mask[wi]! | (1 << (c & 31));
          picked[r * s.perRow + b * n + k] = c < cols ? w[r * cols + c]! : 0;
        });
      }
    }
    if (bits === 8) {
      const values = new Int8Array(rows * s.valueStride);
      const scales = new Float32Array(rows);
      for (let r = 0; r < rows; r++) {
        scales[r] = int8Scale(picked, r * s.perRow, (r + 1) * s.perRow);
        for (let i = 0; i < s.perRow; i++) values[r * s.valueStride + i] = int8Quantize(picked[r * s.perRow + i]!, scales[r]!);
      }
      return new NmTensor(rows, cols, n, m, bits, group, mask, values, scales);
    }
    const values = new Uint32Array(rows * s.valueStride);
    const scales = new Uint16Array(rows * s.groups);
    const perGroup = (group / m) * n;
    for (let r = 0; r < rows; r++) {
      const words = values.subarray(r * s.valueStride, (r + 1) * s.valueStride);
      for (let g = 0; g < s.groups; g++) {
        const begin = r * s.perRow + g * perGroup;
        const scale = signed4Scale(picked, null, begin, begin + perGroup);
        scales[r * s.groups + g] = scale.bits;
        for (let i = 0; i < perGroup; i++) setNibble(words, g * perGroup + i, signed4Quantize(picked[begin + i]!, scale.value) + 8);
      }
    }
    return new NmTensor(rows, cols, n, m, bits, group, mask, values, scales);
  }

  static concatRows(parts: NmTensor[]): NmTensor {
    const p0 = parts[0]!;
    const rows = parts.reduce((a, p) => a + p.rows, 0);
    const values = p0.bits === 8 ? concatArrays(parts.map((p) => p.values as Int8Array)) : concatArrays(parts.map((p) => p.values as Uint32Array));
    const scales = p0.bits === 8 ? concatArrays(parts.map((p) => p.scales as Float32Array)) : concatArrays(parts.map((p) => p.scales as Uint16Array));
    return new NmTensor(rows, p0.cols, p0.n, p0.m, p0.bits, p0.group, concatArrays(parts.map((p) => p.mask)), values, scales);
  }

  /** Rows r0 .. r1 - 1 as a tensor of their own (the inverse of concatRows; views of these buffers). */
  sliceRows(r0: number, r1: number): NmTensor {
    const s = this.shape;
    const scalesPerRow = this.bits === 8 ? 1 : s.groups;
    return new NmTensor(
      r1 - r0, this.cols, this.n, this.m, this.bits, this.group, this.mask.subarray(r0 * s.maskWords, r1 * s.maskWords),
      this.values.subarray(r0 * s.valueStride, r1 * s.valueStride), this.scales.subarray(r0 * scalesPerRow, r1 * scalesPerRow),
    );
  }

  static expectedBuffers(rows: number, cols: number, n: number, m: number, bits: number, group: number): Omit<UpgBuffer, 'bytes'>[] {
    const s = nmShape(cols, n, m, bits, group);
    return [
      { role: 'mask', dtype: 'U32', shape: [rows, s.maskWords] },
      bits === 8 ? { role: 'values', dtype: 'I8', shape: [rows, s.valueStride] } : { role: 'values', dtype: 'U32', shape: [rows, s.valueStride] },
      bits === 8 ? { role: 'scales', dtype: 'F32', shape: [rows] } : { role: 'scales', dtype: 'F16', shape: [rows, s.groups] },
    ];
  }

  static fromBuffers(rows: number, cols: number, n: number, m: number, bits: 4 | 8, group: number, b: Map<string, Uint8Array>): NmTensor {
    const values = bits === 8 ? view(b.get('values')!, Int8Array) : view(b.get('values')!, Uint32Array);
    const scales = bits === 8 ? view(b.get('scales')!, Float32Array) : view(b.get('scales')!, Uint16Array);
    return new NmTensor(rows, cols, n, m, bits, group, view(b.get('mask')!, Uint32Array), values, scales);
  }

  buffers(): UpgBuffer[] {
    const [mk, v, s] = NmTensor.expectedBuffers(this.rows, this.cols, this.n, this.m, this.bits, this.group);
    return [{ ...mk!, bytes: bytesOf(this.mask) }, { ...v!, bytes: bytesOf(this.values) }, { ...s!, bytes: bytesOf(this.scales) }];
  }

  get byteLength(): number {
    return this.mask.byteLength + this.values.byteLength + this.scales.byteLength;
  }

  decodeRow(r: number, out: Float32Array): void {
    const { n, m, bits, cols } = this;
    const s = this.shape;
    const perGroup = bits === 4 ? (this.group / m) * n : 0;
    out.fill(0, 0, cols);
    for (let b = 0; b < s.width / m; b++) {
      let k = 0;
      for (let c = b * m; c < (b + 1) * m; c++) {
        if (((this.mask[r * s.maskWords + (c >>> 5)]! >>> (c & 31)) & 1) === 0) continue;
        const i = b * n + k++; // value index within the row
        if (c >= cols) continue;
        if (bits === 8) out[c] = (this.values as Int8Array)[r * s.valueStride + i]! * this.scalesF32[r]!;
        else {
          const q = getNibble(this.values as Uint32Array, r * s.valueStride * 8 + i) - 8;
          out[c] = q * this.scalesF32[r * s.groups + Math.floor(i / perGroup)]!;
        }
      }
    }
  }

  unpack(): Float32Array {
    return unpackByRows(this.rows, this.cols, (r, out) => this.decodeRow(r, out));
  }

  matmul(x: Float32Array, T: number, y: Float32Array, yStride: number, yOffset: number): void {
    if (T >= 4) return matmulByRows(this.rows, this.cols, (r, out) => this.decodeRow(r, out), x, T, y, yStride, yOffset);
    // decode (T < 4): the n stored values of each block, at fixed places; positions from the mask
    const { rows, cols, n, m, bits } = this;
    const { maskWords, valueStride, groups, width } = this.shape;
    const scales = this.scalesF32;
    const perGroup = bits === 4 ? (this.group / m) * n : 0;
    const int8 = bits === 8 ? (this.values as Int8Array) : null;
    const nibbles = bits === 4 ? (this.values as Uint32Array) : null;
    const last = cols - 1;
    for (let t = 0; t < T; t++) {
      const xo = t * cols;
      for (let r = 0; r < rows; r++) {
        let acc = 0, dot = 0;
        let i = 0; // value index within the row
        for (let c0 = 0; c0 < width; c0 += 32) {
          let bitsLeft = this.mask[r * maskWords + (c0 >>> 5)]!;
          while (bitsLeft !== 0) {
            const bit = 31 - Math.clz32(bitsLeft & -bitsLeft);
            bitsLeft &= bitsLeft - 1;
            const c = c0 + bit;
            if (int8) {
              if (c <= last) dot += int8[r * valueStride + i]! * x[xo + c]!;
            } else {
              const k = r * valueStride * 8 + i;
              if (c <= last) dot += (((nibbles![k >>> 3]! >>> ((k & 7) * 4)) & 15) - 8) * x[xo + c]!;
              if ((i + 1) % perGroup === 0) {
                acc += dot * scales[r * groups + (i + 1) / perGroup - 1]!;
                dot = 0;
              }
            }
            i++;
          }
        }
        y[t * yStride + yOffset + r] = int8 ? dot * scales[r]! : acc;
      }
    }
  }

  readRow(r: number, out: Float32Array): void {
    this.decodeRow(r, out);
  }
}
