/**
 * The WebGPU engine beyond the fixtures: a model with its matrices in each UPG encoding against the
 * CPU engine on the same weights (prefill and decode logits), createEngine, and the typed errors.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuEngine } from '../../../src/backends/cpu/engine.js';
import { createEngine } from '../../../src/backends/index.js';
import { WebGpuEngine } from '../../../src/backends/webgpu/engine.js';
import { GpuOutOfMemoryError } from '../../../src/backends/webgpu/errors.js';
import { InvalidInputError } from '../../../src/errors.js';
import { BitmapTensor, CsrTensor, NmTensor, Q4Tensor, Q8Tensor } from '../../../src/format/upg/encodings/index.js';
import { loadModel } from '../../../src/model/load.js';
import { DenseTensor, type WeightTensor } from '../../../src/model/tensor.js';
import type { ModelWeights } from '../../../src/model/weights.js';
import { ARCH_MODELS, assertClose, BROWN, readReference } from '../../helpers.js';
import { softwareAdapter } from '../../../src/backends/webgpu/device.js';
import { SKIP_GPU, testGpu } from './gpu.js';

/** Magnitude pruning to 50% (unstructured) or 2:4, enough to exercise the sparse kernels. */
function pruned(t: DenseTensor, nm: boolean): Float32Array {
  const w = Float32Array.from(t.data);
  if (nm) {
    for (let i = 0; i + 4 <= w.length; i += 4) {
      const order = [0, 1, 2, 3].sort((a, b) => Math.abs(w[i + a]!) - Math.abs(w[i + b]!));
      w[i + order[0]!] = 0;
      w[i + order[1]!] = 0;
    }
    return w;
  }
  const sorted = Float32Array.from(w, Math.abs).sort();
  const threshold = sorted[Math.floor(sorted.length / 2)]!;
  for (let i = 0; i < w.length; i++) if (Math.abs(w[i]!) < threshold) w[i] = 0;
  return w;
}

const ENCODERS: Record<string, (t: DenseTensor) => WeightTensor> = {
  q8: (t) => Q8Tensor.pack(t.rows, t.cols, t.data),
  q4: (t) => Q4Tensor.pack(t.rows, t.cols, t.data, 64),
  bitmap: (t) => BitmapTensor.pack(t.rows, t.cols, pruned(t, false), 64, 4),
  nm: (t) => NmTensor.pack(t.rows, t.cols, pruned(t, true), 2, 4, 8),
  csr: (t) => CsrTensor.pack(t.rows, t.cols, pruned(t, false)),
};

/** The layer matrices, embedding and lm_head re-encoded (as `pdvm compress` would store them). */
function encodeWeights(w: ModelWeights, enc: (t: DenseTensor) => WeightTensor): ModelWeights {
  const e = (t: WeightTensor) => enc(t as DenseTensor);
  return {
    embed: e(w.embed),
    lmHead: e(w.lmHead),
    finalNorm: w.finalNorm,
    layers: w.layers.map((L) => ({ ...L, qkv: L.qkv.map(e), gateUp: L.gateUp.map(e), o: e(L.o), down: e(L.down) })),
  };
}

// arch/llama rather than brown-llama: ten times less arithmetic, which lavapipe needs
test('webgpu engine: a model in every UPG encoding matches the CPU engine on the same weights', { skip: SKIP_GPU }, async () => {
  const dir = ARCH_MODELS[0]!;
  const model = await loadModel(dir);
  const ids = Array.from((await readReference(dir)).inputIds.subarray(0, 40));
  const gpu = await testGpu();
  for (const [name, enc] of Object.entries(ENCODERS)) {
    const weights = encodeWeights(model.weights, enc);
    const cpu = new CpuEngine(model.config, weights, 64);
    const engine = await WebGpuEngine.create({ config: model.config, weights }, { kvCache: 'f32', contextLength: 64, prefillChunk: 32, gpu });
    try {
      const cs = cpu.createSequence(), gs = engine.createSequence();
      // prefill of 39 tokens (two chunks), then one decode step
      assertClose(await engine.forward(gs, ids.slice(0, 39), true), await cpu.forward(cs, ids.slice(0, 39), true), 1e-4, `${name} prefill logits`);
      assertClose(await engine.forward(gs, ids.slice(39)), await cpu.forward(cs, ids.slice(39)), 1e-4, `${name} decode logits`);
    } finally {
      engine.dispose();
    }
  }
});

test('webgpu engine: createEngine picks the backend; typed errors for bad input and a cache the device cannot hold', { skip: SKIP_GPU }, async () => {
  const model = await loadModel(BROWN);
  const cpu = await createEngine(model, { backend: 'cpu', contextLength: 8 });
  assert.equal(cpu.engine.backend, 'cpu');
  // auto: WebGPU on a hardware adapter; the CPU, with a notice saying why, when the only one is software (lavapipe)
  const software = await softwareAdapter();
  const picked = await createEngine(model, { backend: 'auto', contextLength: 8 });
  picked.engine.dispose();
  if (software) {
    assert.equal(picked.engine.backend, 'cpu');
    assert.match(picked.notice ?? '', /software/);
  } else {
    assert.equal(picked.engine.backend, 'webgpu');
    assert.equal(picked.notice, undefined);
  }
  const auto = await createEngine(model, { backend: 'webgpu', kvCache: 'f32', contextLength: 8 });
  assert.equal(auto.engine.backend, 'webgpu');
  try {
    const seq = auto.engine.createSequence();
    await assert.rejects(auto.engine.forward(seq, [model.config.vocabSize]), InvalidInputError);
    await assert.rejects(auto.engine.forward(seq, Array(9).fill(1)), InvalidInputError);
    assert.equal((await auto.engine.forward(seq, [1, 2])).length, model.config.vocabSize);
    assert.equal(seq.length, 2);
  } finally {
    auto.engine.dispose();
  }
  // 2 KV heads x 64 x 4 bytes = 512 bytes a position: 4096 positions do not fit a 1 MiB binding
  await assert.rejects(
    WebGpuEngine.create(model, { kvCache: 'f32', contextLength: 4096, gpu: await testGpu({ maxBindingBytes: 1 << 20 }) }),
    (e: Error) => e instanceof GpuOutOfMemoryError && /at most 2048/.test(e.message),
  );
});

test('webgpu engine: sequences in KV cache slots of different buffers (one slot a buffer) keep to their own keys, on the forward pass and the fused decode, f32 and f16 caches', { skip: SKIP_GPU }, async () => {
  const dir = ARCH_MODELS[0]!;
  const model = await loadModel(dir);
  const ids = Array.from((await readReference(dir)).inputIds.subarray(0, 30));
  const prompts = [ids.slice(0, 11), ids.slice(5, 25), ids.slice(2, 9)];
  // f32 prefill tiles: the comparisons with the CPU run on its arithmetic (f16 subgroup matrices where the device has them)
  const gpu = await testGpu({ subgroupMatrix: false });
  // the CPU's logits after each prompt, and its greedy continuation of 6 tokens
  const want: { logits: Float32Array; greedy: number[] }[] = [];
  for (const p of prompts) {
    const cpu = new CpuEngine(model.config, model.weights, 64);
    const s = cpu.createSequence();
    const logits = Float32Array.from(await cpu.forward(s, p));
    const greedy: number[] = [];
    let l: Float32Array = logits;
    for (let i = 0; i < 6; i++) {
      greedy.push(l.indexOf(Math.max(...l)));
      l = await cpu.forward(s, [greedy.at(-1)!]);
    }
    want.push({ logits, greedy });
  }
  for (const kvCache of ['f32', 'f16'] as const) {
    // the f32 run takes the tiled prompt attention (off by default on lavapipe, which compiles it slowly)
    const engine = await WebGpuEngine.create(model, { kvCache, kvSlotsPerBuffer: 1, contextLength: 64, prefillChunk: 8, gpu, tiledAttention: kvCache === 'f32', matvecActivations: 'f32' });
    try {
      assert.equal(engine.decode, 'fused');
      const seqs = prompts.map(() => engine.createSequence());
      // interleaved: each prompt's chunks go through the forward pass, each sequence in its own buffer
      for (let i = 0; i < 3; i++) assertClose(await engine.forward(seqs[i]!, prompts[i]!), want[i]!.logits, kvCache === 'f32' ? 1e-4 : 2e-2, `${kvCache} forward logits of prompt ${i}`);
      assert.equal(engine.kv.groups.length, 3);
      // then the fused decoder continues each sequence from its slot
      const got = await Promise.all(seqs.map((s, i) => engine.decodeOnDevice!(s, [want[i]!.greedy[0]!], { maxTokens: 5, sampling: { temperature: 0, topK: 0, topP: 1, minP: 0 }, random: Math.random, onToken: () => false })));
      if (kvCache === 'f32') got.forEach((g, i) => assert.deepEqual(g, want[i]!.greedy.slice(1), `f32 greedy continuation of prompt ${i}`));
      else got.forEach((g, i) => assert.equal(g.length, 5, `f16 continuation of prompt ${i}`));
      // a disposed sequence's slot is taken by the next sequence, no new buffer
      seqs[1]!.dispose();
      const again = engine.createSequence();
      assertClose(await engine.forward(again, prompts[1]!), want[1]!.logits, kvCache === 'f32' ? 1e-4 : 2e-2, `${kvCache} forward logits in a reused slot`);
      assert.equal(engine.kv.groups.length, 3);
    } finally {
      engine.dispose();
    }
  }
});

test('webgpu engine: step() runs rows of different sequences (prompt chunks and decode rows, slots in different buffers) in one pass, each row as it runs alone and near the CPU', { skip: SKIP_GPU }, async () => {
  const dir = ARCH_MODELS[0]!;
  const model = await loadModel(dir);
  const ids = Array.from((await readReference(dir)).inputIds.subarray(0, 30));
  const gpu = await testGpu({ subgroupMatrix: false }); // f32 prefill tiles (the CPU's arithmetic)
  const engine = await WebGpuEngine.create(model, { kvCache: 'f32', kvSlotsPerBuffer: 2, batchedStep: true, contextLength: 64, prefillChunk: 16, gpu });
  const cpu = new CpuEngine(model.config, model.weights, 64);
  try {
    const prompts = [ids.slice(0, 9), ids.slice(3, 23), ids.slice(10, 13)];
    // alone: each sequence's prompt, then two decode tokens, one step call each
    const alone: Float32Array[][] = [];
    for (const p of prompts) {
      const s = engine.createSequence();
      const got = [Float32Array.from((await engine.step!([{ seq: s, tokens: p, logits: true }]))[0] as Float32Array)];
      for (const id of [5, 7]) got.push(Float32Array.from((await engine.step!([{ seq: s, tokens: [id], logits: true }]))[0] as Float32Array));
      alone.push(got);
      s.dispose();
    }
    // together: the three prompts in one step (20 tokens: a second pass for the last ones), then decode rows together
    const seqs = prompts.map(() => engine.createSequence());
    let out = await engine.step!(prompts.map((p, i) => ({ seq: seqs[i]!, tokens: p, logits: true })));
    out.forEach((l, i) => assert.deepEqual(Array.from(l as Float32Array), Array.from(alone[i]![0]!), `prompt ${i} batched vs alone`));
    for (const [k, id] of [5, 7].entries()) {
      out = await engine.step!(seqs.map((seq) => ({ seq, tokens: [id], logits: true })));
      out.forEach((l, i) => assert.deepEqual(Array.from(l as Float32Array), Array.from(alone[i]![k + 1]!), `decode row ${i} step ${k} batched vs alone`));
    }
    assert.ok(engine.kv.groups.length >= 2, 'the slots span buffers');
    // and the CPU's logits
    for (const [i, p] of prompts.entries()) {
      const s = cpu.createSequence();
      assertClose(alone[i]![0]!, await cpu.forward(s, p), 1e-4, `prompt ${i} vs the CPU`);
      assertClose(alone[i]![1]!, await cpu.forward(s, [5]), 1e-4, `decode ${i} vs the CPU`);
    }
  } finally {
    engine.dispose();
  }
});
