/**
 * HttpSource against loopback servers: ranges read back the file's bytes, small reads share one
 * request, a server without Range support is downloaded whole with progress, and each failure (404,
 * 500, a cut connection, an unreachable host or a fetch that throws as a blocked cross-origin request
 * does, a missing Authorization, an abort) is a typed error naming the URL.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HttpSource, READ_WINDOW } from '../../src/io/http.js';
import { HttpStatusError, IncompleteDownloadError, NetworkError } from '../../src/io/errors.js';
import { AbortError } from '../../src/errors.js';
import { serveFiles } from './file-server.js';

function randomBytes(n: number, seed = 1): Uint8Array {
  const out = new Uint8Array(n);
  let s = seed;
  for (let i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    out[i] = s >>> 24;
  }
  return out;
}

function firstDifference(a: Uint8Array, b: Uint8Array): string {
  if (a.length !== b.length) return `lengths ${a.length} vs ${b.length}`;
  const i = a.findIndex((v, k) => v !== b[k]);
  return i < 0 ? 'none' : `byte ${i}: ${a[i]} vs ${b[i]}`;
}

const FILE = randomBytes(3 * READ_WINDOW + 12345);

test('ranges read back the bytes of the file; small reads in one window take one request', async () => {
  const server = await serveFiles(new Map([['/m.upg', FILE]]));
  try {
    const progress: number[] = [];
    const src = await HttpSource.open(`${server.url}/m.upg`, { onDownload: (n, total) => progress.push(n / total) });
    assert.ok(src instanceof HttpSource, 'a Range-capable server gives a ranged source');
    assert.equal(src.size, FILE.length);
    assert.equal(server.requests.length, 1);
    // 200 small reads inside the first window: served from the opening request
    for (let i = 0; i < 200; i++) {
      const off = (i * 4099) % (READ_WINDOW - 64);
      const got: Uint8Array = await src.read(off, 64);
      assert.equal(firstDifference(got, FILE.subarray(off, off + 64)), 'none', `read at ${off}`);
    }
    assert.equal(server.requests.length, 1, 'small reads in the first window need no request');
    // a small read past the window fetches a new window; the reads after it come from that window
    const off = 2 * READ_WINDOW + 7;
    for (let k = 0; k < 50; k++) assert.equal(firstDifference(await src.read(off + k * 100, 100), FILE.subarray(off + k * 100, off + k * 100 + 100)), 'none');
    assert.equal(server.requests.length, 2);
    // a large read is one range of exactly its bytes
    const big = await src.read(1000, READ_WINDOW + 5);
    assert.equal(firstDifference(big, FILE.subarray(1000, 1000 + READ_WINDOW + 5)), 'none');
    assert.equal(server.requests.length, 3);
    assert.match(server.requests[2]!.range!, new RegExp(`^bytes=1000-${1000 + READ_WINDOW + 4}$`));
    // the tail of the file
    assert.equal(firstDifference(await src.read(FILE.length - 10, 10), FILE.subarray(FILE.length - 10)), 'none');
    assert.ok(progress.every((p, i) => p > 0 && p <= 1 && (i === 0 || p >= progress[i - 1]!)), `progress ${progress}`);
    await src.close();
  } finally {
    await server.close();
  }
});

test('a server that ignores Range: one whole download, with progress up to the size', async () => {
  const server = await serveFiles(new Map([['/m.upg', FILE]]), { ranges: false });
  try {
    const progress: [number, number][] = [];
    const src = await HttpSource.open(`${server.url}/m.upg`, { onDownload: (n, total) => progress.push([n, total]) });
    assert.equal(src.size, FILE.length);
    assert.equal(firstDifference(await src.read(0, FILE.length), FILE), 'none');
    assert.equal(server.requests.length, 1);
    assert.ok(progress.length >= 1);
    assert.deepEqual(progress.at(-1), [FILE.length, FILE.length]);
  } finally {
    await server.close();
  }
});

test('404 and 500 are HttpStatusErrors naming the URL and what to do', async () => {
  const missing = await serveFiles(new Map());
  const failing = await serveFiles(new Map([['/m.upg', FILE]]), { status: 500 });
  try {
    await assert.rejects(HttpSource.open(`${missing.url}/nope.upg`), (e: unknown) => {
      assert.ok(e instanceof HttpStatusError);
      assert.equal(e.status, 404);
      assert.equal(e.url, `${missing.url}/nope.upg`);
      assert.match(e.message, /nope\.upg: the server answered 404.*check the URL/);
      return true;
    });
    await assert.rejects(HttpSource.open(`${failing.url}/m.upg`), (e: unknown) => {
      assert.ok(e instanceof HttpStatusError);
      assert.equal(e.status, 500);
      assert.match(e.message, /m\.upg: the server answered 500.*try again later/);
      return true;
    });
  } finally {
    await missing.close();
    await failing.close();
  }
});

test('a download cut short is an IncompleteDownloadError with the bytes received', async () => {
  const whole = await serveFiles(new Map([['/m.upg', FILE]]), { ranges: false, cutAfter: 100_000 });
  const ranged = await serveFiles(new Map([['/m.upg', FILE]]), { cutAfter: 1000 });
  try {
    for (const server of [whole, ranged]) {
      await assert.rejects(HttpSource.open(`${server.url}/m.upg`), (e: unknown) => {
        assert.ok(e instanceof IncompleteDownloadError, String(e));
        assert.equal(e.url, `${server.url}/m.upg`);
        assert.ok(e.receivedBytes < e.expectedBytes, `${e.receivedBytes} < ${e.expectedBytes}`);
        assert.match(e.message, /the download ended after \d+ of \d+ bytes.*load the model again/);
        return true;
      });
    }
  } finally {
    await whole.close();
    await ranged.close();
  }
});

test('an unreachable server, and a fetch failing as a blocked cross-origin request does, are NetworkErrors', async () => {
  const server = await serveFiles(new Map());
  const url = `${server.url}/m.upg`;
  await server.close();
  await assert.rejects(HttpSource.open(url), (e: unknown) => {
    assert.ok(e instanceof NetworkError, String(e));
    assert.match(e.message, /m\.upg: the request failed \(TypeError.*CORS/);
    return true;
  });
  // a browser reports a CORS refusal as a bare TypeError from fetch
  const blocked = async () => {
    throw new TypeError('Failed to fetch');
  };
  await assert.rejects(HttpSource.open('https://elsewhere.example/m.upg', { fetch: blocked }), (e: unknown) => {
    assert.ok(e instanceof NetworkError);
    assert.match(e.message, /^https:\/\/elsewhere\.example\/m\.upg: the request failed \(TypeError: Failed to fetch\).*Access-Control-Allow-Origin/);
    return true;
  });
});

test('headers and a given fetch reach the server (gated models); without them, 401 says to add Authorization', async () => {
  const server = await serveFiles(new Map([['/m.upg', FILE]]), { authorization: 'Bearer secret' });
  try {
    await assert.rejects(HttpSource.open(`${server.url}/m.upg`), /answered 401.*Authorization/);
    const withHeaders = await HttpSource.open(`${server.url}/m.upg`, { headers: { Authorization: 'Bearer secret' } });
    assert.equal(firstDifference(await withHeaders.read(2 * READ_WINDOW, 1000), FILE.subarray(2 * READ_WINDOW, 2 * READ_WINDOW + 1000)), 'none');
    let calls = 0;
    const authorizingFetch = (input: string, init?: RequestInit) => {
      calls++;
      const headers = new Headers(init?.headers);
      headers.set('authorization', 'Bearer secret');
      return fetch(input, { ...init, headers });
    };
    const withFetch = await HttpSource.open(`${server.url}/m.upg`, { fetch: authorizingFetch });
    await withFetch.read(2 * READ_WINDOW, 10);
    assert.equal(calls, 2);
  } finally {
    await server.close();
  }
});

test('an aborted signal rejects with AbortError', async () => {
  const server = await serveFiles(new Map([['/m.upg', FILE]]));
  try {
    const controller = new AbortController();
    const src = await HttpSource.open(`${server.url}/m.upg`, { signal: controller.signal });
    controller.abort();
    await assert.rejects(src.read(2 * READ_WINDOW, 10), AbortError);
    await assert.rejects(HttpSource.open(`${server.url}/m.upg`, { signal: controller.signal }), /loading .*m\.upg was aborted/);
  } finally {
    await server.close();
  }
});
