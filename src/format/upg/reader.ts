/**
 * Reads a UPG artifact (docs/upg-format.md): checks the format name and version, validates every tensor
 * record against the safetensors entries before any data is read, and verifies each tensor's CRC-32
 * as it is read.
 */
import { ModelFormatError } from '../../errors.js';
import type { ByteSource } from '../../io/source.js';
import { SafetensorsFile, toF32 } from '../safetensors.js';
import { crc32, crc32Hex } from './checksum.js';
import { ENCODINGS, expectedBuffers, tensorFromBuffers, type EncodedTensor, type EncodingName } from './encodings/index.js';
import { HEADER_CRC_KEY, UPG_FORMAT, UPG_READABLE_VERSIONS, hasHeaderCrc, headerCrc, storedHeaderCrc, type TensorRecord, type UpgModelFiles } from './metadata.js';

/** Largest header read for the checksum (the safetensors reader's own limit). */
const MAX_HEADER = 100 * 1024 * 1024;

/** Checks a version 2 header's CRC-32; returns false for a header without one (version 1, or not UPG). */
async function checkHeaderCrc(source: ByteSource): Promise<boolean> {
  if (source.size < 8) return false;
  const len = await source.read(0, 8);
  const n = Number(new DataView(len.buffer, len.byteOffset, 8).getBigUint64(0, true));
  if (n > source.size - 8 || n > MAX_HEADER) return false; // the safetensors reader says what is wrong
  const head = new Uint8Array(8 + n);
  head.set(len, 0);
  head.set(await source.read(8, n), 8);
  if (!hasHeaderCrc(head)) return false;
  const stored = storedHeaderCrc(head);
  const computed = headerCrc(head);
  if (stored !== computed) {
    throw new ModelFormatError(source.name, `the header fails its checksum (stored ${HEADER_CRC_KEY} ${JSON.stringify(stored)}, computed ${computed}); the file is corrupt: copy or download it again`);
  }
  return true;
}

export class UpgFile {
  readonly records = new Map<string, TensorRecord>();

  /** Version 2 files carry a header checksum (checked at open); version 1 files do not. */
  metadataChecksummed = false;

  private constructor(readonly st: SafetensorsFile, readonly files: UpgModelFiles) {}

  get name(): string {
    return this.st.name;
  }

  static async open(source: ByteSource): Promise<UpgFile> {
    let st: SafetensorsFile;
    let checksummed: boolean;
    try {
      // the header checksum first: a flipped byte in the header is named as such, before it can misparse
      checksummed = await checkHeaderCrc(source);
      st = await SafetensorsFile.open(source);
    } catch (e) {
      await source.close();
      throw e;
    }
    try {
      const file = UpgFile.validate(st, checksummed);
      file.metadataChecksummed = checksummed;
      return file;
    } catch (e) {
      await st.close();
      throw e;
    }
  }

  private static validate(st: SafetensorsFile, checksummed: boolean): UpgFile {
    const fail = (problem: string): never => {
      throw new ModelFormatError(st.name, problem);
    };
    const raw: unknown = st.metadata;
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail('has no __metadata__ object, so it is not a UPG artifact; make one with pdvm compress');
    const meta = raw as Record<string, unknown>;
    if (meta.format !== UPG_FORMAT) fail(`is a safetensors file but not a UPG artifact (metadata "format" is ${JSON.stringify(meta.format)}, expected "upg"); make one with pdvm compress`);
    if (typeof meta.upg_version !== 'string' || !UPG_READABLE_VERSIONS.includes(meta.upg_version)) {
      fail(`was written with UPG format version ${JSON.stringify(meta.upg_version)}; this pdvm reads versions ${UPG_READABLE_VERSIONS.join(' and ')}: upgrade pdvm or recompress the model`);
    }
    if (meta.upg_version !== '1' && !checksummed) fail(`is UPG version ${meta.upg_version} but its header does not start with its checksum (${HEADER_CRC_KEY}); the file is corrupt: copy or download it again`);
    for (const [key, value] of Object.entries(meta)) {
      if (typeof value !== 'string') fail(`metadata ${key} is ${value === null ? 'null' : typeof value}; every metadata value is a string: the file is corrupt`);
    }
    if (typeof meta.upg_config !== 'string') fail('has no upg_config (the model\'s config.json) in its metadata; recompress the model');
    let list: TensorRecord[];
    try {
      list = JSON.parse(String(meta.upg_tensors));
      if (!Array.isArray(list)) throw new Error('not an array');
    } catch (e) {
      return fail(`has an unreadable upg_tensors list (${(e as Error).message}); the file is corrupt`);
    }
    const file = new UpgFile(st, meta as unknown as UpgModelFiles);
    for (const rec of list) {
      const where = `${st.name}: tensor ${rec?.name}`;
      if (
        typeof rec?.name !== 'string' || !Array.isArray(rec.shape) || !rec.shape.every((d) => Number.isSafeInteger(d) && d > 0) ||
        typeof rec.buffers !== 'object' || rec.buffers === null || Array.isArray(rec.buffers) || !Object.values(rec.buffers).every((b) => typeof b === 'string') ||
        typeof rec.crc32 !== 'string' || (rec.params !== undefined && (typeof rec.params !== 'object' || rec.params === null || Array.isArray(rec.params)))
      ) {
        fail(`has a malformed tensor record ${JSON.stringify(rec)?.slice(0, 200)}; the file is corrupt`);
      }
      if (file.records.has(rec.name)) fail(`has two records for tensor ${rec.name}; the file is corrupt`);
      if (!(ENCODINGS as readonly string[]).includes(rec.encoding)) {
        throw new ModelFormatError(where, `uses encoding "${rec.encoding}", which this reader does not know (it knows ${ENCODINGS.join(', ')}); upgrade pdvm or recompress`);
      }
      const shapeOf = (role: string) => {
        const entry = st.tensors.get(rec.buffers[role] ?? '');
        return entry?.shape;
      };
      const expected = expectedBuffers(where, rec.encoding, rec.shape, rec.params ?? {}, { values: shapeOf('values'), entries: shapeOf('entries') });
      for (const b of expected) {
        const entryName = rec.buffers[b.role];
        const entry = entryName === undefined ? undefined : st.tensors.get(entryName);
        if (!entry) throw new ModelFormatError(where, `has no ${b.role} buffer (entry ${JSON.stringify(entryName)} is missing); the file is incomplete`);
        if (entry.dtype !== b.dtype || entry.shape.length !== b.shape.length || entry.shape.some((d, i) => d !== b.shape[i])) {
          throw new ModelFormatError(where, `buffer ${b.role} is ${entry.dtype} [${entry.shape}] but encoding ${rec.encoding} ${JSON.stringify(rec.params)} implies ${b.dtype} [${b.shape}]; the file is corrupt`);
        }
      }
      file.records.set(rec.name, rec);
    }
    return file;
  }

  /** The tensor's buffers by role, in record order, checked against its CRC-32. */
  async readBuffers(name: string, verify = true): Promise<Map<string, Uint8Array>> {
    const rec = this.record(name);
    const out = new Map<string, Uint8Array>();
    let crc = 0;
    const roles = expectedBuffers(name, rec.encoding, rec.shape, rec.params, {
      values: this.st.tensors.get(rec.buffers.values ?? '')?.shape,
      entries: this.st.tensors.get(rec.buffers.entries ?? '')?.shape,
    }).map((b) => b.role);
    for (const role of roles) {
      const bytes = await this.st.readRaw(rec.buffers[role]!);
      if (verify) crc = crc32(bytes, crc);
      out.set(role, bytes);
    }
    if (verify && crc32Hex(crc) !== rec.crc32) {
      throw new ModelFormatError(this.name, `tensor ${name} fails its checksum (stored crc32 ${rec.crc32}, computed ${crc32Hex(crc)}); the file is corrupt: copy or download it again`);
    }
    return out;
  }

  record(name: string): TensorRecord {
    const rec = this.records.get(name);
    if (!rec) throw new ModelFormatError(this.name, `has no tensor ${name}`);
    return rec;
  }

  /** Bytes the tensor's buffers take in the file (padding excluded). */
  storedBytes(name: string): number {
    const rec = this.record(name);
    return Object.values(rec.buffers).reduce((a, entry) => a + this.st.tensors.get(entry)!.byteLength, 0);
  }

  async readMatrix(name: string, verify = true): Promise<EncodedTensor> {
    const rec = this.record(name);
    if (rec.shape.length !== 2) throw new ModelFormatError(this.name, `tensor ${name} has shape [${rec.shape}]; expected a matrix`);
    return tensorFromBuffers(rec.encoding as EncodingName, rec.shape, rec.params, await this.readBuffers(name, verify));
  }

  async readVector(name: string, verify = true): Promise<Float32Array> {
    const rec = this.record(name);
    if (rec.encoding !== 'dense') throw new ModelFormatError(this.name, `vector ${name} is stored as ${rec.encoding}; vectors must be dense`);
    const bytes = (await this.readBuffers(name, verify)).get('values')!;
    return toF32(this.st.tensors.get(rec.buffers.values!)!, bytes);
  }

  /** Verifies every tensor's checksum; calls back after each. */
  async verifyAll(onTensor?: (name: string, done: number, total: number) => void): Promise<void> {
    let done = 0;
    for (const name of this.records.keys()) {
      await this.readBuffers(name, true);
      onTensor?.(name, ++done, this.records.size);
    }
  }

  close(): Promise<void> {
    return this.st.close();
  }
}
