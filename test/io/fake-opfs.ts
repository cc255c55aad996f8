/**
 * An in-memory stand-in for the origin private file system (navigator.storage.getDirectory), with a
 * quota, so that io/browser-cache.ts runs in Node. Writables buffer until close() (as browsers write
 * to a swap file), abort() discards; a write past the quota throws QuotaExceededError.
 */
type Entry = FakeDirectory | { bytes: Uint8Array };

export class FakeDirectory {
  readonly entries = new Map<string, Entry>();
  constructor(private readonly storage: FakeStorage) {}

  async getDirectoryHandle(name: string, options: { create?: boolean } = {}): Promise<FakeDirectory> {
    let e = this.entries.get(name);
    if (!e && options.create) this.entries.set(name, (e = new FakeDirectory(this.storage)));
    if (!(e instanceof FakeDirectory)) throw new DOMException(`${name} not found`, 'NotFoundError');
    return e;
  }

  async getFileHandle(name: string, options: { create?: boolean } = {}) {
    let e = this.entries.get(name);
    if (!e && options.create) this.entries.set(name, (e = { bytes: new Uint8Array(0) }));
    if (!e || e instanceof FakeDirectory) throw new DOMException(`${name} not found`, 'NotFoundError');
    let current = name;
    const dir = this;
    return {
      kind: 'file' as const,
      get name() {
        return current;
      },
      async getFile() {
        const entry = dir.entries.get(current) as { bytes: Uint8Array };
        return new File([entry.bytes as Uint8Array<ArrayBuffer>], current);
      },
      async createWritable() {
        const chunks: Uint8Array[] = [];
        let pending = 0;
        return {
          async write(data: Uint8Array | string) {
            const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data.slice();
            if (dir.storage.usage() + pending + bytes.length > dir.storage.quota) throw new DOMException('the quota has been exceeded', 'QuotaExceededError');
            chunks.push(bytes);
            pending += bytes.length;
          },
          async close() {
            const all = new Uint8Array(pending);
            let at = 0;
            for (const c of chunks) {
              all.set(c, at);
              at += c.length;
            }
            (dir.entries.get(current) as { bytes: Uint8Array }).bytes = all;
          },
          async abort() {
            chunks.length = 0;
          },
        };
      },
      async move(to: string) {
        dir.entries.set(to, dir.entries.get(current)!);
        dir.entries.delete(current);
        current = to;
      },
    };
  }

  async removeEntry(name: string): Promise<void> {
    if (!this.entries.delete(name)) throw new DOMException(`${name} not found`, 'NotFoundError');
  }

  async *keys(): AsyncIterable<string> {
    yield* [...this.entries.keys()];
  }

  /** File names and sizes, for assertions. */
  listing(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [k, v] of this.entries) if (!(v instanceof FakeDirectory)) out[k] = v.bytes.length;
    return out;
  }

  bytes(): number {
    let n = 0;
    for (const v of this.entries.values()) n += v instanceof FakeDirectory ? v.bytes() : v.bytes.length;
    return n;
  }
}

export class FakeStorage {
  readonly root = new FakeDirectory(this);
  constructor(public quota = Infinity, public reportQuota = false) {}
  usage(): number {
    return this.root.bytes();
  }
  getDirectory = async () => this.root;
  estimate = async () => (this.reportQuota ? { quota: this.quota, usage: this.usage() } : {});
}

/** Installs `storage` as navigator.storage until the returned function is called. */
export function installFakeStorage(storage: FakeStorage): () => void {
  const g = globalThis as { navigator?: unknown };
  const before = Object.getOwnPropertyDescriptor(globalThis, 'navigator');
  Object.defineProperty(globalThis, 'navigator', { value: { storage }, configurable: true, writable: true });
  return () => {
    if (before) Object.defineProperty(globalThis, 'navigator', before);
    else delete g.navigator;
  };
}
