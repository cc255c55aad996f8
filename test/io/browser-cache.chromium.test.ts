/**
 * Keeping downloads in a real browser's storage: headless Chromium (scripts/chromium.ts) opens a page
 * that imports pdvm's browser entry (bundled here with esbuild, platform=browser) and loads the demo
 * model by URL on the CPU backend. The first load downloads it whole into OPFS, the second reads the
 * kept copy after a 304; ids equal the Node CPU backend's; listCachedModels/deleteCachedModel see and
 * remove it; a 404 is an HttpStatusError, a cross-origin server without CORS a NetworkError, and a
 * quota too small (storage.estimate() answering so) a StorageQuotaError; nothing is kept after them.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { build, type Plugin } from 'esbuild';
import { loadModel } from '../../src/index.js';
import { CHROMIUM, launchChromium } from '../../scripts/chromium.js';
import { ROOT } from '../helpers.js';
import { serveFiles } from './file-server.js';

const SKIP = !existsSync(CHROMIUM) && process.env.PDVM_SKIP_BROWSER_TESTS === '1' ? `no chromium at ${CHROMIUM} and PDVM_SKIP_BROWSER_TESTS=1` : false;

// @mlc-ai/web-xgrammar's UMD bundle requires 'url' and 'module' in its Node branch: empty stand-ins
const nodeBranchStubs: Plugin = {
  name: 'xgrammar-node-branch',
  setup(b) {
    b.onResolve({ filter: /^(url|module)$/ }, (args) => (args.importer.includes('web-xgrammar') ? { path: args.path, namespace: 'stub' } : undefined));
    b.onLoad({ filter: /.*/, namespace: 'stub' }, () => ({ contents: 'export default {};', loader: 'js' }));
  },
};

const PAGE = `<!doctype html><script type="module">import * as pdvm from './pdvm.js'; window.pdvm = pdvm; window.ready = true;</script>`;

/** In the page: load `url` on the CPU, 8 greedy ids, and what onProgress said. */
const LOAD = async ([url, cache]: [string, boolean]) => {
  const pdvm = (window as unknown as { pdvm: typeof import('../../src/browser.js') }).pdvm;
  const phases: string[] = [];
  try {
    const model = await pdvm.loadModel(url, { cache, contextLength: 64, onProgress: (p) => phases.push(p.phase) });
    const ids = (await model.generate('The jury said', { maxTokens: 8, temperature: 0 })).tokenIds;
    await model.dispose();
    return { ids, downloads: phases.filter((p) => p === 'download').length, error: null };
  } catch (e) {
    return { ids: [], downloads: 0, error: `${(e as Error).name}: ${(e as Error).message}` };
  }
};

test('Chromium: the demo model kept in OPFS on first load, read from there after a 304; typed errors keep nothing', { skip: SKIP, timeout: 600_000 }, async () => {
  assert.ok(existsSync(CHROMIUM), `no chromium at ${CHROMIUM}: run scripts/install-browser-test-deps.sh, or set PDVM_SKIP_BROWSER_TESTS=1`);
  const bundle = await build({ entryPoints: [join(ROOT, 'dist', 'src', 'browser.js')], bundle: true, platform: 'browser', format: 'esm', write: false, logLevel: 'silent', plugins: [nodeBranchStubs] });
  const demo = new Uint8Array(await readFile(join(ROOT, 'models', 'brown-llama-12m.upg')));
  const reference = await loadModel(join(ROOT, 'models', 'brown-llama-12m.upg'), { contextLength: 64 });
  const expected = (await reference.generate('The jury said', { maxTokens: 8, temperature: 0 })).tokenIds;
  await reference.dispose();

  const site = await serveFiles(new Map([['/index.html', new TextEncoder().encode(PAGE)], ['/pdvm.js', bundle.outputFiles[0]!.contents], ['/brown.upg', demo]]), { etag: '"demo-1"' });
  const elsewhere = await serveFiles(new Map([['/brown.upg', demo]])); // another origin, no CORS headers
  const chromium = await launchChromium({ webgpu: false });
  try {
    const page = await chromium.browser.newPage();
    const pageErrors: string[] = [];
    page.on('pageerror', (e) => pageErrors.push(e.message));
    await page.goto(`${site.url}/index.html`);
    await page.waitForFunction(() => (window as unknown as { ready?: boolean }).ready === true, null, { timeout: 60_000 });
    const kept = () => page.evaluate(async () => (await (window as unknown as { pdvm: typeof import('../../src/browser.js') }).pdvm.listCachedModels()).map((m) => [m.url, m.bytes, m.etag]));
    assert.equal(await page.evaluate(() => (window as unknown as { pdvm: typeof import('../../src/browser.js') }).pdvm.deleteCachedModel()), 0);
    const url = `${site.url}/brown.upg`;

    site.requests.length = 0;
    const cold = await page.evaluate(LOAD, [url, true] as [string, boolean]);
    assert.equal(cold.error, null);
    assert.deepEqual(cold.ids, expected, 'cold load: ids as in Node');
    assert.ok(cold.downloads > 0, 'download progress reported');
    assert.deepEqual(site.requests.map((r) => [r.range, r.status]), [[undefined, 200]], 'one whole download');
    assert.deepEqual(await kept(), [[url, demo.length, '"demo-1"']]);

    site.requests.length = 0;
    const warm = await page.evaluate(LOAD, [url, true] as [string, boolean]);
    assert.deepEqual(warm.ids, expected, 'warm load: ids as in Node');
    assert.deepEqual(site.requests.map((r) => [r.range, r.status]), [['bytes=0-0', 304]], 'only a revalidation');

    const missing = await page.evaluate(LOAD, [`${site.url}/nope.upg`, true] as [string, boolean]);
    assert.match(missing.error ?? '', /^HttpStatusError: .*nope\.upg: the server answered 404/);
    const blocked = await page.evaluate(LOAD, [`${elsewhere.url}/brown.upg`, true] as [string, boolean]);
    assert.match(blocked.error ?? '', /^NetworkError: .*brown\.upg: the request failed \(TypeError.*CORS/);

    assert.equal(await page.evaluate(() => (window as unknown as { pdvm: typeof import('../../src/browser.js') }).pdvm.deleteCachedModel()), 1);
    assert.deepEqual(await kept(), []);
    // the browser's quota answer made small: refused before downloading, nothing kept
    await page.evaluate(() => {
      navigator.storage.estimate = async () => ({ quota: 1_000_000, usage: 0 });
    });
    const refused = await page.evaluate(LOAD, [url, true] as [string, boolean]);
    assert.match(refused.error ?? '', /^StorageQuotaError: .*brown\.upg: keeping this 9\.0 MB model in the browser's storage failed/);
    assert.deepEqual(await kept(), []);
    const uncached = await page.evaluate(LOAD, [url, false] as [string, boolean]);
    assert.deepEqual(uncached.ids, expected, 'cache: false: ids as in Node');
    assert.deepEqual(pageErrors, []);
  } finally {
    await chromium.close();
    await site.close();
    await elsewhere.close();
  }
});
