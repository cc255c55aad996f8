/**
 * `bitmap`: unstructured sparsity (docs/upg-format.md, "bitmap"). Rows are cut into tiles of `tile`
 * columns; one mask bit per dense element, the stored values packed in order, each tile's first value
 * index in `offsets`.
 *   mask    U32 [rows, tiles * tile / 32]
 *   offsets U32 [rows * tiles + 1]
 *   values  I8 [nnz] (bits 8) | U8 [ceil(nnz / 2)] nibbles q + 8 (bits 4)
 *   scales  F32 [rows] (bits 8) | F16 [rows, tiles] (bits 4, the tile is the group)
 */
import { ModelFormatError } from '../../../errors.js';
import {
  bytesOf, concatArrays, f16ArrayToF32, getNibble, int8Quantize, int8Scale, matmulByRows, setNibble, signed4Quantize, signed4Scale,
  unpackByRows, view, type EncodedTensor, type UpgBuffer,
} from './common.js';

export const BITMAP_TILES = [32, 64, 128, 256];

export class BitmapTensor implements EncodedTensor {
  readonly encoding = 'bitmap';
  readonly params: { tile: number; bits: number };
  readonly tiles: number;
  readonly maskWordsPerRow: number;
  private readonly scalesF32: Float32Array;

  constructor(
    readonly rows: number,
    readonly cols: number,
    readonly tile: number,
    readonly bits: 4 | 8,
    readonly mask: Uint32Array,
    readonly offsets: Uint32Array,
    /** Int8Array of nnz values (bits 8) or Uint32Array nibble words (bits 4). */
    readonly values: Int8Array | Uint32Array,
    /** Float32Array [rows] (bits 8) or f16 bits Uint16Array [rows, tiles] (bits 4). */
    readonly scales: Float32Array | Uint16Array,
  ) {
    if (!BITMAP_TILES.includes(tile)) throw new ModelFormatError('bitmap', `tile ${tile} is not one of ${BITMAP_TILES.join(', ')}`);
    this.params = { tile, bits };
    this.tiles = Math.ceil(cols / tile);
    this.maskWordsPerRow = (this.tiles * tile) / 32;
    this.scalesF32 = scales instanceof Float32Array ? scales : f16ArrayToF32(scales);
    if (mask.length !== rows * this.maskWordsPerRow || offsets.length !== rows * this.tiles + 1) throw new Error(`BitmapTensor: buffers do not match [${rows}, ${cols}]`);
    const capacity = bits === 8 ? values.length : values.length * 8;
    if (this.nnz > capacity) throw new ModelFormatError('bitmap', `offsets end at value ${this.nnz} but only ${capacity} values are stored`);
  }

  get nnz(): number {
    return this.offsets[this.offsets.length - 1]!;
  }

  /** Stores the nonzeros of w (zeros are the pruned weights). */
  static pack(rows: number, cols: number, w: Float32Array, tile: number, bits: 4 | 8): BitmapTensor {
    const tiles = Math.ceil(cols / tile);
    const maskWordsPerRow = (tiles * tile) / 32;
    const mask = new Uint32Array(rows * maskWordsPerRow);
    const offsets = new Uint32Array(rows * tiles + 1);
    let nnz = 0;
    for (let r = 0; r < rows; r++) {
      for (let t = 0; t < tiles; t++) {
        offsets[r * tiles + t] = nnz;
        for (let c = t * tile; c < Math.min(cols, (t + 1) * tile); c++) {
          if (w[r * cols + c] !== 0) {
            const wi = r * maskWordsPerRow + (c >>> 5);
            mask[wi] = mask[wi]! | (1 << (c & 31));
            nnz++;
          }
        }
      }
    }
    offsets[rows * tiles] = nnz;
    // the stored values in order, with their source index, then quantized
    const source = new Uint32Array(nnz);
    for (let r = 0, k = 0; r < rows; r++) for (let c = 0; c < cols; c++) if (w[r * cols + c] !== 0) source[k++] = r * cols + c;
    if (bits === 8) {
      const values = new Int8Array(nnz);
      const scales = new Float32Array(rows);
      const gathered = Float32Array.from(source, (i) => w[i]!);
      for (let r = 0; r < rows; r++) {
        const begin = offsets[r * tiles]!, end = offsets[(r + 1) * tiles]!;
        scales[r] = int8Scale(gathered, begin, end);
        for (let i = begin; i < end; i++) values[i] = int8Quantize(gathered[i]!, scales[r]!);
      }
      return new BitmapTensor(rows, cols, tile, bits, mask, offsets, values, scales);
    }
    const values = new Uint32Array(Math.ceil(nnz / 8));
    const scales = new Uint16Array(rows * tiles);
    for (let ti = 0; ti < rows * tiles; ti++) {
      const begin = offsets[ti]!, end = offsets[ti + 1]!;
      const scale = signed4Scale(w, source, begin, end);
      scales[ti] = scale.bits;
      for (let i = begin; i < end; i++) setNibble(values, i, signed4Quantize(w[source[i]!]!, scale.value) + 8);
    }
    return new BitmapTensor(rows, cols, tile, bits, mask, offsets, values, scales);
  }

  /** Offsets of later blocks move on by the values before them; 4-bit value streams are re-joined nibble by nibble. */
  static concatRows(parts: BitmapTensor[]): BitmapTensor {
    const p0 = parts[0]!;
    const rows = parts.reduce((a, p) => a + p.rows, 0);
    const offsets = new Uint32Array(rows * p0.tiles + 1);
    let at = 0, base = 0;
    for (const p of parts) {
      for (let i = 0; i < p.rows * p.tiles; i++) offsets[at + i] = base + p.offsets[i]!;
      at += p.rows * p.tiles;
      base += p.nnz;
    }
    offsets[rows * p0.tiles] = base;
    let values: Int8Array | Uint32Array;
    if (p0.bits === 8) values = concatArrays(parts.map((p) => (p.values as Int8Array).subarray(0, p.nnz)));
    else {
      values = new Uint32Array(Math.ceil(base / 8));
      let i = 0;
      for (const p of parts) for (let k = 0; k < p.nnz; k++) setNibble(values, i++, getNibble(p.values as Uint32Array, k));
    }
    const scales = p0.bits === 8 ? concatArrays(parts.map((p) => p.scales as Float32Array)) : concatArrays(parts.map((p) => p.scales as Uint16Array));
    return new BitmapTensor(rows, p0.cols, p0.tile, p0.bits, concatArrays(parts.map((p) => p.mask)), offsets, values, scales);
  }

  /** Rows r0 .. r1 - 1 as a tensor of their own (the inverse of concatRows; 4-bit values re-packed from their first nibble). */
  sliceRows(r0: number, r1: number): BitmapTensor {
    const t = this.tiles;
    const a = this.offsets[r0 * t]!, b = this.offsets[r1 * t]!;
    const offsets = this.offsets.slice(r0 * t, r1 * t + 1).map((o) => o - a);
    let values: Int8Array | Uint32Array;
    if (this.bits === 8) values = (this.values as Int8Array).subarray(a, b);
    else {
      values = new Uint32Array(Math.ceil((b - a) / 8));
      for (let k = a; k < b; k++) setNibble(values, k - a, getNibble(this.values as Uint32Array, k));
    }
    const scalesPerRow = this.bits === 8 ? 1 : t;
    return new BitmapTensor(r1 - r0, this.cols, this.tile, this.bits, this.mask.subarray(r0 * this.maskWordsPerRow, r1 * this.maskWordsPerRow), offsets, values, this.scales.subarray(r0 * scalesPerRow, r1 * scalesPerRow));
  }

  static expectedBuffers(rows: number, cols: number, tile: number, bits: number, nnz: number): Omit<UpgBuffer, 'bytes'>[] {
    const tiles = Math.ceil(cols / tile);
    return [
      { role: 'mask', dtype: 'U32', shape: [rows, (tiles * tile) / 32] },
      { role: 'offsets', dtype: 'U32', shape: [rows * tiles + 1] },
      bits === 8 ? { role: 'values', dtype: 'I8', shape: [nnz] } : { role: 'values', dtype: 'U8', shape: [Math.ceil(nnz / 2)] },
      bits === 8 ? { role: 'scales', dtype: 'F32', shape: [rows] } : { role: 'scales', dtype: 'F16', shape: [rows, tiles] },
    ];
  }

  static fromBuffers(rows: number, cols: number, tile: number, bits: 4 | 8, b: Map<string, Uint8Array>): BitmapTensor {
    const raw = b.get('values')!;
    let values: Int8Array | Uint32Array;
    if (bits === 8) values = view(raw, Int8Array);
    else {
      const padded = new Uint8Array(Math.ceil(raw.length / 4) * 4);
      padded.set(raw);
      values = new Uint32Array(padded.buffer);
    }
    const scales = bits === 8 ? view(b.get('scales')!, Float32Array) : view(b.get('scales')!, Uint16Array);
    return new BitmapTensor(rows, cols, tile, bits, view(b.get('mask')!, Uint32Array), view(b.get('offsets')!, Uint32Array), values, scales);
  }

  buffers(): UpgBuffer[] {
    const [m, o, v, s] = BitmapTensor.expectedBuffers(this.rows, this.cols, this.tile, this.bits, this.nnz);
    const valueBytes = bytesOf(this.values).subarray(0, this.bits === 8 ? this.nnz : Math.ceil(this.nnz / 2));
    return [
      { ...m!, bytes: bytesOf(this.mask) },
      { ...o!, bytes: bytesOf(this.offsets) },
      { ...v!, bytes: valueBytes },
      { ...s!, bytes: bytesOf(this.scales) },
    ];
  }

  get byteLength(): number {
    return this.buffers().reduce((a, b) => a + b.bytes.length, 0);
  }

  decodeRow(r: number, out: Float32Array): void {
    out.fill(0, 0, this.cols);
    const { tile, tiles, mask, offsets } = this;
    for (let t = 0; t < tiles; t++) {
      let i = offsets[r * tiles + t]!;
      const scale = this.bits === 8 ? this.scalesF32[r]! : this.scalesF32[r * tiles + t]!;
      for (let wi = 0; wi < tile / 32; wi++) {
        let bitsLeft = mask[r * this.maskWordsPerRow + (t * tile) / 32 + wi]!;
        while (bitsLeft !== 0) {
          const bit = 31 - Math.clz32(bitsLeft & -bitsLeft);
          bitsLeft &= bitsLeft - 1;
          const q = this.bits === 8 ? (this.values as Int8Array)[i]! : getNibble(this.values as Uint32Array, i) - 8;
          out[t * tile + wi * 32 + bit] = q * scale;
          i++;
        }
      }
    }
  }

  unpack(): Float32Array {
    return unpackByRows(this.rows, this.cols, (r, out) => this.decodeRow(r, out));
  }

  matmul(x: Float32Array, T: number, y: Float32Array, yStride: number, yOffset: number): void {
    if (T >= 4) return matmulByRows(this.rows, this.cols, (r, out) => this.decodeRow(r, out), x, T, y, yStride, yOffset);
    // decode (T < 4): only the stored values are visited, tile by tile
    const { rows, cols, tile, tiles, mask, offsets, maskWordsPerRow } = this;
    const scales = this.scalesF32;
    const int8 = this.bits === 8 ? (this.values as Int8Array) : null;
    const nibbles = this.bits === 4 ? (this.values as Uint32Array) : null;
    for (let t = 0; t < T; t++) {
      const xo = t * cols;
      for (let r = 0; r < rows; r++) {
        let acc = 0;
        for (let ti = 0; ti < tiles; ti++) {
          let i = offsets[r * tiles + ti]!;
          let dot = 0;
          for (let wi = 0; wi < tile / 32; wi++) {
            let bitsLeft = mask[r * maskWordsPerRow + (ti * tile) / 32 + wi]!;
            const c0 = xo + ti * tile + wi * 32;
            while (bitsLeft !== 0) {
              const bit = 31 - Math.clz32(bitsLeft & -bitsLeft);
              bitsLeft &= bitsLeft - 1;
              const q = int8 ? int8[i]! : ((nibbles![i >>> 3]! >>> ((i & 7) * 4)) & 15) - 8;
              dot += q * x[c0 + bit]!;
              i++;
            }
          }
          acc += int8 ? dot : dot * scales[r * tiles + ti]!;
        }
        y[t * yStride + yOffset + r] = int8 ? acc * scales[r]! : acc;
      }
    }
  }

  readRow(r: number, out: Float32Array): void {
    this.decodeRow(r, out);
  }
}
