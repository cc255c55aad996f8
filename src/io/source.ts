/**
 * Random-access byte sources. The format readers only need `size` and `read(offset, length)`, so the
 * same code reads a local file in Node (io/node-files.ts), bytes in memory, a Blob or File, an HTTP
 * resource by Range requests (io/http.ts) and a model kept in the browser's storage (io/browser-cache.ts).
 */
export interface ByteSource {
  /** What to name in messages: a path, a URL, a file name. */
  readonly name: string;
  readonly size: number;
  read(offset: number, length: number): Promise<Uint8Array>;
  close(): Promise<void>;
}

/** True for an object that has the ByteSource members. */
export function isByteSource(x: unknown): x is ByteSource {
  const s = x as ByteSource;
  return typeof x === 'object' && x !== null && typeof s.read === 'function' && typeof s.size === 'number' && typeof s.close === 'function';
}

/** Wraps bytes already in memory (tests, uploads, an ArrayBuffer the caller fetched). */
export class MemorySource implements ByteSource {
  private readonly bytes: Uint8Array;
  constructor(readonly name: string, bytes: Uint8Array | ArrayBuffer) {
    this.bytes = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  }
  get size(): number {
    return this.bytes.length;
  }
  async read(offset: number, length: number): Promise<Uint8Array> {
    if (offset + length > this.bytes.length) throw new RangeError(`${this.name}: wanted ${length} bytes at ${offset}, but it holds ${this.bytes.length}`);
    return this.bytes.subarray(offset, offset + length);
  }
  async close(): Promise<void> {}
}

/** A Blob or File (a browser upload, a kept download): ranges read through slice(), nothing else held. */
export class BlobSource implements ByteSource {
  constructor(readonly name: string, private readonly blob: Blob) {}
  get size(): number {
    return this.blob.size;
  }
  async read(offset: number, length: number): Promise<Uint8Array> {
    if (offset + length > this.blob.size) throw new RangeError(`${this.name}: wanted ${length} bytes at ${offset}, but it holds ${this.blob.size}`);
    return new Uint8Array(await this.blob.slice(offset, offset + length).arrayBuffer());
  }
  async close(): Promise<void> {}
}

/** Reads a whole (small) source as UTF-8 text. */
export async function readText(source: ByteSource): Promise<string> {
  return new TextDecoder().decode(await source.read(0, source.size));
}
