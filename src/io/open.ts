/**
 * Turns whatever names a model into byte sources: a local path (Node), an http(s) URL string or URL,
 * an ArrayBuffer or Uint8Array, a Blob or File, a ByteSource; for a Hugging Face folder, a base URL
 * ending in "/" or a map of file names to any of those.
 */
import { InvalidInputError, PdvmError } from '../errors.js';
import { HttpStatusError } from './errors.js';
import { MapFileSet, type FileSet } from './files.js';
import { HttpSource, type FetchOptions } from './http.js';
import { nodePlatform } from './platform.js';
import { BlobSource, isByteSource, MemorySource, type ByteSource } from './source.js';
import { openKeptUrl, keepingAvailable } from './browser-cache.js';

/** One file: a path or URL, bytes, a Blob/File or a ByteSource. */
export type FileInput = string | URL | ArrayBuffer | Uint8Array | Blob | ByteSource;

/** A model: one file (.upg), or a Hugging Face folder (a path, a base URL ending in "/", or files by name). */
export type ModelSource = FileInput | Record<string, FileInput> | Map<string, FileInput>;

export interface OpenOptions extends FetchOptions {
  /**
   * Browser only: keep downloaded files in the origin's private storage (OPFS) and read later loads
   * from there, revalidated with the server's ETag (default true where OPFS exists).
   */
  cache?: boolean;
}

export type OpenedModel = { kind: 'file'; source: ByteSource } | { kind: 'folder'; files: FileSet };

const URL_SCHEME = /^[a-z][a-z0-9+.-]*:/i;

function isHttp(url: URL): boolean {
  return url.protocol === 'http:' || url.protocol === 'https:';
}

/** A URL string or URL object as a URL; null for a local path. Windows drive letters stay paths. */
function asUrl(input: string | URL): URL | null {
  if (input instanceof URL) return input;
  if (!URL_SCHEME.test(input) || /^[a-z]:[\\/]/i.test(input)) return null;
  try {
    return new URL(input);
  } catch {
    return null;
  }
}

/** An http(s) file: from the browser's kept copy where one exists (or is made now), else by Range requests. */
export async function openUrl(url: string, options: OpenOptions = {}): Promise<ByteSource> {
  if (options.cache !== false && (await keepingAvailable())) return openKeptUrl(url, options);
  return HttpSource.open(url, options);
}

/** A folder under a base URL: a file answering 404 is absent. */
class UrlFileSet implements FileSet {
  constructor(readonly name: string, private readonly options: OpenOptions) {}
  async open(file: string): Promise<ByteSource | null> {
    try {
      return await openUrl(this.locate(file), this.options);
    } catch (e) {
      if (e instanceof HttpStatusError && (e.status === 404 || e.status === 410)) return null;
      throw e;
    }
  }
  locate(file: string): string {
    return new URL(file, this.name).href;
  }
}

/** One file as a byte source; `name` names bytes and Blobs without one in messages. */
export async function openFile(input: FileInput, options: OpenOptions = {}, name = 'model bytes'): Promise<ByteSource> {
  if (isByteSource(input)) return input;
  if (input instanceof Uint8Array || input instanceof ArrayBuffer) return new MemorySource(name, input);
  if (typeof Blob !== 'undefined' && input instanceof Blob) return new BlobSource((input as File).name || name, input);
  if (typeof input === 'string' || input instanceof URL) {
    const url = asUrl(input);
    if (url && isHttp(url)) return openUrl(url.href, options);
    if (url && url.protocol !== 'file:') throw new InvalidInputError(`${url.href}: only http(s) and file: URLs can be loaded`);
    const platform = await nodePlatform(String(input));
    const path = url ? platform.fileUrlToPath(url) : (input as string);
    if ((await platform.kind(path)) !== 'file') throw new PdvmError(`${path}: no such model file`);
    return platform.openFile(path);
  }
  throw new InvalidInputError(`cannot load a model from ${Object.prototype.toString.call(input)}: give a path, a URL, bytes, a Blob/File or a ByteSource`);
}

/** Resolves a model source into one file or a folder of files. */
export async function openModelSource(input: ModelSource, options: OpenOptions = {}): Promise<OpenedModel> {
  if (input instanceof Map || (typeof input === 'object' && input !== null && Object.getPrototypeOf(input) === Object.prototype && !isByteSource(input))) {
    const entries = input instanceof Map ? [...input.entries()] : Object.entries(input as Record<string, FileInput>);
    const openers = new Map(entries.map(([file, v]) => [file, () => openFile(v, options, file)] as const));
    return { kind: 'folder', files: new MapFileSet('model files', openers) };
  }
  if (typeof input === 'string' || input instanceof URL) {
    const url = asUrl(input);
    if (url && isHttp(url)) {
      if (url.pathname.endsWith('/')) return { kind: 'folder', files: new UrlFileSet(url.href, options) };
      return { kind: 'file', source: await openUrl(url.href, options) };
    }
    if (!url || url.protocol === 'file:') {
      const platform = await nodePlatform(String(input));
      const path = url ? platform.fileUrlToPath(url) : (input as string);
      const kind = await platform.kind(path);
      if (kind === null) throw new PdvmError(`${path}: no such model folder or file`);
      if (kind === 'folder') return { kind: 'folder', files: platform.openFolder(path) };
      return { kind: 'file', source: await platform.openFile(path) };
    }
  }
  return { kind: 'file', source: await openFile(input as FileInput, options) };
}
