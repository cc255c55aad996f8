/**
 * The demo page: picks a model (the demo model served with the page, a URL or a local file), shows
 * the download, streams generated text from the Worker, and reports tokens/s and the adapter.
 * Query parameters preset the controls and load at once (the browser test uses them):
 *   ?backend=auto|webgpu|cpu&decode=fused|unfused&activations=int8|f32&kv=f16|f32&autoload=0
 * window.pdvmDemo holds the timings (navigation to model ready, to first token) and the last result.
 */
import type { Done, FromWorker, ModelChoice, Ready, ToWorker } from './protocol.js';

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const el = {
  source: $<HTMLSelectElement>('source'),
  url: $<HTMLInputElement>('url'),
  file: $<HTMLInputElement>('file'),
  backend: $<HTMLSelectElement>('backend'),
  decode: $<HTMLSelectElement>('decode'),
  activations: $<HTMLSelectElement>('activations'),
  kvCache: $<HTMLSelectElement>('kv-cache'),
  cache: $<HTMLInputElement>('cache'),
  load: $<HTMLButtonElement>('load'),
  progress: $<HTMLProgressElement>('progress'),
  progressText: $('progress-text'),
  webgpu: $('webgpu'),
  model: $('model-info'),
  notice: $('notice'),
  prompt: $<HTMLTextAreaElement>('prompt'),
  chat: $<HTMLInputElement>('chat'),
  temperature: $<HTMLInputElement>('temperature'),
  topP: $<HTMLInputElement>('top-p'),
  topK: $<HTMLInputElement>('top-k'),
  maxTokens: $<HTMLInputElement>('max-tokens'),
  seed: $<HTMLInputElement>('seed'),
  generate: $<HTMLButtonElement>('generate'),
  stop: $<HTMLButtonElement>('stop'),
  clear: $<HTMLButtonElement>('clear'),
  output: $('output'),
  stats: $('stats'),
  error: $('error'),
};

interface DemoState {
  /** ms from navigation start: the model ready, the first token of the first generation. */
  readyAt: number | null;
  firstTokenAt: number | null;
  ready: Ready | null;
  last: Done | null;
  busy: boolean;
}
const state: DemoState = { readyAt: null, firstTokenAt: null, ready: null, last: null, busy: false };
(window as unknown as { pdvmDemo: DemoState }).pdvmDemo = state;

const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
const send = (m: ToWorker) => worker.postMessage(m);
/** Chat turns so far (chat mode). */
const history: { role: 'user' | 'assistant'; content: string }[] = [];
let current: HTMLElement | null = null;

function setBusy(busy: boolean): void {
  state.busy = busy;
  el.generate.disabled = busy || !state.ready;
  el.load.disabled = busy;
  el.stop.disabled = !busy;
}

function showError(message: string): void {
  el.error.textContent = message;
  el.error.hidden = false;
}

function mb(n: number): string {
  return `${(n / 1e6).toFixed(1)} MB`;
}

function chosenModel(): ModelChoice | null {
  if (el.source.value === 'url') return el.url.value.trim() ? { kind: 'url', url: el.url.value.trim() } : null;
  if (el.source.value === 'file') return el.file.files?.[0] ? { kind: 'file', file: el.file.files[0] } : null;
  return { kind: 'demo' };
}

function load(): void {
  const model = chosenModel();
  if (!model) return showError(el.source.value === 'url' ? 'Enter the URL of a .upg file (or of a Hugging Face folder, ending in /).' : 'Choose a .upg file first.');
  el.error.hidden = true;
  state.ready = null;
  el.model.textContent = 'Loading…';
  el.progress.value = 0;
  el.progress.hidden = false;
  setBusy(true);
  send({ type: 'load', model, backend: el.backend.value as 'auto', decode: el.decode.value as 'fused', activations: el.activations.value as 'int8', kvCache: el.kvCache.value as 'f16', cache: el.cache.checked });
}

function generate(): void {
  if (!state.ready || state.busy) return;
  el.error.hidden = true;
  const prompt = el.prompt.value;
  const num = (i: HTMLInputElement, fallback: number) => (i.value.trim() === '' || !Number.isFinite(Number(i.value)) ? fallback : Number(i.value));
  const chat = el.chat.checked;
  if (!chat) el.output.textContent = '';
  else {
    el.output.append(Object.assign(document.createElement('div'), { className: 'turn user', textContent: prompt }));
  }
  current = document.createElement('span');
  current.className = chat ? 'turn assistant' : 'continuation';
  if (!chat) el.output.append(Object.assign(document.createElement('span'), { className: 'prompt', textContent: prompt }));
  el.output.append(current);
  el.output.dataset.tokenIds = '';
  el.stats.textContent = 'Generating…';
  setBusy(true);
  send({
    type: 'generate',
    prompt,
    chat: chat ? [...history] : null,
    sampling: {
      temperature: num(el.temperature, 0.8),
      topP: num(el.topP, 0.95),
      topK: num(el.topK, 40),
      maxTokens: num(el.maxTokens, 64),
      seed: el.seed.value.trim() === '' ? undefined : num(el.seed, 0),
    },
  });
  if (chat) history.push({ role: 'user', content: prompt });
}

worker.onmessage = (ev: MessageEvent<FromWorker>) => {
  const m = ev.data;
  switch (m.type) {
    case 'webgpu':
      el.webgpu.textContent = m.available ? 'WebGPU is available.' : `No WebGPU: ${m.reason}. The model runs on the CPU backend (slower).`;
      el.webgpu.className = m.available ? 'ok' : 'warn';
      break;
    case 'progress': {
      const what = m.phase === 'download' ? 'Downloading' : 'Reading tensors';
      el.progress.max = m.totalBytes || 1;
      el.progress.value = m.loadedBytes;
      el.progressText.textContent = m.totalBytes ? `${what}: ${mb(m.loadedBytes)} of ${mb(m.totalBytes)}` : `${what}: ${mb(m.loadedBytes)}`;
      break;
    }
    case 'ready':
      state.ready = m;
      state.readyAt ??= performance.now();
      el.progress.hidden = true;
      el.progressText.textContent = `Loaded in ${(m.loadMs / 1000).toFixed(1)} s.`;
      el.model.textContent = `${m.name} on ${m.backend === 'webgpu' ? `WebGPU (${m.decode} decode)` : 'the CPU'}: ${m.adapter}`;
      el.notice.textContent = m.notice ?? '';
      el.notice.hidden = !m.notice;
      el.chat.disabled = !m.hasChatTemplate;
      if (!m.hasChatTemplate) el.chat.checked = false;
      setBusy(false);
      break;
    case 'chunk':
      state.firstTokenAt ??= performance.now();
      current?.append(m.text);
      el.output.dataset.tokenIds = [el.output.dataset.tokenIds, ...m.tokenIds].filter((s) => s !== '').join(',');
      break;
    case 'done':
      state.last = m;
      if (current) current.textContent = m.text;
      el.output.dataset.tokenIds = m.tokenIds.join(',');
      if (el.chat.checked) history.push({ role: 'assistant', content: m.text });
      el.stats.textContent = m.stopped
        ? `Stopped after ${m.tokenIds.length} tokens.`
        : `${m.tokenIds.length} tokens (${m.finishReason}) at ${m.tokensPerSecond.toFixed(1)} tokens/s; first token after ${(m.firstTokenMs / 1000).toFixed(2)} s; prompt ${m.promptTokens} tokens.`;
      el.output.dataset.done = String(Date.now());
      setBusy(false);
      break;
    case 'error':
      showError(`${m.name}: ${m.message}`);
      if (!state.ready) el.model.textContent = 'No model loaded.';
      el.progress.hidden = true;
      setBusy(false);
      break;
  }
};
worker.onerror = (ev) => showError(`The worker failed: ${ev.message}`);

el.source.onchange = () => {
  el.url.hidden = el.source.value !== 'url';
  el.file.hidden = el.source.value !== 'file';
};
el.load.onclick = load;
el.generate.onclick = generate;
el.stop.onclick = () => send({ type: 'stop' });
el.clear.onclick = () => {
  history.length = 0;
  el.output.textContent = '';
  el.stats.textContent = '';
};
el.prompt.onkeydown = (e) => {
  if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) generate();
};

const params = new URLSearchParams(location.search);
for (const [key, select] of [['backend', el.backend], ['decode', el.decode], ['activations', el.activations], ['kv', el.kvCache]] as const) {
  const v = params.get(key);
  if (v && [...select.options].some((o) => o.value === v)) select.value = v;
}
setBusy(false);
if (params.get('autoload') !== '0') load();
