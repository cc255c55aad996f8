import { open, type FileHandle } from 'node:fs/promises';
import type { ByteSource } from './source.js';
import { PdvmError } from '../errors.js';

/** A local file read with positioned reads: nothing but the requested range is held in memory. */
export class FileSource implements ByteSource {
  private constructor(readonly name: string, private readonly handle: FileHandle, readonly size: number) {}

  static async open(path: string): Promise<FileSource> {
    let handle: FileHandle;
    try {
      handle = await open(path, 'r');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new PdvmError(`${path}: cannot be opened (${code === 'ENOENT' ? 'no such file' : code ?? (e as Error).message})`);
    }
    const st = await handle.stat();
    if (!st.isFile()) {
      await handle.close();
      throw new PdvmError(`${path}: is ${st.isDirectory() ? 'a folder' : 'not a regular file'}; give the path of the file itself`);
    }
    return new FileSource(path, handle, st.size);
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
