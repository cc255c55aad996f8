/**
 * Generation on the WebGPU engine through the fused decode path (decodeOnDevice) against the forward
 * path (decode: 'unfused', CPU sampling) and the CPU backend, on brown-llama-12m: the same greedy text
 * and tokens; seeded sampling reproducible and drawing as forwardToken does (the same GPU sampler, the
 * same Random(seed) draw per token); stop strings, EOS and max tokens mid-stream exactly as the forward
 * path; penalties falling back to forward(); a sequence that decoded on the GPU continuing through
 * forward(); the forward pass reading the fused path's weight buffers.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuEngine } from '../../../src/backends/cpu/engine.js';
import { createEngine } from '../../../src/backends/index.js';
import { WebGpuEngine } from '../../../src/backends/webgpu/engine.js';
import { fusedBuffersOf, gpuBuffersOf } from '../../../src/backends/webgpu/fused/engine-weights.js';
import { AbortError } from '../../../src/errors.js';
import { loadModel, type LoadedModel } from '../../../src/model/load.js';
import type { Engine } from '../../../src/runtime/engine.js';
import { generate, generateAll, type GenerateOptions, type GenerationContext, type GenerationResult } from '../../../src/runtime/generate.js';
import { Random } from '../../../src/runtime/sampling.js';
import { basename, join } from 'node:path';
import { ARCH_MODELS, assertClose, BROWN, readReference, ROOT, streamed } from '../../helpers.js';
import { SKIP_GPU, testGpu } from './gpu.js';

const CONTEXT = 80;

/** Counts the calls an engine gets (to tell which path a generation took). */
function counting(engine: Engine): Engine & { forwards: number; decodes: number } {
  const c: Engine & { forwards: number; decodes: number } = {
    backend: engine.backend, config: engine.config, contextLength: engine.contextLength, forwards: 0, decodes: 0,
    createSequence: () => engine.createSequence(),
    forward: (seq, tokens, all) => (c.forwards++, engine.forward(seq, tokens, all)),
    dispose: () => engine.dispose(),
  };
  const decode = engine.decodeOnDevice?.bind(engine);
  if (decode) c.decodeOnDevice = (seq, prompt, options) => (c.decodes++, decode(seq, prompt, options));
  return c;
}

/** What generate needs to run a model on an engine. */
function contextOf(model: LoadedModel, engine: Engine): GenerationContext {
  return { engine, tokenizer: model.tokenizer, eosTokenIds: model.config.eosTokenIds };
}


function assertSameTokens(got: number[], want: number[], what: string): void {
  const at = got.findIndex((id, i) => id !== want[i]);
  assert.ok(at < 0 && got.length === want.length, `${what}: first difference at token ${at < 0 ? Math.min(got.length, want.length) : at}: [${got}] vs [${want}]`);
}

function assertSameGeneration(got: GenerationResult & { streamed: string }, want: GenerationResult & { streamed: string }, what: string): void {
  assertSameTokens(got.tokenIds, want.tokenIds, what);
  assert.equal(got.text, want.text, `${what}: text`);
  assert.equal(got.streamed, want.streamed, `${what}: streamed text`);
  assert.equal(got.finishReason, want.finishReason, `${what}: finish reason`);
}

test('webgpu generate: the fused decode path gives the forward path\'s and the CPU\'s output', { skip: SKIP_GPU }, async () => {
  const model = await loadModel(BROWN);
  const gpu = await testGpu();
  const fusedEngine = await WebGpuEngine.create(model, { kvCache: 'f32', contextLength: CONTEXT, gpu });
  const forwardEngine = await WebGpuEngine.create(model, { kvCache: 'f32', contextLength: CONTEXT, gpu, decode: 'unfused' });
  try {
    assert.equal(fusedEngine.decode, 'fused', fusedEngine.decodeNotice);
    assert.equal(forwardEngine.decode, 'unfused');
    assert.equal(forwardEngine.decodeOnDevice, undefined);
    const fused = counting(fusedEngine), forward = counting(forwardEngine);
    const cpu = new CpuEngine(model.config, model.weights, CONTEXT);
    const ctx = (engine: Engine) => contextOf(model, engine);
    const prompts = ['The jury said that', 'He looked at the house and'].map((p) => model.tokenizer!.encode(p, true));

    // greedy: fused = forward path = CPU backend, token for token
    const greedy = { temperature: 0, maxTokens: 24, ignoreEos: true };
    const reference: GenerationResult[] = [];
    for (const prompt of prompts) {
      const want = await streamed(ctx(forward), prompt, greedy);
      const got = await streamed(ctx(fused), prompt, greedy);
      assertSameGeneration(got, want, `greedy from [${prompt}], fused vs forward`);
      assertSameTokens(got.tokenIds, (await generateAll(ctx(cpu), cpu.createSequence(), prompt, greedy)).tokenIds, `greedy from [${prompt}], fused vs CPU`);
      reference.push(want);
    }
    assert.equal(fused.decodes, 2);
    assert.equal(fused.forwards, 0, 'the fused path never calls forward()');

    // stop strings, EOS and max tokens mid-stream: the decoder has run up to 7 tokens past the stop
    const prompt = prompts[0]!, full = reference[0]!;
    const at = full.text.indexOf(' ', 12);
    const cases: [string, GenerateOptions][] = [
      ['stop string', { ...greedy, stop: [full.text.slice(at, at + 4)] }],
      ['stop string across tokens', { ...greedy, stop: ['zzz', full.text.slice(9, 14)] }],
      ['max tokens', { ...greedy, maxTokens: 5 }],
      ['EOS', { temperature: 0, maxTokens: 24, eosTokenIds: [full.tokenIds[6]!] }],
      ['end of the context', { ...greedy, maxTokens: CONTEXT }],
    ];
    for (const [name, options] of cases) {
      const want = await streamed(ctx(forward), prompt, options);
      const got = await streamed(ctx(fused), prompt, options);
      assertSameGeneration(got, want, name);
      if (name !== 'max tokens' && name !== 'end of the context') assert.equal(got.finishReason, 'stop', `${name}: stops`);
      if (name === 'end of the context') assert.equal(got.tokenIds.length, CONTEXT - prompt.length + 1, 'the context ends the generation');
    }
    assert.equal(fused.forwards, 0);

    // penalties: the forward path, so the same tokens as the unfused engine
    const penalised = { temperature: 0, maxTokens: 16, ignoreEos: true, repetitionPenalty: 1.3 };
    const before = fused.decodes;
    assertSameTokens((await generateAll(ctx(fused), fused.createSequence(), prompt, penalised)).tokenIds, (await generateAll(ctx(forward), forward.createSequence(), prompt, penalised)).tokenIds, 'repetition penalty');
    assert.equal(fused.decodes, before, 'penalties do not decode on the GPU');
    assert.ok(fused.forwards > 0, 'penalties go through forward()');
  } finally {
    fusedEngine.dispose();
    forwardEngine.dispose();
  }
});

test('webgpu generate: the forward pass reads the fused path\'s weight buffers (bf16 fixture, q4 demo model)', { skip: SKIP_GPU }, async () => {
  const gpu = await testGpu();
  // the bf16 fixture; the .upg: q4 layers, q8 lm_head, q8 embedding (looked up in the fused path's decoded table)
  for (const path of [BROWN, join(ROOT, 'models', 'brown-llama-12m.upg')]) {
    const model = await loadModel(path);
    const engine = await WebGpuEngine.create(model, { kvCache: 'f32', contextLength: CONTEXT, gpu });
    try {
      assert.equal(engine.decode, 'fused', engine.decodeNotice);
      const fusedBuffers = new Set(fusedBuffersOf(engine.fusedWeights!));
      const own = gpuBuffersOf(engine.weights).filter((b) => !fusedBuffers.has(b));
      assert.deepEqual(own.map((b) => b.label), [], `${path}: weight buffers not shared with the fused path`);
      // the forward pass over those buffers (q, k, v and gate, up as joined matrices) against the CPU
      const ids = model.tokenizer!.encode('The jury said that the city', true);
      const cpu = new CpuEngine(model.config, model.weights, CONTEXT);
      assertClose(await engine.forward(engine.createSequence(), ids, true), await cpu.forward(cpu.createSequence(), ids, true), 1e-4, `${path}: forward logits over the shared buffers vs the CPU`);
    } finally {
      engine.dispose();
    }
  }
});

test('webgpu generate: seeded sampling through the fused path is reproducible and draws as forwardToken', { skip: SKIP_GPU }, async () => {
  const model = await loadModel(BROWN);
  const gpu = await testGpu();
  const engine = await WebGpuEngine.create(model, { kvCache: 'f32', contextLength: CONTEXT, gpu });
  try {
    const ctx = contextOf(model, engine);
    const prompt = model.tokenizer!.encode('In the morning, the', true);
    const sampling = { temperature: 0.9, topK: 40, topP: 0.95, minP: 0.05 };
    const options = { ...sampling, seed: 5, maxTokens: 20, ignoreEos: true };
    const a = await generateAll(ctx, engine.createSequence(), prompt, options);
    const b = await generateAll(ctx, engine.createSequence(), prompt, options);
    assertSameTokens(b.tokenIds, a.tokenIds, 'same seed');
    const c = await generateAll(ctx, engine.createSequence(), prompt, { ...options, seed: 6 });
    assert.notDeepEqual(c.tokenIds, a.tokenIds, 'another seed, other tokens');
    // token n is the GPU sampler's choice for the n-th draw of Random(seed): forwardToken, step by step
    const random = new Random(5);
    const seq = engine.createSequence();
    const stepwise = [await engine.forwardToken(seq, prompt, { ...sampling, random: random.next() })];
    while (stepwise.length < a.tokenIds.length) stepwise.push(await engine.forwardToken(seq, [stepwise.at(-1)!], { ...sampling, random: random.next() }));
    assertSameTokens(a.tokenIds, stepwise, 'fused sampling vs forwardToken with the same draws');
  } finally {
    engine.dispose();
  }
});

test('webgpu generate: a sequence decoded on the GPU continues through forward(), and after an abort', { skip: SKIP_GPU }, async () => {
  const model = await loadModel(BROWN);
  const gpu = await testGpu();
  const engine = await WebGpuEngine.create(model, { kvCache: 'f32', contextLength: CONTEXT, gpu });
  const cpu = new CpuEngine(model.config, model.weights, CONTEXT);
  try {
    const ctx = contextOf(model, engine);
    const prompt = model.tokenizer!.encode('The jury said that', true);
    const greedy = { temperature: 0, maxTokens: 10, ignoreEos: true };
    const seq = engine.createSequence();
    const r = await generateAll(ctx, seq, prompt, greedy);
    // the sequence holds the prompt and every token but the last, as after the forward path
    assert.equal(seq.length, prompt.length + r.tokenIds.length - 1);
    const history = [...prompt, ...r.tokenIds];
    const cs = cpu.createSequence();
    const want = await cpu.forward(cs, history);
    assertClose(await engine.forward(seq, [r.tokenIds.at(-1)!]), want, 1e-4, 'forward() after a fused decode vs the CPU over the same tokens');
    // and back to the GPU decoder after forward() moved the sequence on
    seq.truncate(prompt.length + 3);
    cs.truncate(prompt.length + 3);
    const next = await engine.decodeOnDevice!(seq, [r.tokenIds[3]!], { maxTokens: 4, sampling: { temperature: 0, topK: 0, topP: 1, minP: 0 }, random: () => 0, onToken: () => false });
    assertSameTokens(next, r.tokenIds.slice(4, 8), 'decoding on the GPU after a truncate');

    // an abort mid-stream: AbortError, and the sequence decodes again as new
    const controller = new AbortController();
    const it = generate(ctx, seq, prompt, { ...greedy, maxTokens: 40, signal: controller.signal });
    await it.next();
    controller.abort();
    await assert.rejects(it.next(), AbortError);
    assertSameTokens((await generateAll(ctx, seq, prompt, greedy)).tokenIds, r.tokenIds, 'after an abort');
  } finally {
    engine.dispose();
  }
});

test('webgpu generate: where the fused path cannot hold the weights, the engine says why and decodes through forward()', { skip: SKIP_GPU }, async () => {
  const model = await loadModel(BROWN);
  // 1 MiB bindings: the forward pass splits the 8 MB embedding into segments; the fused path splits only
  // the embedding, lm_head, o_proj and down_proj, so brown's 1.5 MB gate/up matrix keeps it from running
  const small = await testGpu({ maxBindingBytes: 1 << 20 });
  const { engine, notice } = await createEngine(model, { backend: 'webgpu', kvCache: 'f32', contextLength: CONTEXT, webgpu: { gpu: small } });
  const reference = await WebGpuEngine.create(model, { kvCache: 'f32', contextLength: CONTEXT, gpu: await testGpu(), decode: 'unfused' });
  try {
    assert.match(notice ?? '', /decoding through the forward pass: the fused decoder cannot run here \(.*split across storage bindings.*over this device's limit/);
    assert.equal(engine.decodeOnDevice, undefined);
    assert.equal((engine as WebGpuEngine).decode, 'unfused');
    const ctx = (e: Engine) => contextOf(model, e);
    const prompt = model.tokenizer!.encode('The jury said that', true);
    const greedy = { temperature: 0, maxTokens: 12, ignoreEos: true };
    assertSameTokens((await generateAll(ctx(engine), engine.createSequence(), prompt, greedy)).tokenIds, (await generateAll(ctx(reference), reference.createSequence(), prompt, greedy)).tokenIds, 'fallback engine');
    small.check(); // the buffers of the failed upload were freed without a GPU error
  } finally {
    engine.dispose();
    reference.dispose();
  }
});

test('webgpu generate: the fused path prefills the prompt through the forward pass\'s chunks into the decoder\'s cache', { skip: SKIP_GPU }, async () => {
  const model = await loadModel(BROWN);
  const gpu = await testGpu();
  // chunks of 4 tokens: a prompt of several chunks and a partial last one
  const fusedEngine = await WebGpuEngine.create(model, { kvCache: 'f32', contextLength: CONTEXT, gpu, prefillChunk: 4 });
  const forwardEngine = await WebGpuEngine.create(model, { kvCache: 'f32', contextLength: CONTEXT, gpu, decode: 'unfused' });
  try {
    const ctx = (engine: Engine) => contextOf(model, engine);
    const seq = fusedEngine.createSequence();
    // the decoder is handed only what the chunked prefill left: the last token of each turn's input
    const decoder = seq.decoder!;
    const fed: number[] = [];
    const original = decoder.generate.bind(decoder);
    decoder.generate = (prompt, options) => (fed.push(prompt.length), original(prompt, options));
    const prompt = model.tokenizer!.encode('The jury said that the city of Atlanta had been praised for the manner in which', true);
    assert.ok(prompt.length > 9, `a prompt of ${prompt.length} tokens`);
    const greedy = { temperature: 0, maxTokens: 12, ignoreEos: true };
    const ws = forwardEngine.createSequence();
    const first = await generateAll(ctx(fusedEngine), seq, prompt, greedy);
    assertSameTokens(first.tokenIds, (await generateAll(ctx(forwardEngine), ws, prompt, greedy)).tokenIds, 'first turn, fused vs forward');
    // a second turn on the same sequences (the whole history as the prompt: the sequence keeps the common
    // prefix): the last generated token and a new text are prefilled the same way
    const history = [...prompt, ...first.tokenIds, ...model.tokenizer!.encode(' and the jury said', false)];
    const second = await generateAll(ctx(fusedEngine), seq, history, greedy);
    assertSameTokens(second.tokenIds, (await generateAll(ctx(forwardEngine), ws, history, greedy)).tokenIds, 'second turn, fused vs forward');
    assert.deepEqual(fed, [1, 1], 'the decoder stepped through the last input token only');
    assert.equal(decoder.length, history.length + second.tokenIds.length - 1);
  } finally {
    fusedEngine.dispose();
    forwardEngine.dispose();
  }
});

test('webgpu generate: chunked prefill into the decoder\'s cache matches the forward path on every architecture fixture (a sliding window shorter than the prompt included)', { skip: SKIP_GPU }, async () => {
  const gpu = await testGpu();
  for (const dir of ARCH_MODELS) {
    const model = await loadModel(dir);
    const ref = await readReference(dir);
    const fusedEngine = await WebGpuEngine.create(model, { kvCache: 'f32', contextLength: 64, gpu, prefillChunk: 5 });
    const forwardEngine = await WebGpuEngine.create(model, { kvCache: 'f32', contextLength: 64, gpu, decode: 'unfused' });
    try {
      assert.equal(fusedEngine.decode, 'fused', fusedEngine.decodeNotice);
      const prompt = [...ref.inputIds.slice(0, 23)];
      const greedy = { temperature: 0, maxTokens: 10, ignoreEos: true };
      const got = await generateAll(contextOf(model, fusedEngine), fusedEngine.createSequence(), prompt, greedy);
      const want = await generateAll(contextOf(model, forwardEngine), forwardEngine.createSequence(), prompt, greedy);
      assertSameTokens(got.tokenIds, want.tokenIds, `${basename(dir)}: fused (chunked prefill) vs forward`);
    } finally {
      fusedEngine.dispose();
      forwardEngine.dispose();
    }
  }
});
