/**
 * What every UPG encoding shares: the buffer description written to the file, the value codecs
 * (int8 per row, signed 4-bit per group) and the reference product that decodes one row at a time.
 * Layouts are specified in docs/upg-format.md; keep the two in step.
 */
import type { DType } from '../../safetensors.js';
import { f16ToF32, f32ToF16 } from '../../dtype.js';
import type { WeightTensor } from '../../../model/tensor.js';

/** One stored buffer of an encoded tensor: a safetensors entry. */
export interface UpgBuffer {
  role: string;
  dtype: DType;
  shape: number[];
  /** Exactly the stored bytes (little-endian), length = product(shape) * dtype size. */
  bytes: Uint8Array;
}

export type EncodingParams = Record<string, number | string>;

/** An encoded matrix: a WeightTensor plus what the writer needs. */
export interface EncodedTensor extends WeightTensor {
  readonly params: EncodingParams;
  /** Buffers in the order the spec lists their roles (the checksum order). */
  buffers(): UpgBuffer[];
  /** Row r of the decoded matrix into out (cols values). */
  decodeRow(r: number, out: Float32Array): void;
  /** The whole decoded matrix, [rows, cols] row-major (tests, reports; not used by the engine). */
  unpack(): Float32Array;
}

/** Concatenates typed arrays of one kind (row blocks of a buffer). */
export function concatArrays<T extends Int8Array | Uint8Array | Uint16Array | Uint32Array | Float32Array>(parts: T[]): T {
  const total = parts.reduce((a, p) => a + p.length, 0);
  const out = new (parts[0]!.constructor as { new (n: number): T })(total);
  let at = 0;
  for (const p of parts) {
    out.set(p as never, at);
    at += p.length;
  }
  return out;
}

export function roundUp(a: number, b: number): number {
  return Math.ceil(a / b) * b;
}

export function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** A typed view of stored bytes; copies when the bytes are not aligned for the element size. */
export function view<T>(bytes: Uint8Array, ctor: { new (b: ArrayBufferLike, o: number, n: number): T; BYTES_PER_ELEMENT: number }): T {
  const size = ctor.BYTES_PER_ELEMENT;
  const b = bytes.byteOffset % size === 0 ? bytes : bytes.slice();
  return new ctor(b.buffer, b.byteOffset, b.byteLength / size);
}

export function f16ArrayToF32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = f16ToF32(bits[i]!);
  return out;
}

/** f32 -> the nearest f16, returned as its float32 value and its bits. */
export function roundToF16(x: number): { value: number; bits: number } {
  const bits = f32ToF16(x);
  return { value: f16ToF32(bits), bits };
}

// ---- int8 per row: scale = max|w| / 127, q = round(w / scale) ----

export function int8Scale(values: ArrayLike<number>, begin: number, end: number): number {
  let maxAbs = 0;
  for (let i = begin; i < end; i++) maxAbs = Math.max(maxAbs, Math.abs(values[i]!));
  return Math.fround(maxAbs / 127);
}

export function int8Quantize(w: number, scale: number): number {
  if (scale === 0) return 0;
  return Math.max(-127, Math.min(127, Math.round(w / scale)));
}

// ---- signed 4-bit per group: scale = m / -8 (m the value of largest magnitude), q in -8..7 ----

/** The f16-rounded scale for a group of values (0 when the group is empty or all zero). */
export function signed4Scale(values: ArrayLike<number>, indices: ArrayLike<number> | null, begin: number, end: number): { value: number; bits: number } {
  let m = 0;
  for (let i = begin; i < end; i++) {
    const v = values[indices ? indices[i]! : i]!;
    if (Math.abs(v) > Math.abs(m)) m = v;
  }
  return roundToF16(m / -8);
}

export function signed4Quantize(w: number, scale: number): number {
  if (scale === 0) return 0;
  return Math.max(-8, Math.min(7, Math.round(w / scale)));
}

/** Nibble i of a nibble stream held in u32 words (value in 0..15). */
export function getNibble(words: Uint32Array, i: number): number {
  return (words[i >>> 3]! >>> ((i & 7) * 4)) & 15;
}

export function setNibble(words: Uint32Array, i: number, v: number): void {
  const shift = (i & 7) * 4;
  words[i >>> 3] = (words[i >>> 3]! & ~(15 << shift)) | ((v & 15) << shift);
}

/**
 * Reference product from any row decoder: each row is decoded once into a scratch row (never the whole
 * matrix), then dotted with the T inputs, four at a time so the row is read once per four tokens.
 *   y[t * yStride + yOffset + r] = sum_c W[r, c] * x[t * cols + c]
 */
export function matmulByRows(
  rows: number,
  cols: number,
  decodeRow: (r: number, out: Float32Array) => void,
  x: Float32Array,
  T: number,
  y: Float32Array,
  yStride: number,
  yOffset: number,
): void {
  const w = new Float32Array(cols); // (cols) one decoded row
  for (let r = 0; r < rows; r++) {
    decodeRow(r, w);
    let t = 0;
    // hot loop: four tokens share each decoded row
    for (; t + 4 <= T; t += 4) {
      const x0 = t * cols, x1 = x0 + cols, x2 = x1 + cols, x3 = x2 + cols;
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (let c = 0; c < cols; c++) {
        const wv = w[c]!;
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
    for (; t < T; t++) {
      const xo = t * cols;
      let s = 0;
      for (let c = 0; c < cols; c++) s += w[c]! * x[xo + c]!;
      y[t * yStride + yOffset + r] = s;
    }
  }
}

/** Decoded matrix from a row decoder. */
export function unpackByRows(rows: number, cols: number, decodeRow: (r: number, out: Float32Array) => void): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) decodeRow(r, out.subarray(r * cols, (r + 1) * cols));
  return out;
}
