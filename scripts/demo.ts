/**
 * `npm run demo`: bundles the demo page (web/: a page and a module Worker, from pdvm's browser entry)
 * with esbuild into dist/demo/, and serves it with the demo model on 127.0.0.1 (it prints the URL).
 *   node dist/scripts/demo.js [--port N] [--build-only]
 * The server answers Range requests and sends ETags, as a static host or CDN does, so the page loads
 * the model by ranges and revalidates its kept copy. The browser test (test/browser) uses the same
 * build and server.
 */
import { copyFileSync, createReadStream, existsSync, mkdirSync, statSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, extname, join, normalize, resolve, sep } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { build, type Plugin } from 'esbuild';

/** The repository root: the nearest folder above this file with package.json and web/ (dist/scripts/ -> ../..). */
function repositoryRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!(existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'web')))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('the demo page sources (web/) were not found above scripts/demo');
    dir = up;
  }
  return dir;
}
export const ROOT = repositoryRoot();
export const DEMO_DIR = join(ROOT, 'dist', 'demo');

// @mlc-ai/web-xgrammar's UMD bundle requires 'url' and 'module' in a branch only Node takes: empty
// modules stand in for them in the browser bundle
const nodeBranchStubs: Plugin = {
  name: 'xgrammar-node-branch',
  setup(b) {
    b.onResolve({ filter: /^(url|module)$/ }, (args) => (args.importer.includes('web-xgrammar') ? { path: args.path, namespace: 'stub' } : undefined));
    b.onLoad({ filter: /.*/, namespace: 'stub' }, () => ({ contents: 'export default {};', loader: 'js' }));
  },
};

/** Bundles web/main.ts and web/worker.ts (importing 'pdvm', resolved through its browser condition) into `outDir`. */
export async function buildDemo(outDir = DEMO_DIR): Promise<string> {
  mkdirSync(outDir, { recursive: true });
  await build({
    entryPoints: [join(ROOT, 'web', 'main.ts'), join(ROOT, 'web', 'worker.ts')],
    outdir: outDir,
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    sourcemap: true,
    minify: true,
    logLevel: 'warning',
    plugins: [nodeBranchStubs],
  });
  for (const f of ['index.html', 'style.css']) copyFileSync(join(ROOT, 'web', f), join(outDir, f));
  return outDir;
}

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8',
  '.map': 'application/json', '.json': 'application/json', '.png': 'image/png',
};

/** The file a URL path names: /models/... from the package's models/, the rest from the build. */
function fileFor(urlPath: string, demoDir: string): string | null {
  const path = decodeURIComponent(urlPath.split('?')[0]!);
  const [base, rel] = path.startsWith('/models/') ? [join(ROOT, 'models'), path.slice('/models/'.length)] : [demoDir, path === '/' ? 'index.html' : path.slice(1)];
  const file = normalize(join(base, rel));
  if (!file.startsWith(base + sep)) return null;
  return existsSync(file) && statSync(file).isFile() ? file : null;
}

function serveFile(req: IncomingMessage, res: ServerResponse, file: string): void {
  const { size, mtimeMs } = statSync(file);
  const etag = `"${size.toString(16)}-${Math.floor(mtimeMs).toString(16)}"`;
  res.setHeader('Content-Type', TYPES[extname(file)] ?? 'application/octet-stream');
  res.setHeader('Accept-Ranges', 'bytes');
  res.setHeader('ETag', etag);
  res.setHeader('Cache-Control', 'no-cache');
  if (req.headers['if-none-match'] === etag) {
    res.writeHead(304).end();
    return;
  }
  const range = /^bytes=(\d*)-(\d*)$/.exec(req.headers.range ?? '');
  if (range && (range[1] || range[2])) {
    const start = range[1] ? Number(range[1]) : Math.max(0, size - Number(range[2]));
    const end = range[1] && range[2] ? Math.min(Number(range[2]), size - 1) : size - 1;
    if (start >= size || start > end) {
      res.writeHead(416, { 'Content-Range': `bytes */${size}` }).end();
      return;
    }
    res.writeHead(206, { 'Content-Range': `bytes ${start}-${end}/${size}`, 'Content-Length': end - start + 1 });
    if (req.method === 'HEAD') res.end();
    else createReadStream(file, { start, end }).pipe(res);
    return;
  }
  res.writeHead(200, { 'Content-Length': size });
  if (req.method === 'HEAD') res.end();
  else createReadStream(file).pipe(res);
}

/** Serves the built page and the models on host:port (port 0: any free one); resolves with the server and its URL. */
export async function serveDemo(options: { port?: number; host?: string; demoDir?: string } = {}): Promise<{ server: Server; url: string }> {
  const host = options.host ?? '127.0.0.1', demoDir = options.demoDir ?? DEMO_DIR;
  const server = createServer((req, res) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { Allow: 'GET, HEAD' }).end();
      return;
    }
    const file = fileFor(req.url ?? '/', demoDir);
    if (!file) {
      res.writeHead(404, { 'Content-Type': 'text/plain' }).end(`not found: ${req.url}\n`);
      return;
    }
    serveFile(req, res, file);
  });
  await new Promise<void>((ok, fail) => {
    server.once('error', fail);
    server.listen(options.port ?? 0, host, () => ok());
  });
  const { port } = server.address() as AddressInfo;
  return { server, url: `http://${host}:${port}/` };
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const portAt = args.indexOf('--port');
  const port = portAt >= 0 ? Number(args[portAt + 1]) : 8137;
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`--port must be a port number (0-65535), got ${args[portAt + 1]}`);
  const dir = await buildDemo();
  if (args.includes('--build-only')) {
    console.log(`built the demo page into ${dir}`);
    return;
  }
  let served;
  try {
    served = await serveDemo({ port });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE' || portAt >= 0) throw e;
    served = await serveDemo({ port: 0 }); // the default port is taken: any free one
  }
  console.log(`pdvm demo: ${served.url}  (Ctrl-C stops the server)`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  main().catch((e: Error) => {
    console.error(`pdvm demo: ${e.message}`);
    process.exit(1);
  });
}
