/**
 * The loading layer reads the same model from every kind of source: the demo UPG artifact from a path,
 * a file: URL, an http URL (with and without Range support), bytes, a Blob and a ByteSource; a Hugging
 * Face folder from a path, a base URL (without the optional generation_config.json) and a map of files.
 * Each gives the same greedy ids (and logits) as loading from the path; a file that is no model is
 * refused naming it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { loadModel, MemorySource, ModelFormatError, AbortError, type ModelSource } from 'pdvm';
import { BROWN, ROOT, compare } from '../helpers.js';
import { serveFiles } from '../io/file-server.js';

const DEMO = join(ROOT, 'models', 'brown-llama-12m.upg');
const PROMPT = 'The jury said';

async function greedy(source: ModelSource, options = {}): Promise<{ ids: number[]; logits: Float32Array }> {
  const model = await loadModel(source, { contextLength: 64, ...options });
  try {
    const ids = (await model.generate(PROMPT, { maxTokens: 16, temperature: 0 })).tokenIds;
    const seq = model.engine.createSequence();
    const logits = (await model.engine.forward(seq, model.promptIds(PROMPT))).slice();
    seq.dispose();
    return { ids, logits };
  } finally {
    await model.dispose();
  }
}

function assertSame(a: { ids: number[]; logits: Float32Array }, ref: { ids: number[]; logits: Float32Array }, what: string): void {
  assert.deepEqual(a.ids, ref.ids, `${what}: greedy ids`);
  const c = compare(a.logits, ref.logits);
  assert.equal(c.worst, 0, `${what}: logits differ, worst at [${c.worstAt}]: ${c.a} vs ${c.b}`);
}

test('the demo UPG artifact from a path, file: URL, http URL (ranged and whole), bytes, Blob and ByteSource', async () => {
  const ref = await greedy(DEMO);
  assert.equal(ref.ids.length, 16);
  const bytes = new Uint8Array(await readFile(DEMO));
  assertSame(await greedy(pathToFileURL(DEMO)), ref, 'file: URL');
  assertSame(await greedy(bytes), ref, 'Uint8Array');
  assertSame(await greedy(bytes.slice().buffer), ref, 'ArrayBuffer');
  assertSame(await greedy(new Blob([bytes])), ref, 'Blob');
  assertSame(await greedy(new MemorySource('demo', bytes)), ref, 'ByteSource');
  for (const ranges of [true, false]) {
    const server = await serveFiles(new Map([['/brown.upg', bytes]]), { ranges });
    try {
      const progress: { phase: string; loadedBytes: number; totalBytes: number }[] = [];
      assertSame(await greedy(`${server.url}/brown.upg`, { onProgress: (p: (typeof progress)[0]) => progress.push(p) }), ref, `http, ranges ${ranges}`);
      const downloads = progress.filter((p) => p.phase === 'download');
      const tensors = progress.filter((p) => p.phase === 'tensors');
      assert.ok(downloads.length > 0 && tensors.length > 0);
      assert.ok(downloads.every((p) => p.totalBytes === bytes.length), 'download totals are the file size');
      console.log(`ranges ${ranges}: ${server.requests.length} requests, ${server.bytesSent} bytes sent for a file of ${bytes.length}`);
      assert.equal(tensors.at(-1)!.loadedBytes, tensors.at(-1)!.totalBytes);
      if (ranges) {
        // no more bytes than the file (small tensors coalesced into windows, no whole download)
        assert.ok(server.bytesSent <= bytes.length, `sent ${server.bytesSent} of ${bytes.length}`);
        assert.ok(server.requests.every((r) => r.status === 206));
      } else {
        assert.equal(server.requests.length, 1);
        assert.deepEqual(downloads.at(-1), { phase: 'download', loadedBytes: bytes.length, totalBytes: bytes.length, tensor: `${server.url}/brown.upg` });
      }
    } finally {
      await server.close();
    }
  }
});

test('a Hugging Face folder from a path, a base URL without the optional files, and a map of files', async () => {
  const ref = await greedy(BROWN);
  const names = (await readdir(BROWN)).filter((f) => !f.startsWith('reference'));
  const files = new Map(await Promise.all(names.map(async (f) => [f, new Uint8Array(await readFile(join(BROWN, f)))] as const)));
  const served = new Map([...files].filter(([f]) => f !== 'generation_config.json').map(([f, b]) => [`/repo/resolve/main/${f}`, b]));
  const server = await serveFiles(served);
  try {
    const viaUrl = await greedy(`${server.url}/repo/resolve/main/`);
    assertSame(viaUrl, ref, 'base URL');
    assert.ok(server.requests.some((r) => r.path.endsWith('generation_config.json') && r.status === 404), 'asked for the optional file');
    assertSame(await greedy(new URL(`${server.url}/repo/resolve/main/`)), ref, 'URL object');
    const mixed: Record<string, string | Uint8Array | Blob> = {};
    for (const [f, b] of files) mixed[f] = f === 'model.safetensors' ? `${server.url}/repo/resolve/main/${f}` : f === 'tokenizer.json' ? new Blob([b]) : b;
    assertSame(await greedy(mixed), ref, 'map of files');
  } finally {
    await server.close();
  }
});

test('a file that is neither UPG nor safetensors is refused naming it; an aborted load rejects with AbortError', async () => {
  const html = new TextEncoder().encode('<!DOCTYPE html><html><body>Not found</body></html>');
  const server = await serveFiles(new Map([['/model.upg', html]]));
  try {
    await assert.rejects(loadModel(`${server.url}/model.upg`), (e: unknown) => {
      assert.ok(e instanceof ModelFormatError);
      assert.match(e.message, /model\.upg: is neither a UPG artifact nor a safetensors file \(\d+ bytes, starting "<!DOCTYP"\); give a \.upg/);
      return true;
    });
  } finally {
    await server.close();
  }
  await assert.rejects(loadModel(join(BROWN, 'config.json')), /config\.json: is neither a UPG artifact nor a safetensors file/);
  await assert.rejects(loadModel(join(ROOT, 'no-such-model.upg')), /no-such-model\.upg: no such model folder or file/);
  const controller = new AbortController();
  const pending = loadModel(DEMO, { signal: controller.signal, onProgress: (p) => p.phase === 'tensors' && controller.abort() });
  await assert.rejects(pending, (e: unknown) => e instanceof AbortError && /loading .*brown-llama-12m\.upg was aborted/.test(e.message));
});
