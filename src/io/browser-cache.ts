/** Browser only: downloaded models kept in the origin's private file system (OPFS). */
import type { OpenOptions } from './open.js';
import type { ByteSource } from './source.js';
import { HttpSource } from './http.js';

/** True where OPFS exists (browsers, workers); false in Node. */
export async function keepingAvailable(): Promise<boolean> {
  return false;
}

export async function openKeptUrl(url: string, options: OpenOptions): Promise<ByteSource> {
  return HttpSource.open(url, options);
}
