import { open, type FileHandle } from 'node:fs/promises';
import type { ByteSource } from './source.js';

/** A local file read with positioned reads: nothing but the requested range is held in memory. */
export class FileSource implements ByteSource {
  private constructor(readonly name: string, private readonly handle: FileHandle, readonly size: number) {}

  static async open(path: string): Promise<FileSource> {
    const handle = await open(path, 'r');
    const { size } = await handle.stat();
    return new FileSource(path, handle, size);
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.handle.read(out, done, length - done, offset + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    if (done < length) throw new Error(`${this.name}: wanted ${length} bytes at ${offset}, file ends early`);
    return out;
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}
