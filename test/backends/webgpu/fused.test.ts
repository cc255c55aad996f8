/**
 * The fused decode path against the unfused one over the same weights (and against the references):
 * logits within 1e-5 relative after every prompt token, identical greedy continuations, and a stop
 * mid-stream (pipelined, ids read back 4 steps behind) returning exactly the unfused tokens. On every
 * fixture model as stored, and on brown-llama and one architecture fixture compressed to q4 g32, to
 * q8 and to a 50% magnitude-pruned bitmap with 4-bit values (also against the CPU engine on those
 * tensors; the bitmap both expanded to q4, the default, and walked), and phi3 in each of those through
 * the kernels without subgroups. Plus the q8 matvec alone at column counts that leave a partial
 * 16-column unit, over every int8 value (-128 included).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { basename } from 'node:path';
import { FusedDecoder, type DecodePath, type FusedDecoderOptions } from '../../../src/backends/webgpu/fused/decoder.js';
import { attentionSplits } from '../../../src/backends/webgpu/kernels/fused-attention.js';
import { destroyFusedWeights, uploadFusedMatrix, uploadFusedWeights, type FusedUploadOptions } from '../../../src/backends/webgpu/fused/weights.js';
import { fusedBlocks, fusedMatvecBindings, fusedMatvecWgsl, type FusedMatvecShape } from '../../../src/backends/webgpu/kernels/fused-matvec.js';
import { rmsnorm } from '../../../src/backends/cpu/ops.js';
import { BitmapTensor, Q4Tensor, Q8Tensor } from '../../../src/format/upg/encodings/index.js';
import { pruneUnstructured, pruningScores } from '../../../src/compress/prune.js';
import { CpuEngine } from '../../../src/backends/cpu/engine.js';
import { WebGpuEngine } from '../../../src/backends/webgpu/engine.js';
import { loadModel, type LoadedModel } from '../../../src/model/load.js';
import { DenseTensor, type WeightTensor } from '../../../src/model/tensor.js';
import type { ModelWeights } from '../../../src/model/weights.js';
import { ALL_FIXTURE_MODELS, ARCH_MODELS, BROWN, assertClose, compare, readReference, rng } from '../../helpers.js';
import { SKIP_GPU, featureVariants, read, run, storage, testGpu, zeros } from './gpu.js';
import type { GpuOptions } from '../../../src/backends/webgpu/device.js';

type Pack = (t: WeightTensor) => WeightTensor;

function dense(t: WeightTensor): Float32Array {
  if (t instanceof DenseTensor) return t.data;
  const out = new Float32Array(t.rows * t.cols);
  for (let r = 0; r < t.rows; r++) t.readRow(r, out.subarray(r * t.cols, (r + 1) * t.cols));
  return out;
}
const q4: Pack = (t) => Q4Tensor.pack(t.rows, t.cols, dense(t), 32);
const q8: Pack = (t) => Q8Tensor.pack(t.rows, t.cols, dense(t));
const bitmap4: Pack = (t) => {
  const w = dense(t);
  const pruned = pruneUnstructured(w, pruningScores(w, t.rows, t.cols, null), t.rows, t.cols, 0.5);
  return BitmapTensor.pack(t.rows, t.cols, pruned, 32, 4);
};

/** The model with every layer matrix and lm_head packed (embedding left dense, as compress does). */
function compressed(m: ModelWeights, pack: Pack): ModelWeights {
  return {
    ...m,
    lmHead: pack(m.lmHead),
    layers: m.layers.map((L) => ({ ...L, qkv: L.qkv.map(pack), gateUp: L.gateUp.map(pack), o: pack(L.o), down: pack(L.down) })),
  };
}

/** The KV cache of the comparisons with the CPU and transformers: f32 (the f16 cache is checked by tolerance below). */
const F32_KV = { kvCache: 'f32' } as const;

async function decoders(model: LoadedModel, weights: ModelWeights, contextLength: number, options: GpuOptions = {}, upload: FusedUploadOptions = {}, kv: Pick<FusedDecoderOptions, 'kvCache' | 'kvPacked'> = F32_KV) {
  const gpu = await testGpu(options);
  const w = uploadFusedWeights(gpu, weights, upload);
  // the unfused plan runs the one-workgroup-a-head attention, so the split attention is checked too
  // f32 activations: the token-for-token comparisons run on the CPU's numerics (int8: fused-nll.test)
  const make = (path: DecodePath) => new FusedDecoder(gpu, model.config, w, { path, contextLength, workgroups: 64, attention: path === 'fused' ? 'split' : 'single', matvecActivations: 'f32', ...kv });
  const fused = make('fused'), unfused = make('unfused');
  return {
    fused, unfused,
    dispose: () => {
      fused.dispose();
      unfused.dispose();
      destroyFusedWeights(w);
    },
  };
}

async function checkPaths(name: string, model: LoadedModel, weights: ModelWeights, refLogits: Float32Array | null, prompts: number[][], options: GpuOptions = {}, upload: FusedUploadOptions = {}): Promise<void> {
  const { fused, unfused, dispose } = await decoders(model, weights, 160, options, upload);
  try {
    // qkv, attention part and combine (one kernel where the window holds at most 64 keys), o, gate/up, down
    const c = model.config;
    const splits = attentionSplits({ numHeads: c.numHeads, numKvHeads: c.numKvHeads, headDim: c.headDim, slidingWindow: c.slidingWindow, contextLength: 160 });
    assert.equal(fused.dispatchesPerLayer, splits > 1 ? 6 : 5);
    assert.equal(unfused.dispatchesPerLayer, 9);
    // logits after each of the first prompt's tokens, fed one step at a time
    const ids = prompts[0]!;
    for (let i = 0; i < ids.length; i++) {
      const a = await fused.forwardLogits([ids[i]!]);
      const b = await unfused.forwardLogits([ids[i]!]);
      assertClose(a, b, 1e-5, `${name}: fused vs unfused logits after token ${i}`);
      if (refLogits) assertClose(a, refLogits.subarray(i * a.length, (i + 1) * a.length), 1e-4, `${name}: fused logits vs the reference after token ${i}`);
    }
    for (const prompt of prompts) {
      fused.reset();
      unfused.reset();
      const want = await unfused.generate(prompt, { maxTokens: 12, lag: 1 });
      const got = await fused.generate(prompt, { maxTokens: 12, lag: 4 });
      assert.deepEqual(got, want, `${name}: greedy continuation of [${prompt}]`);
      // stop at the 5th token: the fused path has computed up to 3 more, which must be discarded
      fused.reset();
      unfused.reset();
      const stopAt = (_id: number, n: number) => n === 4;
      const a = await fused.generate(prompt, { maxTokens: 12, lag: 4, onToken: stopAt });
      const b = await unfused.generate(prompt, { maxTokens: 12, lag: 1, onToken: stopAt });
      assert.deepEqual(a, b, `${name}: stopped continuation of [${prompt}]`);
      assert.deepEqual(a, want.slice(0, 5));
      assert.equal(fused.length, prompt.length + 4);
      // and decoding resumes from there as if nothing past the stop was computed
      const more = await fused.generate([a.at(-1)!], { maxTokens: 3, lag: 4 });
      assert.deepEqual(more, want.slice(5, 8), `${name}: continuation after a stop`);
    }
  } finally {
    dispose();
  }
}

for (const dir of ALL_FIXTURE_MODELS) {
  test(`fused decode: ${basename(dir)} matches the unfused path and transformers`, { skip: SKIP_GPU }, async () => {
    const model = await loadModel(dir);
    const ref = await readReference(dir);
    // reference logits row i follows input ids 0..i; the first 24 are compared
    const ids = [...ref.inputIds.slice(0, 24)];
    await checkPaths(basename(dir), model, model.weights, ref.logits, [ids, ...ref.prompts.map((p) => p.prompt)]);
    // the greedy continuations transformers produced
    const { fused, dispose } = await decoders(model, model.weights, 160);
    try {
      for (const { prompt, greedy } of ref.prompts) {
        fused.reset();
        assert.deepEqual(await fused.generate(prompt, { maxTokens: greedy.length }), greedy, `${basename(dir)} greedy vs transformers`);
      }
    } finally {
      dispose();
    }
  });
}

test('fused decode: the f16 KV cache (native where the device has shader-f16, and packed in u32) keeps the fused and unfused paths together and near the f32 cache', { skip: SKIP_GPU }, async () => {
  // qwen2 (biases) and phi3 (partial rotary, fused qkv): the f16 K rows hold RoPE pairs
  for (const dir of [ARCH_MODELS[2]!, ARCH_MODELS[3]!]) {
    const model = await loadModel(dir);
    const ref = await readReference(dir);
    const ids = [...ref.inputIds.slice(0, 16)];
    const f32 = await decoders(model, model.weights, 160);
    const want: Float32Array[] = [];
    try {
      for (const id of ids) want.push(await f32.fused.forwardLogits([id]));
    } finally {
      f32.dispose();
    }
    const gpu = await testGpu();
    for (const packed of gpu.features.shaderF16 ? [false, true] : [true]) {
      const { fused, unfused, dispose } = await decoders(model, model.weights, 160, {}, {}, { kvCache: 'f16', kvPacked: packed });
      try {
        for (let i = 0; i < ids.length; i++) {
          const a = await fused.forwardLogits([ids[i]!]);
          const b = await unfused.forwardLogits([ids[i]!]);
          const what = `${basename(dir)} f16 KV cache (${packed ? 'packed' : 'native'}) after token ${i}`;
          // the same f16 keys and values on both paths (one f16 step where the two k sums round apart)
          assertClose(a, b, 1e-3, `${what}: fused vs unfused`);
          // f16 keys and values against f32 ones: 2^-11 relative rounding of each
          assertClose(a, want[i]!, 2e-2, `${what}: vs the f32 cache`);
        }
      } finally {
        dispose();
      }
    }
  }
});

// bitmaps run expanded to q4 (the default) and walked by the bitmap kernel
const packs: [string, Pack, FusedUploadOptions][] = [['q4 g32', q4, {}], ['q8', q8, {}], ['bitmap 50% 4-bit', bitmap4, {}], ['bitmap 50% 4-bit, walked', bitmap4, { bitmap: 'walk' }]];
for (const [encoding, pack, upload] of packs) {
  for (const dir of [BROWN, ARCH_MODELS[2]!]) {
    test(`fused decode: ${basename(dir)} as ${encoding} matches the unfused path`, { skip: SKIP_GPU }, async () => {
      const model = await loadModel(dir);
      const ref = await readReference(dir);
      const weights = compressed(model.weights, pack);
      const ids = [...ref.inputIds.slice(0, 12)];
      // the reference: the CPU engine over the same encoded tensors (each encoding's own matmul)
      const cpu = new CpuEngine(model.config, weights, 64);
      const cpuLogits = await cpu.forward(cpu.createSequence(), ids, true);
      await checkPaths(`${basename(dir)} ${encoding}`, model, weights, cpuLogits, [ids, ...ref.prompts.slice(0, 1).map((p) => p.prompt)], {}, upload);
    });
  }
}

test('fused decode: the kernels without subgroups (phi3 as q4 g32, q8 and bitmap) match the CPU engine', { skip: SKIP_GPU }, async () => {
  const dir = ARCH_MODELS[2]!;
  const model = await loadModel(dir);
  const ref = await readReference(dir);
  const ids = [...ref.inputIds.slice(0, 8)];
  for (const [pack, upload] of [[q4, {}], [q8, {}], [bitmap4, {}], [bitmap4, { bitmap: 'walk' }]] as [Pack, FusedUploadOptions][]) {
    const weights = compressed(model.weights, pack);
    const cpu = new CpuEngine(model.config, weights, 64);
    const cpuLogits = await cpu.forward(cpu.createSequence(), ids, true);
    await checkPaths(`${basename(dir)} without subgroups`, model, weights, cpuLogits, [ids], { disableSubgroups: true }, upload);
  }
});

test('fused matvec: q8 with a partial last unit, every int8 value, both inputs and kernel variants, matches Q8Tensor.matmul', { skip: SKIP_GPU }, async () => {
  for (const { name, options } of await featureVariants()) {
    const gpu = await testGpu(options);
    const f = { subgroups: gpu.subgroups };
    for (const [rows, cols] of [[37, 100], [70, 388]] as const) {
      const next = rng(rows * 1000 + cols);
      // raw int8 over the whole byte range (pack stops at -127), padding columns zero as the format has them
      const t0 = Q8Tensor.pack(rows, cols, new Float32Array(rows * cols));
      const qweight = new Int8Array(t0.qweight.length);
      for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) qweight[r * t0.stride + c] = Math.floor(next() * 256) - 128;
      const t = new Q8Tensor(rows, cols, qweight, Float32Array.from({ length: rows }, () => 0.001 + 0.01 * next()));
      const m = uploadFusedMatrix(gpu, [t], 'q8 test');
      const x = Float32Array.from({ length: cols }, () => next() * 2 - 1);
      const nw = Float32Array.from({ length: cols }, () => 0.5 + next());
      const bias = Float32Array.from({ length: rows }, () => next() - 0.5);
      for (const input of ['global', 'norm'] as const) {
        // the CPU reference: rmsnorm first for 'norm', then the encoding's own product and the bias
        const xin = new Float32Array(cols);
        if (input === 'norm') rmsnorm(x, nw, 1e-5, 1, xin);
        else xin.set(x);
        const want = new Float32Array(rows);
        t.matmul(xin, 1, want, rows, 0);
        for (let r = 0; r < rows; r++) want[r] = want[r]! + bias[r]!;
        const shape: FusedMatvecShape = {
          encoding: 'q8', rows, cols, units: m.units, group: 0, input, epilogue: 'store', bias: true, eps: 1e-5,
          numHeads: 0, numKvHeads: 0, headDim: 0, rotaryDim: 0, workgroups: 0,
        };
        shape.workgroups = Math.min(3, fusedBlocks(shape));
        const xPadded = new Float32Array(input === 'global' ? m.units * 16 : cols);
        xPadded.set(x);
        const io: Record<string, GPUBuffer> = { ...m.buffers, X: storage(gpu, xPadded), NW: storage(gpu, nw), Y: zeros(gpu, rows), BIAS: storage(gpu, bias) };
        const pipeline = gpu.pipeline('fused_matvec_test', { ...shape, ...f }, () => fusedMatvecWgsl(shape, f));
        const bindGroup = gpu.bindGroup('fused_matvec_test', pipeline, fusedMatvecBindings(shape).map((n) => io[n]!));
        await run(gpu, [{ label: 'q8 matvec', pipeline, bindGroup, workgroups: () => [shape.workgroups, 1, 1] }], 1);
        assertClose(await read(gpu, io.Y!, rows), want, 1e-5, `q8 [${rows}, ${cols}] ${input} (${name})`);
        for (const b of [io.X!, io.NW!, io.Y!, io.BIAS!]) b.destroy();
      }
      for (const b of Object.values(m.buffers)) b.destroy();
    }
  }
});

test('fused decode: tensors larger than a storage binding are split by rows (embedding, lm_head) and match the CPU engine', { skip: SKIP_GPU }, async () => {
  const model = await loadModel(BROWN);
  const ref = await readReference(BROWN);
  const ids = [...ref.inputIds.slice(0, 8)];
  // binding limits under which the 4096 x 384 embedding (bf16, 3.1 MB) and lm_head split, the layer matrices not
  const cases: [string, Pack | null, number][] = [['bf16', null, 2 << 20], ['q4 g32', q4, 512 << 10], ['q8', q8, 1 << 20]];
  for (const [name, pack, maxBindingBytes] of cases) {
    const weights = pack ? { ...model.weights, lmHead: pack(model.weights.lmHead), layers: model.weights.layers.map((L) => ({ ...L, qkv: L.qkv.map(pack), gateUp: L.gateUp.map(pack), o: pack(L.o), down: pack(L.down) })) } : model.weights;
    const gpu = await testGpu({ maxBindingBytes });
    const w = uploadFusedWeights(gpu, weights);
    try {
      assert.ok((w.embed.rowBlocks?.length ?? 1) > 1 && (w.lmHead.rowBlocks?.length ?? 1) > 1, `${name}: embedding and lm_head split (${w.embed.rowBlocks?.length}, ${w.lmHead.rowBlocks?.length} blocks)`);
      for (const b of [w.embed, w.lmHead].flatMap((m) => m.rowBlocks!.flatMap((r) => Object.values(r.matrix.buffers)))) assert.ok(b.size <= maxBindingBytes);
    } finally {
      destroyFusedWeights(w);
    }
    const cpu = new CpuEngine(model.config, weights, 64);
    const cpuLogits = await cpu.forward(cpu.createSequence(), ids, true);
    await checkPaths(`${basename(BROWN)} ${name}, bindings of ${maxBindingBytes} bytes`, model, weights, cpuLogits, [ids], { maxBindingBytes });
    // the forward pass (prefill) reads the same row blocks: the engine's logits of every position against the CPU's
    const engine = await WebGpuEngine.create({ ...model, weights }, { contextLength: 64, gpu: await testGpu({ maxBindingBytes }) });
    try {
      assert.equal(engine.decode, 'fused', engine.decodeNotice);
      assertClose(await engine.forward(engine.createSequence(), ids, true), cpuLogits, 1e-4, `${name}: engine forward logits over split bindings vs the CPU`);
    } finally {
      engine.dispose();
    }
  }
});

test("fused decode: lm_head's argmax partials (argmax: 'fused') choose the argmax dispatch's tokens, ties included", { skip: SKIP_GPU }, async () => {
  // the llama fixture (2 MB: it travels to the device with the test)
  const model = await loadModel(ARCH_MODELS[0]!);
  const ref = await readReference(ARCH_MODELS[0]!);
  const gpu = await testGpu();
  // a second lm_head whose rows repeat every 7: every logit ties with others in other workgroups,
  // and the lowest row must win as in the dispatch
  const head = dense(model.weights.lmHead), cols = model.weights.lmHead.cols;
  const tied = new Float32Array(head.length);
  for (let r = 0; r < model.weights.lmHead.rows; r++) tied.set(head.subarray((r % 7) * cols, (r % 7 + 1) * cols), r * cols);
  const heads: [string, WeightTensor][] = [['as stored', model.weights.lmHead], ['rows tied', new DenseTensor(model.weights.lmHead.rows, cols, tied)]];
  for (const [headName, lmHead] of heads) {
    for (const [packName, pack] of [['dense', null], ['q4', q4]] as const) {
      const weights = pack ? compressed({ ...model.weights, lmHead }, pack) : { ...model.weights, lmHead };
      const w = uploadFusedWeights(gpu, weights);
      for (const activations of ['f32', 'int8'] as const) {
        const name = `${headName}, ${packName}, ${activations} x`;
        const make = (argmax: 'fused' | 'dispatch') => new FusedDecoder(gpu, model.config, w, { path: 'fused', contextLength: 96, workgroups: 64, matvecActivations: activations, argmax });
        const fused = make('fused'), dispatch = make('dispatch');
        try {
          if (gpu.subgroups) assert.equal(fused.dispatchesPerToken, dispatch.dispatchesPerToken - 1, `${name}: no argmax dispatch`);
          for (const { prompt } of ref.prompts) {
            fused.reset();
            dispatch.reset();
            const want = await dispatch.generate(prompt, { maxTokens: 12, lag: 1 });
            if (headName === 'rows tied') assert.ok(want.every((id) => id < 7), `${name}: tied rows choose the lowest`);
            assert.deepEqual(await fused.generate(prompt, { maxTokens: 12, lag: 4 }), want, `${name}: greedy continuation of [${prompt}]`);
            // stopped mid-stream and resumed: the partials of steps past the stop are not used
            fused.reset();
            const a = await fused.generate(prompt, { maxTokens: 12, lag: 4, onToken: (_id, n) => n === 4 });
            assert.deepEqual(a, want.slice(0, 5), `${name}: stopped continuation`);
            assert.deepEqual(await fused.generate([a.at(-1)!], { maxTokens: 3, lag: 4 }), want.slice(5, 8), `${name}: continuation after a stop`);
          }
        } finally {
          fused.dispose();
          dispatch.dispose();
        }
      }
      destroyFusedWeights(w);
    }
  }
});

test("fused decode: the int8 kernels' one-round grid (globalGrid) gives the default grid's logits; f16 act moves them no more than int8 x does", { skip: SKIP_GPU }, async () => {
  const model = await loadModel(ARCH_MODELS[0]!);
  const ref = await readReference(ARCH_MODELS[0]!);
  const gpu = await testGpu();
  if (!gpu.subgroups) return; // the int8 kernels run on subgroup workers only
  const w = uploadFusedWeights(gpu, compressed(model.weights, q4));
  const make = (o: Pick<FusedDecoderOptions, 'globalGrid' | 'act' | 'matvecActivations'>) => new FusedDecoder(gpu, model.config, w, { path: 'fused', contextLength: 64, matvecActivations: 'int8', ...o });
  const exact = make({ matvecActivations: 'f32' }), base = make({}), grid = make({ globalGrid: 'one-round' }), half = make({ act: 'f16' });
  try {
    const ids = [...ref.inputIds.slice(0, 12)];
    for (let i = 0; i < ids.length; i++) {
      const f32 = await exact.forwardLogits([ids[i]!]);
      const want = await base.forwardLogits([ids[i]!]);
      // the same sums on fewer workgroups: each row is still one worker's
      assertClose(await grid.forwardLogits([ids[i]!]), want, 0, `one-round grid vs the default after token ${i}`);
      // SwiGLU's output rounded to f16 before down_proj's int8 blocks: on this small random model int8 x
      // alone moves the logits by 7-16% (relative to the largest), f16 act then by 3-6% more or less
      const int8Moved = compare(want, f32).rel, halfMoved = compare(await half.forwardLogits([ids[i]!]), f32).rel;
      assert.ok(halfMoved <= 1.5 * int8Moved + 1e-3, `f16 act moved the logits by ${halfMoved} against int8 x's ${int8Moved} after token ${i}`);
    }
  } finally {
    for (const d of [exact, base, grid, half]) d.dispose();
    destroyFusedWeights(w);
  }
});

test('profiles (--profile): the fused decoder and the batched step time every dispatch of a layer, and decoding goes on as before', { skip: SKIP_GPU }, async () => {
  const model = await loadModel(ARCH_MODELS[0]!);
  const ref = await readReference(ARCH_MODELS[0]!);
  const gpu = await testGpu();
  const prompt = ref.prompts[0]!.prompt;
  const w = uploadFusedWeights(gpu, model.weights);
  const fused = new FusedDecoder(gpu, model.config, w, { path: 'fused', contextLength: 64, workgroups: 64, matvecActivations: 'f32' });
  try {
    const want = await fused.generate(prompt, { maxTokens: 6 });
    const rows = await fused.profile(2);
    console.log(`fused: ${rows.map((r) => `${r.label} ${r.microseconds.toFixed(0)} us`).join(', ')}`);
    assert.ok(rows.length >= fused.dispatchesPerToken / model.config.numLayers && rows.every((r) => r.microseconds > 0), rows.map((r) => r.label).join(', '));
    fused.reset();
    assert.deepEqual(await fused.generate(prompt, { maxTokens: 6 }), want, 'greedy continuation after profiling');
  } finally {
    fused.dispose();
    destroyFusedWeights(w);
  }
  const engine = await WebGpuEngine.create(model, { contextLength: 64, gpu, batchedStep: true, kvCache: 'f32', matvecActivations: 'f32' });
  try {
    const seqs = [engine.createSequence(), engine.createSequence()];
    for (const seq of seqs) await engine.forward(seq, prompt);
    const rows = await engine.profileDecodeRows(seqs, 2);
    console.log(`batched step: ${rows.map((r) => `${r.label} ${r.microseconds.toFixed(0)} us`).join(', ')}`);
    const labels = rows.map((r) => r.label);
    assert.ok(labels.some((l) => l.includes('attention')) && labels.length > 6 && rows.every((r) => r.microseconds > 0), labels.join(', '));
    // the sequences still continue as the CPU engine does (profiling wrote only their next position)
    const cpu = new CpuEngine(model.config, model.weights, 64);
    const cseq = cpu.createSequence();
    await cpu.forward(cseq, prompt);
    assertClose(await engine.forward(seqs[0]!, [prompt[0]!]), await cpu.forward(cseq, [prompt[0]!]), 1e-4, 'logits after profiling');
  } finally {
    engine.dispose();
  }
});
