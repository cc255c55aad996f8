/**
 * Writes a UPG artifact tensor by tensor (docs/upg-format.md). The data region is written as tensors
 * arrive, behind a header space reserved up front and filled in at the end; everything goes to a
 * temporary file next to the output, renamed into place only by `finish()`, so an interrupted run
 * never leaves a partial artifact under the output name.
 */
import { open, readdir, rename, unlink, type FileHandle } from 'node:fs/promises';
import { PdvmError } from '../../errors.js';
import { basename, dirname, join } from 'node:path';
import { dtypeBytes, type DType } from '../safetensors.js';
import { crc32, crc32Hex } from './checksum.js';
import type { UpgBuffer } from './encodings/common.js';
import { HEADER_CRC_KEY, PAD_PREFIX, UPG_ALIGNMENT, UPG_FORMAT, UPG_VERSION, bufferEntryName, sealHeader, type TensorRecord, type UpgModelFiles } from './metadata.js';

interface Entry {
  name: string;
  dtype: DType;
  shape: number[];
  begin: number; // relative to the data region
  end: number;
}

const ZEROS = new Uint8Array(UPG_ALIGNMENT);

/** True when a process of that id is running (signal 0 checks without sending anything). */
function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'; // alive, but someone else's
  }
}

/**
 * Deletes `.NAME.upg.partial-PID` files of the same output left by runs that were killed (SIGKILL, a
 * crash, a power cut) and can no longer clean up after themselves. A running compress keeps its own.
 */
export async function removeStalePartials(path: string): Promise<string[]> {
  const dir = dirname(path);
  const prefix = `.${basename(path)}.partial-`;
  const removed: string[] = [];
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (!name.startsWith(prefix)) continue;
    const pid = Number(name.slice(prefix.length));
    if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid || processAlive(pid)) continue;
    await unlink(join(dir, name)).then(() => removed.push(name), () => {});
  }
  return removed;
}

function alignUp(n: number): number {
  return Math.ceil(n / UPG_ALIGNMENT) * UPG_ALIGNMENT;
}

export class UpgWriter {
  private readonly entries: Entry[] = [];
  private readonly records: TensorRecord[] = [];
  private dataEnd = 0; // bytes written into the data region
  private pads = 0;
  private done = false;

  private constructor(
    readonly path: string,
    readonly tempPath: string,
    private readonly handle: FileHandle,
    private readonly files: UpgModelFiles,
    private headerSpace: number,
  ) {}

  /**
   * Opens `<dir>/.<name>.partial-<pid>`. `tensorCount` and `longestName` size the reserved header; if the
   * guess proves short, `finish()` rewrites the file with a larger header (slower, still correct).
   */
  static async create(path: string, files: UpgModelFiles, tensorCount: number, longestName: number): Promise<UpgWriter> {
    await removeStalePartials(path);
    const tempPath = join(dirname(path), `.${basename(path)}.partial-${process.pid}`);
    let handle: FileHandle;
    try {
      handle = await open(tempPath, 'w');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new PdvmError(`${path}: cannot write the artifact there (${code === 'ENOENT' ? `the folder ${dirname(path)} does not exist` : code ?? (e as Error).message})`);
    }
    const fixed = JSON.stringify(JSON.stringify(files)).length + 1024;
    const perTensor = 2048 + 16 * longestName; // record + up to 4 buffers and their padding entries, JSON-escaped
    return new UpgWriter(path, tempPath, handle, files, alignUp(8 + fixed + tensorCount * perTensor));
  }

  /** Appends one tensor's buffers (in the encoding's role order) at aligned offsets; returns its record. */
  async writeTensor(tensor: Omit<TensorRecord, 'buffers' | 'crc32'>, buffers: UpgBuffer[]): Promise<TensorRecord> {
    let crc = 0;
    const names: Record<string, string> = {};
    for (const b of buffers) {
      const expected = b.shape.reduce((a, d) => a * d, 1) * dtypeBytes[b.dtype];
      if (b.bytes.length !== expected) throw new Error(`${tensor.name}:${b.role}: ${b.bytes.length} bytes for ${b.dtype} [${b.shape}]`);
      const name = bufferEntryName(tensor.name, tensor.encoding, b.role);
      names[b.role] = name;
      crc = crc32(b.bytes, crc);
      await this.pad();
      this.entries.push({ name, dtype: b.dtype, shape: b.shape, begin: this.dataEnd, end: this.dataEnd + b.bytes.length });
      await this.write(b.bytes);
    }
    const record: TensorRecord = { ...tensor, buffers: names, crc32: crc32Hex(crc) };
    this.records.push(record);
    return record;
  }

  /** Bytes of tensor data written so far. */
  get bytesWritten(): number {
    return this.dataEnd;
  }

  private async write(bytes: Uint8Array): Promise<void> {
    let done = 0;
    while (done < bytes.length) {
      const { bytesWritten } = await this.handle.write(bytes, done, bytes.length - done, this.headerSpace + this.dataEnd + done);
      done += bytesWritten;
    }
    this.dataEnd += bytes.length;
  }

  /** Fills up to the next aligned offset with a zero padding entry. */
  private async pad(): Promise<void> {
    const gap = alignUp(this.dataEnd) - this.dataEnd;
    if (gap === 0) return;
    this.entries.push({ name: `${PAD_PREFIX}${this.pads++}`, dtype: 'U8', shape: [gap], begin: this.dataEnd, end: this.dataEnd + gap });
    await this.write(ZEROS.subarray(0, gap));
  }

  private header(): Uint8Array {
    const obj: Record<string, unknown> = {
      // the header checksum first, so it sits at a fixed offset (sealHeader fills it in)
      __metadata__: { [HEADER_CRC_KEY]: '00000000', format: UPG_FORMAT, upg_version: UPG_VERSION, ...this.files, upg_tensors: JSON.stringify(this.records) },
    };
    for (const e of this.entries) obj[e.name] = { dtype: e.dtype, shape: e.shape, data_offsets: [e.begin, e.end] };
    return new TextEncoder().encode(JSON.stringify(obj));
  }

  /** Writes the header, flushes, and renames the temporary file to the output path. */
  async finish(): Promise<{ bytes: number; records: TensorRecord[] }> {
    await this.pad();
    let json = this.header();
    if (8 + json.length > this.headerSpace) await this.growHeader(alignUp(8 + json.length) + 64 * 1024);
    json = this.header();
    const head = new Uint8Array(this.headerSpace).fill(0x20); // spaces pad the JSON up to the data region
    new DataView(head.buffer).setBigUint64(0, BigInt(this.headerSpace - 8), true);
    head.set(json, 8);
    sealHeader(head);
    await this.handle.write(head, 0, head.length, 0);
    await this.handle.sync();
    await this.handle.close();
    this.done = true;
    await rename(this.tempPath, this.path);
    return { bytes: this.headerSpace + this.dataEnd, records: this.records };
  }

  /** Moves the data region further into the file (only if the reserved header space was too small). */
  private async growHeader(space: number): Promise<void> {
    const shift = space - this.headerSpace;
    const chunk = new Uint8Array(16 << 20);
    for (let end = this.dataEnd; end > 0; ) {
      const begin = Math.max(0, end - chunk.length);
      const part = chunk.subarray(0, end - begin);
      await this.handle.read(part, 0, part.length, this.headerSpace + begin);
      await this.handle.write(part, 0, part.length, this.headerSpace + begin + shift);
      end = begin;
    }
    this.headerSpace = space;
  }

  /** Closes and deletes the temporary file (after an error or a cancelled run). */
  async abort(): Promise<void> {
    if (this.done) return;
    this.done = true;
    await this.handle.close().catch(() => {});
    await unlink(this.tempPath).catch(() => {});
  }
}
