/**
 * Node only: local files and folders as byte sources and file sets. Importing this module registers
 * them with the core (io/platform.ts).
 */
import { open, readFile, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ModelFormatError, PdvmError } from '../errors.js';
import type { FileSet } from './files.js';
import { registerNodePlatform } from './platform.js';
import type { ByteSource } from './source.js';

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

/** A local folder: its files by name. */
export class FolderFileSet implements FileSet {
  constructor(readonly name: string) {}
  async open(file: string): Promise<ByteSource | null> {
    const path = join(this.name, file);
    if (!(await exists(path))) return null;
    return FileSource.open(path);
  }
  locate(file: string): string {
    return join(this.name, file);
  }
}

export async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

export async function readJsonFile(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new ModelFormatError(path, `cannot be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  try {
    const v = JSON.parse(text);
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not a JSON object');
    return v;
  } catch (e) {
    throw new ModelFormatError(path, `is not valid JSON: ${(e as Error).message}`);
  }
}

registerNodePlatform({
  async kind(path) {
    try {
      return (await stat(path)).isDirectory() ? 'folder' : 'file';
    } catch {
      return null;
    }
  },
  openFile: (path) => FileSource.open(path),
  openFolder: (path) => new FolderFileSet(path),
  fileUrlToPath: (url) => fileURLToPath(url),
});
