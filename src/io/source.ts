/**
 * Random-access byte sources. The format readers only need `size` and `read(offset, length)`, so the
 * same code reads a local file in Node and a File/Blob or HTTP range in a browser.
 */
export interface ByteSource {
  readonly name: string;
  readonly size: number;
  read(offset: number, length: number): Promise<Uint8Array>;
  close(): Promise<void>;
}

/** Wraps bytes already in memory (tests, browser uploads). */
export class MemorySource implements ByteSource {
  constructor(readonly name: string, private readonly bytes: Uint8Array) {}
  get size(): number {
    return this.bytes.length;
  }
  async read(offset: number, length: number): Promise<Uint8Array> {
    return this.bytes.subarray(offset, offset + length);
  }
  async close(): Promise<void> {}
}
