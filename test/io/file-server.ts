/** A loopback HTTP server for loading tests: files by path, with switches for the failures to test. */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface FileServerOptions {
  /** Answer Range requests with 206 (default true); false sends the whole file with 200. */
  ranges?: boolean;
  /** Every request gets this status and no body. */
  status?: number;
  /** Send only this many bytes of a body, then cut the connection. */
  cutAfter?: number;
  /** Requests must carry this Authorization header, else 401. */
  authorization?: string;
  /** Send an ETag with every file (its value), and 304 to a request whose If-None-Match matches it. */
  etag?: string;
}

export interface FileServer {
  url: string;
  requests: { path: string; range: string | undefined; status: number }[];
  /** Body bytes sent in all. */
  bytesSent: number;
  close(): Promise<void>;
}

export async function serveFiles(files: Map<string, Uint8Array>, options: FileServerOptions = {}): Promise<FileServer> {
  const state: FileServer = { url: '', requests: [], bytesSent: 0, close: async () => {} };
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    const range = req.headers.range;
    const record = (status: number) => state.requests.push({ path, range, status });
    if (options.status) {
      record(options.status);
      res.writeHead(options.status).end();
      return;
    }
    if (options.authorization && req.headers.authorization !== options.authorization) {
      record(401);
      res.writeHead(401).end();
      return;
    }
    const file = files.get(path);
    if (!file) {
      record(404);
      res.writeHead(404).end();
      return;
    }
    if (options.etag && req.headers['if-none-match'] === options.etag) {
      record(304);
      res.writeHead(304, { etag: options.etag }).end();
      return;
    }
    let body = file;
    const type = path.endsWith('.html') ? 'text/html; charset=utf-8' : path.endsWith('.js') ? 'text/javascript; charset=utf-8' : 'application/octet-stream';
    const headers: Record<string, string> = { 'content-type': type };
    if (options.etag) headers.etag = options.etag;
    let status = 200;
    const m = /^bytes=(\d+)-(\d*)$/.exec(range ?? '');
    if (m && options.ranges !== false) {
      const start = Number(m[1]);
      const end = Math.min(file.length - 1, m[2] ? Number(m[2]) : file.length - 1);
      if (start >= file.length) {
        record(416);
        res.writeHead(416, { 'content-range': `bytes */${file.length}` }).end();
        return;
      }
      body = file.subarray(start, end + 1);
      status = 206;
      headers['content-range'] = `bytes ${start}-${end}/${file.length}`;
    }
    headers['content-length'] = String(body.length);
    record(status);
    res.writeHead(status, headers);
    if (options.cutAfter !== undefined && options.cutAfter < body.length) {
      state.bytesSent += options.cutAfter;
      res.write(body.subarray(0, options.cutAfter), () => res.destroy());
      return;
    }
    state.bytesSent += body.length;
    res.end(body);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  state.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  state.close = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return state;
}
