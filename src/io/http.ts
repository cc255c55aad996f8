/**
 * A file over HTTP(S) as a ByteSource. Opening asks for the first window of bytes with a Range
 * request; a 206 answer gives the size (Content-Range), and later reads fetch their ranges, small reads
 * coalesced into windows (a UPG or safetensors header, then tensor by tensor). A server that ignores
 * Range (a 200 answer) is read whole once, with progress. Works wherever `fetch` exists (browsers,
 * workers, Node >= 18); a given `fetch` and headers (Authorization for gated models) are used for
 * every request.
 */
import { AbortError } from '../errors.js';
import { HttpStatusError, IncompleteDownloadError, NetworkError } from './errors.js';
import { MemorySource, type ByteSource } from './source.js';

export type FetchFunction = (input: string, init?: RequestInit) => Promise<Response>;

export interface FetchOptions {
  /** Sent with every request (e.g. { Authorization: 'Bearer hf_...' } for a gated repository). */
  headers?: Record<string, string>;
  /** Used instead of the global fetch (to add credentials, retries, a proxy...). */
  fetch?: FetchFunction;
  /** Cancels the requests: reads reject with AbortError. */
  signal?: AbortSignal;
  /** Called as bytes arrive: bytes received from this URL so far, and the file's size (0 when unknown). */
  onDownload?: (receivedBytes: number, totalBytes: number, url: string) => void;
}

/** Reads shorter than this fetch a window of this many bytes; the reads after them are served from it. */
export const READ_WINDOW = 1 << 20;

function describe(e: unknown): string {
  const err = e as Error & { cause?: { code?: string; message?: string } };
  const cause = err?.cause ? `: ${err.cause.code ?? err.cause.message}` : '';
  return `${err?.name ?? 'Error'}: ${err?.message ?? String(e)}${cause}`;
}

function checkAbort(url: string, signal?: AbortSignal): void {
  if (signal?.aborted) throw new AbortError(`loading ${url} was aborted`);
}

/** fetch with the caller's headers, fetch and signal; a thrown TypeError becomes a NetworkError. */
export async function httpFetch(url: string, init: RequestInit, options: FetchOptions): Promise<Response> {
  checkAbort(url, options.signal);
  const headers = new Headers(options.headers);
  new Headers(init.headers).forEach((v, k) => headers.set(k, v));
  const f: FetchFunction = options.fetch ?? ((input, i) => globalThis.fetch(input, i));
  try {
    return await f(url, { ...init, headers, signal: options.signal });
  } catch (e) {
    checkAbort(url, options.signal);
    throw new NetworkError(url, describe(e));
  }
}

/**
 * The body of a response, whole, checked against `expected` bytes (null when unknown); `onChunk` gets
 * the bytes received so far. A connection cut mid-body is an IncompleteDownloadError.
 */
export async function readBody(res: Response, url: string, expected: number | null, options: FetchOptions, onChunk?: (received: number) => void): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let received = 0;
  const out = expected !== null ? new Uint8Array(expected) : null;
  const reader = res.body?.getReader();
  if (reader) {
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        if (out && received + value.length <= out.length) out.set(value, received);
        else chunks.push(value);
        received += value.length;
        onChunk?.(received);
      }
    } catch (e) {
      checkAbort(url, options.signal);
      throw new IncompleteDownloadError(url, received, expected ?? received);
    }
  }
  if (expected !== null && received < expected) throw new IncompleteDownloadError(url, received, expected);
  if (out && received === expected) return out;
  // size unknown (or more than announced): join the chunks
  const all = new Uint8Array(received);
  let at = 0;
  if (out) {
    all.set(out.subarray(0, Math.min(received, out.length)));
    at = Math.min(received, out.length);
  }
  for (const c of chunks) {
    all.set(c, at);
    at += c.length;
  }
  return all;
}

/** The Content-Length of a response whose body is not re-encoded; null when unknown. */
export function contentLength(res: Response): number | null {
  const enc = res.headers.get('content-encoding');
  if (enc && enc !== 'identity') return null;
  const n = Number(res.headers.get('content-length') ?? NaN);
  return Number.isSafeInteger(n) && n >= 0 ? n : null;
}

/** "bytes 0-1023/4096" -> 4096; null when missing or "*". */
function totalFromContentRange(value: string | null): number | null {
  const m = /^bytes\s+\d+-\d+\/(\d+)\s*$/i.exec(value ?? '');
  return m ? Number(m[1]) : null;
}

export class HttpSource implements ByteSource {
  private window: { offset: number; bytes: Uint8Array } | null;
  private received = 0;

  private constructor(readonly name: string, readonly size: number, first: Uint8Array, private readonly options: FetchOptions, readonly etag: string | null) {
    this.window = { offset: 0, bytes: first };
    this.received = first.length;
    options.onDownload?.(this.received, size, name);
  }

  /**
   * Opens `url`: a Range request for its first window. Where the server ignores Range, the whole file
   * is downloaded now (with progress) and held in memory.
   */
  static async open(url: string, options: FetchOptions = {}): Promise<ByteSource> {
    const res = await httpFetch(url, { headers: { Range: `bytes=0-${READ_WINDOW - 1}` } }, options);
    if (res.status === 206) {
      const size = totalFromContentRange(res.headers.get('content-range'));
      if (size !== null) {
        const first = await readBody(res, url, Math.min(READ_WINDOW, size), options);
        return new HttpSource(url, size, first, options, res.headers.get('etag'));
      }
      await res.body?.cancel();
      return HttpSource.download(url, options);
    }
    if (res.status === 416) {
      // a range the file cannot satisfy: the file is empty
      await res.body?.cancel();
      return new MemorySource(url, new Uint8Array(0));
    }
    if (!res.ok) {
      await res.body?.cancel().catch(() => {});
      throw new HttpStatusError(url, res.status, res.statusText);
    }
    return new MemorySource(url, await HttpSource.readWhole(res, url, options));
  }

  /** One plain GET of the whole file, held in memory. */
  static async download(url: string, options: FetchOptions = {}): Promise<ByteSource> {
    const res = await httpFetch(url, {}, options);
    if (!res.ok) {
      await res.body?.cancel().catch(() => {});
      throw new HttpStatusError(url, res.status, res.statusText);
    }
    return new MemorySource(url, await HttpSource.readWhole(res, url, options));
  }

  private static readWhole(res: Response, url: string, options: FetchOptions): Promise<Uint8Array> {
    const total = contentLength(res);
    return readBody(res, url, total, options, (n) => options.onDownload?.(n, total ?? 0, url));
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    if (offset < 0 || length < 0 || offset + length > this.size) throw new RangeError(`${this.name}: wanted ${length} bytes at ${offset}, but it holds ${this.size}`);
    const w = this.window;
    if (w && offset >= w.offset && offset + length <= w.offset + w.bytes.length) {
      // a copy: the caller may keep it (a float32 view) long after the window moves on
      return w.bytes.slice(offset - w.offset, offset - w.offset + length);
    }
    if (length === 0) return new Uint8Array(0);
    const windowEnd = w ? w.offset + w.bytes.length : 0;
    if (w && offset >= w.offset && offset < windowEnd) {
      // starts in the window, ends past it: only the rest is fetched
      const out = new Uint8Array(length);
      out.set(w.bytes.subarray(offset - w.offset));
      out.set(await this.read(windowEnd, offset + length - windowEnd), windowEnd - offset);
      return out;
    }
    if (length >= READ_WINDOW) return this.fetchRange(offset, length);
    const end = Math.min(this.size, offset + READ_WINDOW);
    const bytes = await this.fetchRange(offset, end - offset);
    this.window = { offset, bytes };
    return bytes.slice(0, length);
  }

  private async fetchRange(offset: number, length: number): Promise<Uint8Array> {
    const headers: Record<string, string> = { Range: `bytes=${offset}-${offset + length - 1}` };
    if (this.etag && !this.etag.startsWith('W/')) headers['If-Range'] = this.etag;
    const res = await httpFetch(this.name, { headers }, this.options);
    if (res.status === 200) {
      // the server sent the whole file after all (it changed, or stopped honouring Range): keep it whole
      const whole = await readBody(res, this.name, contentLength(res), this.options);
      if (whole.length !== this.size) throw new HttpStatusError(this.name, 416, 'the file changed while loading');
      this.window = { offset: 0, bytes: whole };
      return whole.slice(offset, offset + length);
    }
    if (res.status !== 206) {
      await res.body?.cancel().catch(() => {});
      throw new HttpStatusError(this.name, res.status, res.statusText);
    }
    const bytes = await readBody(res, this.name, length, this.options, (n) => this.options.onDownload?.(this.received + n, this.size, this.name));
    this.received += bytes.length;
    return bytes;
  }

  async close(): Promise<void> {
    this.window = null;
  }
}
