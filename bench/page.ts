/**
 * The demo model in a page and in Node (`npm run bench:page`): prints
 *   - in headless Chromium (WebGPU on SwiftShader), the demo page's time from navigation to the model
 *     ready and to the first generated token, with a cold cache (a fresh profile: the model downloaded
 *     and kept in OPFS) and a warm one (read from the kept copy), and decode tokens/s there
 *     (webgpu fused, unfused, cpu);
 *   - in Node, decode tokens/s on WebGPU (Dawn; lavapipe on a machine without a GPU) fused and
 *     unfused, and on the CPU backend.
 * Greedy, TOKENS new tokens after "The jury said"; tokens/s over the decode phase (first token
 * excluded), as GenerationResult.tokensPerSecond. The page is driven as a user would: the Generate
 * click comes as soon as the model is ready.
 */
import { cpus, loadavg } from 'node:os';
import type { Page } from 'playwright-core';
import { loadModel } from '../src/index.js';
import { launchChromium } from '../scripts/chromium.js';
import { buildDemo, ROOT, serveDemo } from '../scripts/demo.js';
import { join } from 'node:path';

const TOKENS = Number(process.env.TOKENS ?? 16);
const PROMPT = 'The jury said';
/** The fused q4 products' activations (the run recorded in docs/PERFORMANCE.md predates the int8 default: f32). */
const ACTIVATIONS = (process.env.ACTIVATIONS ?? 'int8') as 'int8' | 'f32';
/** The KV cache (the recorded run predates the f16 default: f32). */
const KV = (process.env.KV ?? 'f16') as 'f16' | 'f32';

interface PageRun { readyMs: number; firstTokenMs: number; tokensPerSecond: number; adapter: string }

async function pageRun(page: Page, url: string, backend: string, decode: string): Promise<PageRun> {
  await page.goto(`${url}?backend=${backend}&decode=${decode}&activations=${ACTIVATIONS}&kv=${KV}`);
  const failed = () => page.locator('#error').evaluate((e) => ((e as HTMLElement).hidden ? '' : e.textContent));
  await page.waitForFunction(() => (window as never as { pdvmDemo: { ready: unknown } }).pdvmDemo.ready || !document.getElementById('error')!.hidden, null, { timeout: 600_000 });
  if (await failed()) throw new Error(`the page failed: ${await failed()}`);
  await page.fill('#prompt', PROMPT);
  await page.fill('#temperature', '0');
  await page.fill('#max-tokens', String(TOKENS));
  await page.click('#generate');
  await page.waitForFunction(() => (window as never as { pdvmDemo: { last: unknown } }).pdvmDemo.last || !document.getElementById('error')!.hidden, null, { timeout: 900_000 });
  if (await failed()) throw new Error(`the page failed: ${await failed()}`);
  return page.evaluate(() => {
    const s = (window as never as { pdvmDemo: { readyAt: number; firstTokenAt: number; ready: { adapter: string }; last: { tokensPerSecond: number } } }).pdvmDemo;
    return { readyMs: s.readyAt, firstTokenMs: s.firstTokenAt, tokensPerSecond: s.last.tokensPerSecond, adapter: s.ready.adapter };
  });
}

async function nodeRun(backend: 'webgpu' | 'cpu', decode: 'fused' | 'unfused'): Promise<{ tokensPerSecond: number; adapter: string }> {
  const model = await loadModel(join(ROOT, 'models', 'brown-llama-12m.upg'), { backend, decode, contextLength: 256, matvecActivations: ACTIVATIONS, kvCache: KV });
  try {
    await model.generate(PROMPT, { temperature: 0, maxTokens: 4, ignoreEos: true }); // kernels compiled
    const r = await model.generate(PROMPT, { temperature: 0, maxTokens: TOKENS, ignoreEos: true });
    const gpu = (model.engine as unknown as { gpu?: { adapterDescription: string } }).gpu;
    return { tokensPerSecond: r.tokensPerSecond, adapter: gpu?.adapterDescription ?? 'CPU' };
  } finally {
    await model.dispose();
  }
}

const s = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
console.log(`${new Date().toISOString()}: ${cpus().length} cores (${cpus()[0]?.model}), load average ${loadavg().map((l) => l.toFixed(1)).join(' ')}; ${TOKENS} greedy tokens, ${ACTIVATIONS} activations, ${KV} KV cache`);

for (const [backend, decode] of [['webgpu', 'fused'], ['webgpu', 'unfused'], ['cpu', 'fused']] as const) {
  const r = await nodeRun(backend, decode);
  console.log(`node ${backend}${backend === 'webgpu' ? ` ${decode}` : ''} (${r.adapter}): ${r.tokensPerSecond.toFixed(1)} tok/s`);
}

await buildDemo();
const { server, url } = await serveDemo({ port: 0 });
const { browser, close } = await launchChromium();
try {
  for (const [backend, decode] of [['webgpu', 'fused'], ['webgpu', 'unfused'], ['cpu', 'fused']] as const) {
    // the first page of the profile downloads the model (cold); the next reads the copy kept in OPFS (warm)
    for (const cache of backend === 'webgpu' && decode === 'fused' ? ['cold', 'warm'] : ['warm']) {
      const page = await browser.newPage();
      const r = await pageRun(page, url, backend, decode);
      await page.close();
      console.log(`page ${backend}${backend === 'webgpu' ? ` ${decode}` : ''} (${r.adapter}), ${cache} cache: navigation to model ready ${s(r.readyMs)}, to first token ${s(r.firstTokenMs)}; decode ${r.tokensPerSecond.toFixed(2)} tok/s`);
    }
  }
} finally {
  await close();
  server.close();
}
console.log(`load average after: ${loadavg().map((l) => l.toFixed(1)).join(' ')}`);
