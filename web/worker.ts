/**
 * The demo's module Worker: loads the model through pdvm's browser entry and generates, streaming
 * chunks back, so the page stays responsive. One model at a time; 'stop' aborts the generation.
 */
import { AbortError, demoModel, loadModel, type GenerationStream, type Model } from 'pdvm';
import { inPlainWords as plain } from '../src/wording.js';
import type { FromWorker, ToWorker } from './protocol.js';

const post = (m: FromWorker) => (self as unknown as Worker).postMessage(m);

let model: Model | null = null;
let running: AbortController | null = null;

/** Whether this worker can use WebGPU, and why not in plain words. */
async function webgpuStatus(): Promise<{ available: boolean; reason: string | null }> {
  const gpu = (navigator as Navigator & { gpu?: GPU }).gpu;
  if (!gpu) return { available: false, reason: 'this browser has no WebGPU' };
  try {
    const adapter = await gpu.requestAdapter();
    return adapter ? { available: true, reason: null } : { available: false, reason: 'this browser has WebGPU but found no graphics adapter for it' };
  } catch (e) {
    return { available: false, reason: `WebGPU failed to start (${(e as Error).message})` };
  }
}

/** The adapter's name where the engine has one (browsers often hide it). */
function adapterOf(m: Model): string {
  const engine = m.engine as unknown as { gpu?: { adapterDescription?: string } };
  const d = engine.gpu?.adapterDescription;
  if (m.backend === 'cpu') return 'CPU (JavaScript, float32)';
  return d && d !== 'unknown adapter' ? d : 'a WebGPU adapter (the browser does not name it)';
}

async function load(msg: Extract<ToWorker, { type: 'load' }>): Promise<void> {
  running?.abort();
  await model?.dispose();
  model = null;
  const status = await webgpuStatus();
  // without WebGPU the CPU backend runs, and the page says so
  const backend = msg.backend !== 'cpu' && !status.available ? 'cpu' : msg.backend;
  const source = msg.model.kind === 'demo' ? demoModel() : msg.model.kind === 'url' ? msg.model.url : msg.model.file;
  const name = msg.model.kind === 'demo' ? 'brown-llama-12m (demo)' : msg.model.kind === 'url' ? msg.model.url : msg.model.file.name;
  const t0 = performance.now();
  model = await loadModel(source, {
    backend,
    decode: msg.decode,
    matvecActivations: msg.activations,
    kvCache: msg.kvCache,
    contextLength: 512,
    cache: msg.cache,
    onProgress: (p) => post({ type: 'progress', phase: p.phase, loadedBytes: p.loadedBytes, totalBytes: p.totalBytes }),
  });
  const notices = [backend !== msg.backend ? `running on the CPU: ${status.reason}` : null, model.backendNotice ? plain(model.backendNotice) : null].filter((n) => n);
  const engine = model.engine as unknown as { decode?: 'fused' | 'unfused' };
  post({
    type: 'ready',
    name,
    backend: model.backend,
    decode: model.backend === 'webgpu' ? (engine.decode ?? null) : null,
    adapter: adapterOf(model),
    notice: notices.length ? notices.join('; ') : null,
    hasChatTemplate: model.hasChatTemplate,
    loadMs: performance.now() - t0,
  });
}

async function generate(msg: Extract<ToWorker, { type: 'generate' }>): Promise<void> {
  if (!model) throw new Error('no model is loaded yet');
  const controller = new AbortController();
  running = controller;
  const s = msg.sampling;
  const options = { stream: true as const, temperature: s.temperature, topP: s.topP, topK: s.topK, maxTokens: s.maxTokens, seed: s.seed, signal: controller.signal };
  const t0 = performance.now();
  let firstTokenMs = 0;
  const stream: GenerationStream = msg.chat ? model.chat([...msg.chat, { role: 'user', content: msg.prompt }], options) : model.generate(msg.prompt, options);
  const ids: number[] = [];
  let text = '';
  try {
    for await (const chunk of stream) {
      if (chunk.tokenIds.length && !firstTokenMs) firstTokenMs = performance.now() - t0;
      ids.push(...chunk.tokenIds);
      text += chunk.text;
      post({ type: 'chunk', text: chunk.text, tokenIds: chunk.tokenIds });
    }
    const r = await stream.result;
    post({ type: 'done', text: r.text, tokenIds: r.tokenIds, finishReason: r.finishReason, promptTokens: r.promptTokens, tokensPerSecond: r.tokensPerSecond, firstTokenMs, stopped: false });
  } catch (e) {
    if (!(e instanceof AbortError)) throw e;
    post({ type: 'done', text, tokenIds: ids, finishReason: 'stopped', promptTokens: 0, tokensPerSecond: 0, firstTokenMs, stopped: true });
  } finally {
    if (running === controller) running = null;
  }
}

self.onmessage = (ev: MessageEvent<ToWorker>) => {
  const msg = ev.data;
  const job = msg.type === 'load' ? load(msg) : msg.type === 'generate' ? generate(msg) : Promise.resolve(running?.abort());
  job.catch((e: Error) => post({ type: 'error', name: e.name || e.constructor?.name || 'Error', message: plain(e.message ?? String(e)) }));
};

void webgpuStatus().then((s) => post({ type: 'webgpu', ...s }));
