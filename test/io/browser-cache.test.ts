/**
 * Keeping downloads in the browser's storage (io/browser-cache.ts), run in Node over an in-memory
 * stand-in for OPFS (fake-opfs.ts): the first load downloads the whole file once and keeps it, the
 * next loads read the kept copy after a 304 to If-None-Match (and offline without asking), a changed
 * ETag downloads again; a download cut short and a quota refusal are typed errors that leave nothing
 * kept; listCachedModels and deleteCachedModel see and remove what is kept. Chromium's real OPFS is
 * exercised by the page's browser test (test/browser).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { loadModel, listCachedModels, deleteCachedModel, AbortError, IncompleteDownloadError, StorageQuotaError, type ModelSource } from 'pdvm';
import { ROOT } from '../helpers.js';
import { serveFiles } from './file-server.js';
import { FakeStorage, installFakeStorage } from './fake-opfs.js';

const DEMO = join(ROOT, 'models', 'brown-llama-12m.upg');
let bytes: Uint8Array;
let reference: number[];

async function greedyIds(source: ModelSource, options = {}): Promise<number[]> {
  const model = await loadModel(source, { contextLength: 64, ...options });
  try {
    return (await model.generate('The jury said', { maxTokens: 16, temperature: 0 })).tokenIds;
  } finally {
    await model.dispose();
  }
}

before(async () => {
  bytes = new Uint8Array(await readFile(DEMO));
  reference = await greedyIds(DEMO);
});

test('kept on first load, read from the kept copy after a 304, offline too; a new ETag downloads again', async () => {
  const storage = new FakeStorage();
  const uninstall = installFakeStorage(storage);
  const served = new Map([['/brown.upg', bytes]]);
  const options = { etag: '"v1"' };
  let server = await serveFiles(served, options);
  try {
    const url = `${server.url}/brown.upg`;
    const progress: number[] = [];
    assert.deepEqual(await greedyIds(url, { onProgress: (p: { phase: string; loadedBytes: number }) => p.phase === 'download' && progress.push(p.loadedBytes) }), reference);
    assert.deepEqual(server.requests.map((r) => [r.range, r.status]), [[undefined, 200]], 'one whole download');
    assert.equal(progress.at(-1), bytes.length);
    assert.deepEqual((await listCachedModels()).map((m) => [m.url, m.bytes, m.etag]), [[url, bytes.length, '"v1"']]);
    const files = (await storage.root.getDirectoryHandle('pdvm-models')).listing();
    assert.deepEqual(Object.keys(files).map((f) => f.replace(/^[0-9a-f]{16}-/, '')).sort(), ['brown.upg.bin', 'brown.upg.json']);

    server.requests.length = 0;
    assert.deepEqual(await greedyIds(url), reference);
    assert.deepEqual(server.requests.map((r) => [r.range, r.status]), [['bytes=0-0', 304]], 'only a revalidation');

    options.etag = '"v2"';
    server.requests.length = 0;
    assert.deepEqual(await greedyIds(url), reference);
    assert.deepEqual(server.requests.map((r) => [r.range, r.status]), [['bytes=0-0', 206], [undefined, 200]], 'revalidation, then the new file');
    assert.deepEqual((await listCachedModels()).map((m) => m.etag), ['"v2"']);

    const port = new URL(url).port;
    await server.close();
    assert.deepEqual(await greedyIds(url), reference, 'offline: the kept copy');

    // a second URL is a second entry; deleting by URL and then all
    server = await serveFiles(served, options);
    const other = `${server.url}/brown.upg`;
    assert.notEqual(new URL(other).port, port);
    assert.deepEqual(await greedyIds(other), reference);
    assert.equal((await listCachedModels()).length, 2);
    assert.equal(await deleteCachedModel(other), 1);
    assert.deepEqual((await listCachedModels()).map((m) => m.url), [url]);
    assert.equal(await deleteCachedModel(), 1);
    assert.deepEqual(await listCachedModels(), []);
    assert.equal(storage.usage(), 0);
  } finally {
    await server.close();
    uninstall();
  }
});

test('a download cut short: IncompleteDownloadError naming the URL, nothing kept', async () => {
  const storage = new FakeStorage();
  const uninstall = installFakeStorage(storage);
  const server = await serveFiles(new Map([['/brown.upg', bytes]]), { cutAfter: 3_000_000 });
  try {
    await assert.rejects(loadModel(`${server.url}/brown.upg`), (e: unknown) => {
      assert.ok(e instanceof IncompleteDownloadError, String(e));
      assert.match(e.message, /brown\.upg: the download ended after \d+ of 9027840 bytes/);
      return true;
    });
    assert.deepEqual(await listCachedModels(), []);
    assert.equal(storage.usage(), 0, 'no partial file left');
  } finally {
    await server.close();
    uninstall();
  }
});

test('a download aborted half-way: AbortError, nothing kept', async () => {
  const storage = new FakeStorage();
  const uninstall = installFakeStorage(storage);
  const server = await serveFiles(new Map([['/brown.upg', bytes]]));
  try {
    const controller = new AbortController();
    const load = loadModel(`${server.url}/brown.upg`, { signal: controller.signal, onProgress: (p) => p.phase === 'download' && p.loadedBytes > 0 && controller.abort() });
    await assert.rejects(load, (e: unknown) => e instanceof AbortError && /loading .*brown\.upg was aborted/.test(e.message));
    assert.deepEqual(await listCachedModels(), []);
    assert.equal(storage.usage(), 0, 'no partial file left');
  } finally {
    await server.close();
    uninstall();
  }
});

test('a quota too small, known beforehand or hit while writing: StorageQuotaError, nothing kept', async () => {
  const server = await serveFiles(new Map([['/brown.upg', bytes]]));
  try {
    for (const reportQuota of [true, false]) {
      const storage = new FakeStorage(4_000_000, reportQuota);
      const uninstall = installFakeStorage(storage);
      try {
        await assert.rejects(loadModel(`${server.url}/brown.upg`), (e: unknown) => {
          assert.ok(e instanceof StorageQuotaError, String(e));
          assert.match(e.message, /brown\.upg: keeping this 9\.0 MB model in the browser's storage failed .*deleteCachedModel\(\).*cache: false/);
          return true;
        });
        assert.equal(storage.usage(), 0, 'no partial file left');
        assert.deepEqual(await greedyIds(`${server.url}/brown.upg`, { cache: false }), reference, 'cache: false loads by ranges');
      } finally {
        uninstall();
      }
    }
  } finally {
    await server.close();
  }
});
