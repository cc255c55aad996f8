/**
 * Peak host memory while loading a model onto WebGPU: a synthetic Llama (random BF16 weights, a
 * Hugging Face folder made here) loaded as the library does now (matrices read lazily and uploaded a
 * layer at a time) and as it did before (every matrix read into memory, then uploaded). Each mode
 * runs in its own process; memory is sampled at every tensor read and every 5 ms.
 *
 *   npx tsc -p . && node dist/scripts/measure-load-memory.js [--layers 8] [--hidden 1024] [--decode fused|unfused]
 *
 * "JS" is V8 heap used + ArrayBuffers (the host copies of the weights); RSS includes the driver's
 * allocations too (on lavapipe the "GPU" memory is host memory). A third run collects garbage before
 * each sample (--expose-gc): the memory live at once, without what V8 has yet to collect.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { encodeSafetensorsHeader } from '../src/format/safetensors.js';

interface Shape { layers: number; hidden: number; intermediate: number; vocab: number; heads: number }

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : fallback;
}

/** Writes config.json and model.safetensors (BF16, values ~ N(0, 0.02)) into `dir`; returns the tensor sizes. */
function synthesise(dir: string, s: Shape): { fileBytes: number; largest: number } {
  const config = {
    architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: s.hidden, intermediate_size: s.intermediate,
    num_attention_heads: s.heads, num_key_value_heads: s.heads, num_hidden_layers: s.layers, vocab_size: s.vocab,
    max_position_embeddings: 2048, rms_norm_eps: 1e-5, rope_theta: 10000, tie_word_embeddings: false, bos_token_id: 1, eos_token_id: 2,
  };
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
  const tensors: { name: string; shape: number[] }[] = [{ name: 'model.embed_tokens.weight', shape: [s.vocab, s.hidden] }];
  for (let l = 0; l < s.layers; l++) {
    const p = `model.layers.${l}.`;
    for (const m of ['q', 'k', 'v', 'o']) tensors.push({ name: `${p}self_attn.${m}_proj.weight`, shape: [s.hidden, s.hidden] });
    tensors.push({ name: `${p}mlp.gate_proj.weight`, shape: [s.intermediate, s.hidden] }, { name: `${p}mlp.up_proj.weight`, shape: [s.intermediate, s.hidden] });
    tensors.push({ name: `${p}mlp.down_proj.weight`, shape: [s.hidden, s.intermediate] });
    tensors.push({ name: `${p}input_layernorm.weight`, shape: [s.hidden] }, { name: `${p}post_attention_layernorm.weight`, shape: [s.hidden] });
  }
  tensors.push({ name: 'model.norm.weight', shape: [s.hidden] }, { name: 'lm_head.weight', shape: [s.vocab, s.hidden] });
  const entries = tensors.map((t) => ({ name: t.name, dtype: 'BF16' as const, shape: t.shape, byteLength: t.shape.reduce((a, b) => a * b, 1) * 2 }));
  const { header } = encodeSafetensorsHeader(entries);
  const fd = openSync(join(dir, 'model.safetensors'), 'w');
  writeSync(fd, header);
  let seed = 7;
  const f32 = new Float32Array(1);
  const u32 = new Uint32Array(f32.buffer);
  for (const t of entries) {
    const values = new Uint16Array(t.byteLength / 2);
    const norm = t.shape.length === 1;
    for (let i = 0; i < values.length; i++) {
      seed = (seed * 1664525 + 1013904223) >>> 0;
      f32[0] = norm ? 1 : ((seed / 2 ** 32) - 0.5) * 0.07;
      values[i] = u32[0]! >>> 16;
    }
    writeSync(fd, new Uint8Array(values.buffer));
  }
  closeSync(fd);
  return { fileBytes: header.length + entries.reduce((a, e) => a + e.byteLength, 0), largest: Math.max(...entries.map((e) => e.byteLength)) };
}

/** Child: load `dir` in `mode` and print the peaks as JSON. */
async function child(dir: string, mode: 'streamed' | 'whole', decode: 'fused' | 'unfused'): Promise<void> {
  const peak = { js: 0, rss: 0, arrayBuffers: 0, heapUsed: 0 };
  // under --expose-gc, collect before each sample: what is live, without the garbage V8 has yet to collect
  const collect = (globalThis as { gc?: () => void }).gc;
  const sample = () => {
    collect?.();
    const m = process.memoryUsage();
    peak.js = Math.max(peak.js, m.heapUsed + m.arrayBuffers);
    peak.rss = Math.max(peak.rss, m.rss);
    peak.arrayBuffers = Math.max(peak.arrayBuffers, m.arrayBuffers);
    peak.heapUsed = Math.max(peak.heapUsed, m.heapUsed);
  };
  const timer = setInterval(sample, 5);
  const before = process.memoryUsage();
  const t0 = performance.now();
  if (mode === 'streamed') {
    const { loadModel } = await import('../src/api/model.js');
    const model = await loadModel(dir, { backend: 'webgpu', decode, contextLength: 64, onProgress: sample });
    sample();
    await model.dispose();
  } else {
    const { loadModel } = await import('../src/model/load.js');
    const { createEngine } = await import('../src/backends/index.js');
    const loaded = await loadModel(dir, { onProgress: sample });
    const { engine } = await createEngine(loaded, { backend: 'webgpu', contextLength: 64, decode });
    sample();
    engine.dispose();
  }
  clearInterval(timer);
  const seconds = (performance.now() - t0) / 1000;
  console.log(JSON.stringify({ mode, decode, seconds, baseline: { js: before.heapUsed + before.arrayBuffers, rss: before.rss }, peak }));
}

const mb = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;

if (process.argv[2] === '--child') {
  await child(process.argv[3]!, process.argv[4] as 'streamed' | 'whole', process.argv[5] as 'fused' | 'unfused');
} else {
  const shape: Shape = { layers: Number(arg('layers', '8')), hidden: Number(arg('hidden', '1024')), intermediate: Number(arg('intermediate', '2816')), vocab: Number(arg('vocab', '32000')), heads: 16 };
  const decode = arg('decode', 'fused') as 'fused' | 'unfused';
  // --keep DIR: write the model there and leave it (to load it again by hand)
  const kept = process.argv.includes('--keep') ? arg('keep', '') : null;
  const dir = kept ?? mkdtempSync(join(tmpdir(), 'pdvm-load-memory-'));
  if (kept) mkdirSync(kept, { recursive: true });
  try {
    const { fileBytes, largest } = synthesise(dir, shape);
    console.log(`synthetic Llama ${JSON.stringify(shape)}: model.safetensors ${mb(fileBytes)} (BF16), largest tensor ${mb(largest)} (${mb(largest * 2)} as float32)`);
    for (const [mode, gc] of [['streamed', false], ['whole', false], ['streamed', true]] as const) {
      const flags = gc ? ['--expose-gc'] : [];
      const out = execFileSync(process.execPath, [...flags, fileURLToPath(import.meta.url), '--child', dir, mode, decode], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
      const r = JSON.parse(out.trim().split('\n').pop()!);
      console.log(
        `${mode.padEnd(8)} (${decode}${gc ? ', gc() before each sample: live memory' : ''}): peak JS ${mb(r.peak.js)} (heap ${mb(r.peak.heapUsed)}, ArrayBuffers ${mb(r.peak.arrayBuffers)}; ${mb(r.baseline.js)} before loading), ` +
          `peak RSS ${mb(r.peak.rss)}; ${r.seconds.toFixed(1)} s`,
      );
    }
  } finally {
    if (!kept) rmSync(dir, { recursive: true, force: true });
  }
}
