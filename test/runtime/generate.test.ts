/**
 * generate() through an engine's decodeOnDevice against the forward() path, without a GPU: a fake
 * device engine over the CPU engine chooses tokens itself (argmax, or the CPU sampler's choice for the
 * draw it is handed) and runs `lag` tokens ahead of what it reports, as the fused decoder does. The
 * text, tokens and finish reason must be those of the forward path for greedy decoding, stop strings,
 * EOS and max tokens; a seeded run draws Random(seed) once per token in order; penalties fall back to
 * forward(); a consumer that stops early or aborts leaves no decode running.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuEngine } from '../../src/backends/cpu/engine.js';
import { AbortError } from '../../src/errors.js';
import { loadModel, type LoadedModel } from '../../src/model/load.js';
import type { DeviceDecodeOptions, Engine, Sequence } from '../../src/runtime/engine.js';
import { generate, generateAll, type GenerateOptions, type GenerationContext, type GenerationResult } from '../../src/runtime/generate.js';
import { argmax, Random } from '../../src/runtime/sampling.js';
import { BROWN, streamed } from '../helpers.js';

const CONTEXT = 64;

/** The CPU engine plus a decodeOnDevice that computes `lag` tokens past the one it reports. */
class FakeDeviceEngine implements Engine {
  readonly backend = 'cpu';
  forwards = 0;
  decodes = 0;
  running = 0;
  draws: number[] = [];
  constructor(readonly inner: CpuEngine, readonly lag = 3) {}
  get config() {
    return this.inner.config;
  }
  get contextLength() {
    return this.inner.contextLength;
  }
  createSequence(): Sequence {
    return this.inner.createSequence();
  }
  forward(seq: Sequence, tokens: ArrayLike<number>, allLogits?: boolean): Promise<Float32Array> {
    this.forwards++;
    return this.inner.forward(seq, tokens, allLogits);
  }
  async decodeOnDevice(seq: Sequence, prompt: ArrayLike<number>, o: DeviceDecodeOptions): Promise<number[]> {
    this.decodes++;
    this.running++;
    try {
      // tokens chosen ahead of the reader; the cache ends up holding only what was reported
      const start = seq.length;
      const max = Math.min(o.maxTokens, this.contextLength - start - prompt.length + 1);
      const chosen: number[] = [];
      let logits = await this.inner.forward(seq, prompt);
      const out: number[] = [];
      for (let n = 0; n < max; n++) {
        while (chosen.length < Math.min(n + 1 + this.lag, max)) {
          if (chosen.length > 0) logits = await this.inner.forward(seq, [chosen.at(-1)!]);
          chosen.push(this.choose(logits, o));
        }
        out.push(chosen[n]!);
        if (o.onToken(chosen[n]!)) break;
        await new Promise((r) => setImmediate(r));
      }
      seq.truncate(start + prompt.length + out.length - 1);
      return out;
    } finally {
      this.running--;
    }
  }
  private choose(logits: Float32Array, o: DeviceDecodeOptions): number {
    if (o.sampling.temperature === 0) return argmax(logits);
    const u = o.random();
    this.draws.push(u);
    // softmax over the top-k by index order, the GPU kernel's walk
    const k = o.sampling.topK;
    const order = [...logits.keys()].sort((a, b) => logits[b]! - logits[a]! || a - b).slice(0, k > 0 ? k : logits.length);
    const keep = new Set(order);
    const max = logits[order[0]!]!;
    const w = (i: number) => (keep.has(i) ? Math.exp((logits[i]! - max) / o.sampling.temperature) : 0);
    let total = 0;
    for (let i = 0; i < logits.length; i++) total += w(i);
    let r = u * total;
    for (let i = 0; i < logits.length; i++) if ((r -= w(i)) < 0) return i;
    return order.at(-1)!;
  }
  dispose(): void {
    this.inner.dispose();
  }
}

let loaded: LoadedModel | null = null;
async function setup(lag = 3) {
  loaded ??= await loadModel(BROWN);
  const model = loaded;
  const cpu = new CpuEngine(model.config, model.weights, CONTEXT);
  const device = new FakeDeviceEngine(new CpuEngine(model.config, model.weights, CONTEXT), lag);
  const ctx = (engine: Engine): GenerationContext => ({ engine, tokenizer: model.tokenizer, eosTokenIds: model.config.eosTokenIds });
  const prompt = model.tokenizer!.encode('The jury said that', true);
  return { model, cpu, device, ctx, prompt };
}


function assertSameGeneration(got: GenerationResult & { streamed: string }, want: GenerationResult & { streamed: string }, what: string): void {
  const at = got.tokenIds.findIndex((id, i) => id !== want.tokenIds[i]);
  assert.ok(at < 0 && got.tokenIds.length === want.tokenIds.length, `${what}: tokens differ at ${at < 0 ? got.tokenIds.length : at}: [${got.tokenIds}] vs [${want.tokenIds}]`);
  assert.equal(got.text, want.text, `${what}: text`);
  assert.equal(got.streamed, want.streamed, `${what}: streamed text`);
  assert.equal(got.finishReason, want.finishReason, `${what}: finish reason`);
}

test('generate through decodeOnDevice: greedy, stop strings, EOS and max tokens as through forward()', async () => {
  const { cpu, device, ctx, prompt } = await setup();
  const greedy = { temperature: 0, maxTokens: 24, ignoreEos: true };
  const full = await streamed(ctx(cpu), prompt, greedy);
  const viaDevice = await streamed(ctx(device), prompt, greedy);
  assertSameGeneration(viaDevice, full, 'greedy');
  assert.equal(device.decodes, 1);
  assert.equal(device.forwards, 0, 'no forward() when the device decodes');

  // a stop string in the middle of the text (the device has run 3 tokens past it), one across a token
  // boundary, max tokens, the end of the context and an EOS id seen mid-stream
  const word = full.text.slice(full.text.indexOf(' ', 10), full.text.indexOf(' ', 10) + 5);
  const cases: [string, GenerateOptions][] = [
    ['stop string', { ...greedy, stop: [word] }],
    ['two stop strings', { ...greedy, stop: ['zzz', full.text.slice(20, 23)] }],
    ['max tokens', { ...greedy, maxTokens: 5 }],
    ['end of the context', { ...greedy, maxTokens: 100 }],
    ['EOS', { temperature: 0, maxTokens: 24, eosTokenIds: [full.tokenIds[7]!] }],
  ];
  for (const [name, options] of cases) {
    const want = await streamed(ctx(cpu), prompt, options);
    const got = await streamed(ctx(device), prompt, options);
    assertSameGeneration(got, want, name);
    if (name === 'stop string' || name === 'EOS') assert.equal(got.finishReason, 'stop', `${name} stops`);
    if (name === 'end of the context') assert.equal(got.tokenIds.length, CONTEXT - prompt.length + 1, 'the context ends the generation');
  }
  assert.equal(device.forwards, 0);
});

test('generate through decodeOnDevice: seeded draws are Random(seed) in order, reproducible; penalties fall back to forward()', async () => {
  const { device, ctx, prompt } = await setup();
  const sampled = { temperature: 0.9, topK: 40, topP: 1, minP: 0, seed: 11, maxTokens: 16, ignoreEos: true };
  const a = await generateAll(ctx(device), device.createSequence(), prompt, sampled);
  const drawsA = device.draws.splice(0);
  const b = await generateAll(ctx(device), device.createSequence(), prompt, sampled);
  assert.deepEqual(b.tokenIds, a.tokenIds, 'same seed, same tokens');
  const random = new Random(11);
  // one draw per token chosen, including those computed past the end (lag 3)
  assert.deepEqual(drawsA, drawsA.map(() => random.next()), 'the draws are Random(seed), one per token, in order');
  assert.ok(drawsA.length >= a.tokenIds.length);

  device.forwards = device.decodes = 0;
  const cpu = new CpuEngine(device.config, device.inner.weights, CONTEXT);
  for (const penalty of [{ repetitionPenalty: 1.3 }, { presencePenalty: 0.5 }, { frequencyPenalty: 0.5 }]) {
    const options = { ...sampled, ...penalty };
    const got = await generateAll(ctx(device), device.createSequence(), prompt, options);
    const want = await generateAll(ctx(cpu), cpu.createSequence(), prompt, options);
    assert.deepEqual(got.tokenIds, want.tokenIds, `${JSON.stringify(penalty)}: the forward path's tokens`);
  }
  assert.equal(device.decodes, 0, 'penalties never decode on the device');
  assert.ok(device.forwards > 0);
});

test('generate through decodeOnDevice: a consumer that stops early or aborts leaves no decode running', async () => {
  const { device, ctx, prompt } = await setup(6);
  const it = generate(ctx(device), device.createSequence(), prompt, { temperature: 0, maxTokens: 40, ignoreEos: true });
  await it.next();
  await it.next();
  await it.return(undefined as never);
  assert.equal(device.running, 0, 'return() waits for the decode to end');

  const controller = new AbortController();
  const aborted = generate(ctx(device), device.createSequence(), prompt, { temperature: 0, maxTokens: 40, ignoreEos: true, signal: controller.signal });
  await aborted.next();
  controller.abort();
  await assert.rejects(aborted.next(), AbortError);
  assert.equal(device.running, 0, 'an abort ends the decode');
});
