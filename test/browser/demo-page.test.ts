/**
 * The demo page in headless Chromium (Debian's chromium, WebGPU on SwiftShader), driven by
 * playwright-core: the page, served from a loopback server, loads the demo model over HTTP through
 * pdvm's browser entry in its Worker and generates 16 greedy tokens on WebGPU (fused and unfused
 * decoding) and on the CPU backend; each run's ids must equal those the Node CPU backend gives here.
 * A screenshot after a generation must show the generated text (kept in dist/test-artifacts/).
 * Without a WebGPU adapter, the page says so and runs the CPU backend.
 * On the f32 options (the page's activations=f32 and kv=f32: the fused q4 products on float32
 * activations and a float32 KV cache, not the faster int8 and f16 defaults), so that every sum is
 * float32 as on the CPU. Chromium comes from scripts/install-browser-test-deps.sh (CI runs it); where
 * it is missing the test fails, unless PDVM_SKIP_BROWSER_TESTS=1 says to skip.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Page } from 'playwright-core';
import { loadModel } from '../../src/index.js';
import { CHROMIUM, launchChromium } from '../../scripts/chromium.js';
import { buildDemo, ROOT, serveDemo } from '../../scripts/demo.js';

const SKIP = !existsSync(CHROMIUM) && process.env.PDVM_SKIP_BROWSER_TESTS === '1'
  ? `no chromium at ${CHROMIUM} and PDVM_SKIP_BROWSER_TESTS=1: the browser test is skipped`
  : false;
const PROMPT = 'The jury said';
const TOKENS = 16;

interface DemoState {
  ready: { backend: string; decode: string | null; adapter: string; notice: string | null } | null;
  last: { tokenIds: number[]; text: string; tokensPerSecond: number; stopped: boolean } | null;
}

async function demoState(page: Page): Promise<DemoState> {
  return page.evaluate(() => (window as unknown as { pdvmDemo: DemoState }).pdvmDemo);
}

/** Opens the page with these settings, waits for the model, generates greedily; returns the ids. */
async function generateOnPage(page: Page, url: string, backend: 'webgpu' | 'cpu', decode: 'fused' | 'unfused'): Promise<{ ids: number[]; text: string; ready: NonNullable<DemoState['ready']>; tokensPerSecond: number }> {
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${url}?backend=${backend}&decode=${decode}&activations=f32&kv=f32`);
  await page.waitForFunction(() => {
    const s = (window as unknown as { pdvmDemo?: DemoState }).pdvmDemo;
    return s?.ready || !document.getElementById('error')!.hidden;
  }, null, { timeout: 180_000 });
  const shownError = await page.locator('#error').evaluate((e) => ((e as HTMLElement).hidden ? '' : e.textContent));
  assert.equal(shownError, '', `${backend} ${decode}: the page shows an error`);
  const { ready } = await demoState(page);
  await page.fill('#prompt', PROMPT);
  await page.fill('#temperature', '0');
  await page.fill('#max-tokens', String(TOKENS));
  // Playwright's click waits for two steady animation frames: under CI's load (lavapipe tests beside
  // SwiftShader on 2 cores) the page's frames have come more than the default 30 s apart
  await page.click('#generate', { timeout: 180_000 });
  await page.waitForFunction(() => {
    const s = (window as unknown as { pdvmDemo: DemoState }).pdvmDemo;
    return s.last !== null || !document.getElementById('error')!.hidden;
  }, null, { timeout: 300_000 });
  const after = await page.locator('#error').evaluate((e) => ((e as HTMLElement).hidden ? '' : e.textContent));
  assert.equal(after, '', `${backend} ${decode}: the page shows an error`);
  assert.deepEqual(errors, [], 'errors thrown in the page');
  const { last } = await demoState(page);
  return { ids: last!.tokenIds, text: last!.text, ready: ready!, tokensPerSecond: last!.tokensPerSecond };
}

/** Pixels of a PNG (decoded by the page itself) that differ from its most common colour. */
async function inkedPixels(page: Page, png: Buffer): Promise<{ width: number; height: number; inked: number }> {
  return page.evaluate(async (b64) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const bitmap = await createImageBitmap(new Blob([bytes], { type: 'image/png' }));
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = canvas.getContext('2d')!;
    ctx.drawImage(bitmap, 0, 0);
    const data = new Uint32Array(ctx.getImageData(0, 0, bitmap.width, bitmap.height).data.buffer);
    const counts = new Map<number, number>();
    for (const px of data) counts.set(px, (counts.get(px) ?? 0) + 1);
    const background = Math.max(...counts.values());
    return { width: bitmap.width, height: bitmap.height, inked: data.length - background };
  }, png.toString('base64'));
}

test('the demo page in headless Chromium: 16 greedy tokens on WebGPU fused, unfused and the CPU equal the Node CPU backend\'s', { skip: SKIP, timeout: 900_000 }, async () => {
  assert.ok(existsSync(CHROMIUM), `no chromium at ${CHROMIUM}: run scripts/install-browser-test-deps.sh (as root or with sudo), or set PDVM_SKIP_BROWSER_TESTS=1 to skip this test`);
  // the reference: the Node CPU backend on the same model file the page downloads
  const model = await loadModel(join(ROOT, 'models', 'brown-llama-12m.upg'), { backend: 'cpu' });
  const want = (await model.generate(PROMPT, { temperature: 0, maxTokens: TOKENS })).tokenIds;
  await model.dispose();
  assert.equal(want.length, TOKENS);

  await buildDemo();
  const { server, url } = await serveDemo({ port: 0 });
  const { browser, close } = await launchChromium();
  try {
    const page = await browser.newPage();
    for (const [backend, decode] of [['cpu', 'fused'], ['webgpu', 'unfused'], ['webgpu', 'fused']] as const) {
      const t0 = Date.now();
      const got = await generateOnPage(page, url, backend, decode);
      const at = got.ids.findIndex((id, i) => id !== want[i]);
      console.log(`page ${backend}${backend === 'webgpu' ? ` ${decode}` : ''} on ${got.ready.adapter}: ${got.ids.length} ids, first difference from Node's CPU at ${at}, ${got.tokensPerSecond.toFixed(1)} tok/s, ${((Date.now() - t0) / 1000).toFixed(1)} s`);
      assert.equal(got.ready.backend, backend, `the page ran ${got.ready.backend} (${got.ready.notice})`);
      if (backend === 'webgpu') assert.equal(got.ready.decode, decode, `the page decoded ${got.ready.decode} (${got.ready.notice})`);
      assert.deepEqual(got.ids, want, `${backend} ${decode}: first difference at token ${at}: [${got.ids}] vs Node's [${want}]`);
    }

    // the page after the last (webgpu fused) generation shows the generated text
    const output = (await page.locator('#output .continuation').textContent()) ?? '';
    const { text } = (await demoState(page)).last!;
    assert.ok(text.trim().length > 0 && output === text, `the output element shows ${JSON.stringify(output)}, the generation gave ${JSON.stringify(text)}`);
    const shot = await page.screenshot({ fullPage: true });
    const dir = join(ROOT, 'dist', 'test-artifacts');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'demo-page.png'), shot);
    const ink = await inkedPixels(page, await page.locator('#output').screenshot());
    console.log(`screenshot: ${join(dir, 'demo-page.png')} (${shot.length} bytes); the output element ${ink.width}x${ink.height} with ${ink.inked} pixels off its background`);
    assert.ok(ink.inked > 200, `the output element's screenshot is blank (${ink.inked} pixels differ from the background)`);
  } finally {
    await close();
    server.close();
  }
});

test('the demo page without a WebGPU adapter says so and runs the CPU backend; a local file, chat and the stop button work there', { skip: SKIP, timeout: 300_000 }, async () => {
  assert.ok(existsSync(CHROMIUM), `no chromium at ${CHROMIUM}: run scripts/install-browser-test-deps.sh (as root or with sudo), or set PDVM_SKIP_BROWSER_TESTS=1 to skip this test`);
  await buildDemo();
  const { server, url } = await serveDemo({ port: 0 });
  const { browser, close } = await launchChromium({ webgpu: false });
  try {
    const page = await browser.newPage();
    await page.goto(`${url}?backend=webgpu`);
    await page.waitForFunction(() => (window as unknown as { pdvmDemo: DemoState }).pdvmDemo.ready || !document.getElementById('error')!.hidden, null, { timeout: 120_000 });
    const { ready } = await demoState(page);
    const status = await page.locator('#webgpu').textContent();
    const notice = await page.locator('#notice').textContent();
    console.log(`without WebGPU: "${status}" / notice "${notice}" / backend ${ready?.backend}`);
    assert.equal(ready?.backend, 'cpu');
    assert.match(status ?? '', /^No WebGPU: .*CPU backend/);
    assert.match(notice ?? '', /running on the CPU/);

    // a model from a local file
    await page.selectOption('#source', 'file');
    await page.setInputFiles('#file', join(ROOT, 'models', 'brown-llama-12m.upg'));
    await page.click('#load', { timeout: 180_000 });
    await page.waitForFunction(() => (window as unknown as { pdvmDemo: DemoState & { ready: { name: string } | null } }).pdvmDemo.ready?.name === 'brown-llama-12m.upg', null, { timeout: 120_000 });

    // chat through the model's template: the reply in its own turn, as long as the generation's text
    await page.check('#chat');
    await page.fill('#prompt', 'Hello');
    await page.fill('#temperature', '0');
    await page.fill('#max-tokens', '8');
    await page.evaluate(() => ((window as unknown as { pdvmDemo: DemoState }).pdvmDemo.last = null));
    await page.click('#generate', { timeout: 180_000 });
    await page.waitForFunction(() => (window as unknown as { pdvmDemo: DemoState }).pdvmDemo.last !== null, null, { timeout: 120_000 });
    const reply = (await demoState(page)).last!;
    assert.equal(await page.locator('#output .turn.user').textContent(), 'Hello');
    assert.equal(await page.locator('#output .turn.assistant').textContent(), reply.text);
    assert.ok(reply.tokenIds.length > 0, 'the chat reply has tokens');

    // stop: a long generation ends early, marked stopped
    await page.uncheck('#chat');
    await page.fill('#max-tokens', '400');
    await page.evaluate(() => ((window as unknown as { pdvmDemo: DemoState }).pdvmDemo.last = null));
    await page.click('#generate', { timeout: 180_000 });
    await page.waitForFunction(() => (document.querySelector('#output')?.getAttribute('data-token-ids') ?? '').split(',').length >= 4, null, { timeout: 120_000 });
    await page.click('#stop', { timeout: 180_000 });
    await page.waitForFunction(() => (window as unknown as { pdvmDemo: DemoState }).pdvmDemo.last !== null, null, { timeout: 120_000 });
    const stopped = (await demoState(page)).last!;
    console.log(`chat reply ${JSON.stringify(reply.text)}; stopped after ${stopped.tokenIds.length} tokens`);
    assert.ok(stopped.stopped && stopped.tokenIds.length < 400, `the stop button did not stop the generation (${stopped.tokenIds.length} tokens)`);
    assert.match((await page.locator('#stats').textContent()) ?? '', /^Stopped after \d+ tokens/);
  } finally {
    await close();
    server.close();
  }
});
