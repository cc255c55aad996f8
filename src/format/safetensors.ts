/**
 * safetensors reader: an 8-byte little-endian header length, a JSON header
 * {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the data region.
 * Every entry is validated against the file before any tensor is read.
 */
import { ModelFormatError } from '../errors.js';
import { bf16ToF32Array, f16ToF32Array } from './dtype.js';
import type { ByteSource } from '../io/source.js';

export type DType = 'F32' | 'F16' | 'BF16' | 'I32' | 'I64' | 'U8' | 'I8' | 'U16' | 'U32';

export const dtypeBytes: Record<DType, number> = {
  F32: 4, F16: 2, BF16: 2, I32: 4, I64: 8, U8: 1, I8: 1, U16: 2, U32: 4,
};

export interface TensorInfo {
  name: string;
  dtype: DType;
  shape: number[];
  /** Absolute byte offset of the data in the file. */
  offset: number;
  byteLength: number;
}

const MAX_HEADER = 100 * 1024 * 1024;

export class SafetensorsFile {
  readonly tensors = new Map<string, TensorInfo>();
  metadata: Record<string, string> = {};

  private constructor(readonly source: ByteSource) {}

  get name(): string {
    return this.source.name;
  }

  static async open(source: ByteSource): Promise<SafetensorsFile> {
    const file = new SafetensorsFile(source);
    await file.parseHeader();
    return file;
  }

  private fail(problem: string): never {
    throw new ModelFormatError(this.source.name, problem);
  }

  private async parseHeader(): Promise<void> {
    const { size } = this.source;
    if (size < 8) this.fail(`file is ${size} bytes, too short for a safetensors header; the file is truncated`);
    const lenBytes = await this.source.read(0, 8);
    const headerLen = Number(new DataView(lenBytes.buffer, lenBytes.byteOffset, 8).getBigUint64(0, true));
    if (headerLen > size - 8) {
      this.fail(`header length ${headerLen} runs past the end of the file (${size} bytes); the file is truncated or not safetensors`);
    }
    if (headerLen > MAX_HEADER) this.fail(`header length ${headerLen} is implausibly large; not a safetensors file`);
    let header: Record<string, unknown>;
    try {
      header = JSON.parse(new TextDecoder().decode(await this.source.read(8, headerLen)));
    } catch (e) {
      this.fail(`header is not valid JSON (${(e as Error).message}); the file is corrupt`);
    }
    if (typeof header !== 'object' || header === null || Array.isArray(header)) this.fail('header is not a JSON object');
    const dataStart = 8 + headerLen;
    const dataSize = size - dataStart;
    const spans: [number, number, string][] = [];
    for (const [name, raw] of Object.entries(header)) {
      if (name === '__metadata__') {
        this.metadata = (raw ?? {}) as Record<string, string>;
        continue;
      }
      const entry = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      const dtype = entry?.dtype as DType;
      if (!(typeof dtype === 'string' && dtype in dtypeBytes)) this.fail(`tensor ${name} has unsupported dtype ${JSON.stringify(entry?.dtype)}`);
      const shape = entry.shape;
      if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) this.fail(`tensor ${name} has an invalid shape ${JSON.stringify(shape)}`);
      const offs = entry.data_offsets;
      if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isInteger(o) && o >= 0) || offs[1] < offs[0]) {
        this.fail(`tensor ${name} has invalid data_offsets ${JSON.stringify(offs)}`);
      }
      const [begin, end] = offs as [number, number];
      const expected = shape.reduce((a: number, b: number) => a * b, 1) * dtypeBytes[dtype];
      if (end - begin !== expected) {
        this.fail(`tensor ${name} (${dtype} ${JSON.stringify(shape)}) needs ${expected} bytes but data_offsets span ${end - begin}`);
      }
      if (end > dataSize) {
        this.fail(`tensor ${name} needs bytes ${begin}..${end} of the data region but it holds only ${dataSize} bytes; the file is truncated`);
      }
      spans.push([begin, end, name]);
      this.tensors.set(name, { name, dtype, shape: shape as number[], offset: dataStart + begin, byteLength: end - begin });
    }
    spans.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    for (let i = 1; i < spans.length; i++) {
      const [b, , n] = spans[i]!;
      const [, pe, pn] = spans[i - 1]!;
      if (b < pe) this.fail(`tensors ${pn} and ${n} overlap (bytes ${b}..${pe}); the file is corrupt`);
    }
  }

  async readRaw(name: string): Promise<Uint8Array> {
    const info = this.tensors.get(name);
    if (!info) this.fail(`has no tensor named ${name}`);
    return this.source.read(info.offset, info.byteLength);
  }

  /** Reads a floating-point tensor as float32 (converting BF16/F16), or an integer tensor as Int32. */
  async readF32(name: string): Promise<Float32Array> {
    const info = this.tensors.get(name)!;
    const raw = await this.readRaw(name);
    return toF32(info, raw);
  }

  async readI32(name: string): Promise<Int32Array> {
    const info = this.tensors.get(name)!;
    const raw = await this.readRaw(name);
    if (info.dtype === 'I32') return new Int32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
    if (info.dtype === 'I64') {
      const big = new BigInt64Array(raw.buffer, raw.byteOffset, raw.byteLength / 8);
      return Int32Array.from(big, (v) => Number(v));
    }
    this.fail(`tensor ${name} is ${info.dtype}, expected an integer tensor`);
  }

  close(): Promise<void> {
    return this.source.close();
  }
}

/** Converts raw little-endian tensor bytes to float32; `raw` must be freshly allocated (it may be aliased). */
export function toF32(info: TensorInfo, raw: Uint8Array, out?: Float32Array): Float32Array {
  const n = info.byteLength / dtypeBytes[info.dtype];
  const aligned = raw.byteOffset % 4 === 0 ? raw : raw.slice();
  switch (info.dtype) {
    case 'F32': {
      const src = new Float32Array(aligned.buffer, aligned.byteOffset, n);
      if (!out) return src;
      out.set(src);
      return out;
    }
    case 'BF16': {
      const dst = out ?? new Float32Array(n);
      bf16ToF32Array(new Uint16Array(aligned.buffer, aligned.byteOffset, n), dst);
      return dst;
    }
    case 'F16': {
      const dst = out ?? new Float32Array(n);
      f16ToF32Array(new Uint16Array(aligned.buffer, aligned.byteOffset, n), dst);
      return dst;
    }
    default:
      throw new ModelFormatError(info.name, `dtype ${info.dtype} is not a floating-point type`);
  }
}

/** Serialises tensors to safetensors bytes (used by tests and the compressor's writer). */
export function encodeSafetensorsHeader(
  entries: { name: string; dtype: DType; shape: number[]; byteLength: number }[],
  metadata?: Record<string, string>,
  align = 8,
): { header: Uint8Array; offsets: number[] } {
  const obj: Record<string, unknown> = {};
  if (metadata) obj.__metadata__ = metadata;
  const offsets: number[] = [];
  let pos = 0;
  for (const e of entries) {
    offsets.push(pos);
    obj[e.name] = { dtype: e.dtype, shape: e.shape, data_offsets: [pos, pos + e.byteLength] };
    pos += e.byteLength;
  }
  let json = JSON.stringify(obj);
  // pad so the data region starts aligned
  const pad = (align - ((8 + new TextEncoder().encode(json).length) % align)) % align;
  json += ' '.repeat(pad);
  const body = new TextEncoder().encode(json);
  const header = new Uint8Array(8 + body.length);
  new DataView(header.buffer).setBigUint64(0, BigInt(body.length), true);
  header.set(body, 8);
  return { header, offsets };
}
