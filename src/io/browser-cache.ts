/**
 * Browser only: downloaded model files kept in the origin's private file system (OPFS), folder
 * "pdvm-models". The first load streams the whole file there with progress, under a temporary name
 * (`<key>.partial`), renamed when complete; a small `<key>.json` record (URL, size, ETag) written last
 * is what makes it count, so a download cut short, refused by the quota or aborted leaves nothing kept
 * (and is deleted). Later loads read ranges of the kept File and revalidate it with the server's ETag
 * (If-None-Match on a one-byte range request); offline, the kept copy is used as is.
 */
import { AbortError } from '../errors.js';
import { HttpStatusError, IncompleteDownloadError, StorageQuotaError } from './errors.js';
import { contentLength, httpFetch, type FetchOptions } from './http.js';
import { BlobSource, type ByteSource } from './source.js';

const FOLDER = 'pdvm-models';

/** What is kept of one URL. */
export interface CachedModel {
  url: string;
  bytes: number;
  etag: string | null;
  /** When it was downloaded (ISO 8601). */
  savedAt: string;
}

interface Record extends CachedModel {
  /** The data file's name in the folder. */
  file: string;
}

// the parts of the File System Access API used here (lib.dom's types vary across TypeScript versions)
interface Writable {
  write(data: Uint8Array | string): Promise<void>;
  close(): Promise<void>;
  abort(): Promise<void>;
}
interface FileHandle {
  readonly kind: 'file';
  readonly name: string;
  getFile(): Promise<File>;
  createWritable(): Promise<Writable>;
  move?(name: string): Promise<void>;
}
interface DirectoryHandle {
  getDirectoryHandle(name: string, options?: { create?: boolean }): Promise<DirectoryHandle>;
  getFileHandle(name: string, options?: { create?: boolean }): Promise<FileHandle>;
  removeEntry(name: string): Promise<void>;
  keys(): AsyncIterable<string>;
}
interface StorageLike {
  getDirectory?(): Promise<DirectoryHandle>;
  estimate?(): Promise<{ quota?: number; usage?: number }>;
}

function storage(): StorageLike | null {
  return ((globalThis as { navigator?: { storage?: StorageLike } }).navigator?.storage as StorageLike | undefined) ?? null;
}

/** True where OPFS exists (browsers, workers); false in Node. */
export async function keepingAvailable(): Promise<boolean> {
  return typeof storage()?.getDirectory === 'function';
}

async function folder(): Promise<DirectoryHandle> {
  const root = await storage()!.getDirectory!();
  return root.getDirectoryHandle(FOLDER, { create: true });
}

/** A file name for a URL: FNV-1a (two 32-bit lanes) of the URL, then the URL's last part for people. */
function keyOf(url: string): string {
  let h1 = 0x811c9dc5, h2 = 0x01000193 ^ url.length;
  for (let i = 0; i < url.length; i++) {
    const c = url.charCodeAt(i);
    h1 = Math.imul(h1 ^ c, 0x01000193) >>> 0;
    h2 = Math.imul(h2 ^ c, 0x5bd1e995) >>> 0;
  }
  const tail = (url.split(/[?#]/)[0]!.split('/').filter(Boolean).pop() ?? 'file').replace(/[^A-Za-z0-9._-]/g, '_').slice(-60);
  return `${h1.toString(16).padStart(8, '0')}${h2.toString(16).padStart(8, '0')}-${tail}`;
}

async function fileIn(dir: DirectoryHandle, name: string): Promise<File | null> {
  try {
    return await (await dir.getFileHandle(name)).getFile();
  } catch {
    return null;
  }
}

async function readRecord(dir: DirectoryHandle, key: string): Promise<Record | null> {
  const f = await fileIn(dir, `${key}.json`);
  if (!f) return null;
  try {
    const r = JSON.parse(await f.text()) as Record;
    return typeof r.url === 'string' && typeof r.bytes === 'number' && typeof r.file === 'string' ? r : null;
  } catch {
    return null;
  }
}

async function remove(dir: DirectoryHandle, name: string): Promise<void> {
  await dir.removeEntry(name).catch(() => {});
}

function isQuotaError(e: unknown): boolean {
  const name = (e as { name?: string })?.name;
  return name === 'QuotaExceededError' || name === 'NS_ERROR_DOM_QUOTA_REACHED';
}

/** The kept copy of `url`, downloaded now if there is none or the server has a newer one. */
export async function openKeptUrl(url: string, options: FetchOptions): Promise<ByteSource> {
  const dir = await folder();
  const key = keyOf(url);
  const record = await readRecord(dir, key);
  const kept = record && record.url === url ? await fileIn(dir, record.file) : null;
  if (record && kept && kept.size === record.bytes && (await stillCurrent(url, record, options))) {
    options.onDownload?.(record.bytes, record.bytes, url);
    return new BlobSource(url, kept);
  }
  if (record) await forget(dir, key, record);
  return download(dir, key, url, options);
}

/**
 * Whether the kept copy is what the server has now: 304 to If-None-Match (or the same ETag, or no
 * ETag but the same size). A server that cannot be reached (offline) keeps the copy in use.
 */
async function stillCurrent(url: string, record: Record, options: FetchOptions): Promise<boolean> {
  const headers: { [k: string]: string } = { Range: 'bytes=0-0' };
  if (record.etag) headers['If-None-Match'] = record.etag;
  let res: Response;
  try {
    res = await httpFetch(url, { headers }, { ...options, onDownload: undefined });
  } catch (e) {
    if (e instanceof AbortError) throw e;
    return true; // offline: the kept copy is all there is
  }
  await res.body?.cancel().catch(() => {});
  if (res.status === 304) return true;
  if (!res.ok) return res.status >= 500; // a failing server: keep using the copy; 404 and the like: drop it
  const etag = res.headers.get('etag');
  if (record.etag && etag) return etag === record.etag;
  const total = /\/(\d+)\s*$/.exec(res.headers.get('content-range') ?? '')?.[1];
  return total !== undefined && Number(total) === record.bytes;
}

async function forget(dir: DirectoryHandle, key: string, record: Record | null): Promise<void> {
  await remove(dir, `${key}.json`);
  if (record) await remove(dir, record.file);
  await remove(dir, `${key}.partial`);
}

/** Streams the whole file into `<key>.partial`, renames it, then writes the record that makes it count. */
async function download(dir: DirectoryHandle, key: string, url: string, options: FetchOptions): Promise<ByteSource> {
  const res = await httpFetch(url, {}, options);
  if (!res.ok) {
    await res.body?.cancel().catch(() => {});
    throw new HttpStatusError(url, res.status, res.statusText);
  }
  const total = contentLength(res);
  const est = await storage()?.estimate?.().catch(() => null);
  if (total !== null && est?.quota !== undefined && est.usage !== undefined && total > est.quota - est.usage) {
    await res.body?.cancel().catch(() => {});
    throw new StorageQuotaError(url, total, `${((est.quota - est.usage) / 1e6).toFixed(1)} MB of the quota is free`);
  }
  const partial = `${key}.partial`;
  let writable: Writable | null = null;
  let received = 0;
  try {
    const handle = await dir.getFileHandle(partial, { create: true });
    writable = await handle.createWritable();
    const reader = res.body!.getReader();
    for (;;) {
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await reader.read();
      } catch {
        if (options.signal?.aborted) throw new AbortError(`loading ${url} was aborted`);
        throw new IncompleteDownloadError(url, received, total ?? received);
      }
      if (chunk.done) break;
      await writable.write(chunk.value);
      received += chunk.value.length;
      options.onDownload?.(received, total ?? 0, url);
    }
    if (total !== null && received < total) throw new IncompleteDownloadError(url, received, total);
    await writable.close();
    writable = null;
    let file = partial;
    if (typeof handle.move === 'function') {
      await handle.move(`${key}.bin`);
      file = `${key}.bin`;
    }
    const record: Record = { url, bytes: received, etag: res.headers.get('etag'), savedAt: new Date().toISOString(), file };
    const meta = await (await dir.getFileHandle(`${key}.json`, { create: true })).createWritable();
    await meta.write(JSON.stringify(record));
    await meta.close();
    return new BlobSource(url, (await fileIn(dir, file))!);
  } catch (e) {
    await writable?.abort().catch(() => {});
    await forget(dir, key, null);
    await remove(dir, `${key}.bin`);
    if (isQuotaError(e)) throw new StorageQuotaError(url, total ?? received, (e as Error).message || 'quota exceeded');
    throw e;
  }
}

/** The model files kept in this origin's storage (browsers; empty elsewhere). Unfinished downloads are removed. */
export async function listCachedModels(): Promise<CachedModel[]> {
  if (!(await keepingAvailable())) return [];
  const dir = await folder();
  const names: string[] = [];
  for await (const name of dir.keys()) names.push(name);
  const out: CachedModel[] = [];
  const referenced = new Set<string>();
  for (const name of names.filter((n) => n.endsWith('.json'))) {
    const r = await readRecord(dir, name.slice(0, -5));
    if (!r) continue;
    referenced.add(r.file);
    out.push({ url: r.url, bytes: r.bytes, etag: r.etag, savedAt: r.savedAt });
  }
  // a .partial or .bin without a record: an unfinished download
  for (const name of names) if (!name.endsWith('.json') && !referenced.has(name)) await remove(dir, name);
  return out;
}

/**
 * Deletes the kept copy of `url` (for a folder URL ending in "/", every file under it; every kept file
 * when no URL is given); returns how many files were deleted.
 */
export async function deleteCachedModel(url?: string): Promise<number> {
  if (!(await keepingAvailable())) return 0;
  const dir = await folder();
  const all = await listCachedModels();
  let deleted = 0;
  for (const m of all) {
    if (url !== undefined && m.url !== url && !(url.endsWith('/') && m.url.startsWith(url))) continue;
    const key = keyOf(m.url);
    await forget(dir, key, await readRecord(dir, key));
    deleted++;
  }
  return deleted;
}
