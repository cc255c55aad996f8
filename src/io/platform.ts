/**
 * What only Node can do for the core (open local files and folders), registered by the Node-only
 * module io/node-files.ts when it is imported: the Node entry (src/index.ts) and the CLI import it.
 * The core never imports a Node module; in a browser a local path is refused with a hint.
 */
import { InvalidInputError } from '../errors.js';
import type { FileSet } from './files.js';
import type { ByteSource } from './source.js';

export interface NodePlatform {
  /** 'file', 'folder', or null where nothing is at `path`. */
  kind(path: string): Promise<'file' | 'folder' | null>;
  openFile(path: string): Promise<ByteSource>;
  openFolder(path: string): FileSet;
  /** A file: URL as a local path. */
  fileUrlToPath(url: URL): string;
}

let registered: NodePlatform | null = null;

export function registerNodePlatform(platform: NodePlatform): void {
  registered = platform;
}

export function isNode(): boolean {
  const p = (globalThis as { process?: { versions?: { node?: string } } }).process;
  return typeof p?.versions?.node === 'string';
}

/** The Node platform; `what` names the path for the browser's refusal. */
export async function nodePlatform(what: string): Promise<NodePlatform> {
  if (registered) return registered;
  if (!isNode()) throw new InvalidInputError(`${what}: a local path can be loaded only in Node; in a browser give a URL, a File or Blob, or bytes`);
  // modules imported past the entry points (tests, tools) get it here; the specifier is not a literal
  // so that bundlers never follow it into a browser build
  const specifier = ['.', 'node-files.js'].join('/');
  await import(specifier);
  return registered!;
}
