/**
 * Prefill through the matrix-matrix kernels (kernels/matmul-tiled.ts) against the CPU engine on every
 * architecture fixture, with a prompt of several hundred tokens (the fixtures' context allows 256; the
 * brown-llama one 1,024): the logits of the prompt's last token within 1e-4 relative, prefilled in one
 * step and in steps of 100 (partial tiles), and the greedy continuation through `generate` (the fused
 * decoder's cache prefilled by these kernels) token for token.
 * On the f32 path: a device without subgroup matrices asked for, an f32 KV cache and f32 activations in
 * the fused matvecs (the f16 tensor-core products, the f16 KV cache and int8 activations have their
 * own tolerances: matmul-tiled.test.ts, the KV-cache and fused-nll tests, the perplexity checks).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { basename } from 'node:path';
import { CpuEngine } from '../../../src/backends/cpu/engine.js';
import { WebGpuEngine } from '../../../src/backends/webgpu/engine.js';
import { loadModel } from '../../../src/model/load.js';
import { generate, type GenerationResult } from '../../../src/runtime/generate.js';
import type { Engine } from '../../../src/runtime/engine.js';
import { ALL_FIXTURE_MODELS, assertClose, BROWN, compare, rng } from '../../helpers.js';
import { SKIP_GPU, testGpu } from './gpu.js';

async function greedy(engine: Engine, prompt: number[], maxTokens: number): Promise<number[]> {
  const it = generate({ engine, tokenizer: null, eosTokenIds: [] }, engine.createSequence(), prompt, { maxTokens, temperature: 0, ignoreEos: true });
  let r = await it.next();
  while (!r.done) r = await it.next();
  return (r.value as GenerationResult).tokenIds;
}

for (const dir of ALL_FIXTURE_MODELS) {
  // (the device machine's copy of the fixtures may leave out brown-llama: bench/prefill-device.sh)
  test(`webgpu prefill: ${basename(dir)}, a long prompt, logits and greedy continuation vs the CPU engine`, { skip: SKIP_GPU || (!existsSync(dir) && `${dir} is not here`) }, async () => {
    const gpu = await testGpu({ subgroupMatrix: false });
    assert.equal(gpu.features.subgroupMatrixF16, false);
    const model = await loadModel(dir);
    const c = model.config;
    const context = dir === BROWN ? 512 : Math.min(256, c.maxPositionEmbeddings);
    const generated = 12;
    const r = rng(7);
    const prompt = Array.from({ length: context - generated - 4 }, () => Math.floor(r() * c.vocabSize));
    const cpu = new CpuEngine(c, model.weights, context);
    const want = Float32Array.from(await cpu.forward(cpu.createSequence(), prompt));
    const wantTokens = await greedy(cpu, prompt, generated);
    // brown-llama in one step only (lavapipe's time); the small fixtures also in steps of 100
    for (const prefillChunk of dir === BROWN ? [undefined] : [undefined, 100]) {
      // the f32 arithmetic throughout: f32 KV cache and f32 activations in the fused decode's matvecs
      const engine = await WebGpuEngine.create(model, { contextLength: context, prefillChunk, gpu, kvCache: 'f32', matvecActivations: 'f32' });
      try {
        const what = `${basename(dir)}, ${prompt.length}-token prompt, ${engine.prefillChunk} tokens a step`;
        const got = await engine.forward(engine.createSequence(), prompt);
        const d = compare(got, want);
        console.log(`${what}: last logits relative difference ${d.rel.toExponential(2)} (worst element ${d.worst.toExponential(2)})`);
        assertClose(got, want, 1e-4, `${what}: last logits`);
        assert.deepEqual(await greedy(engine, prompt, generated), wantTokens, `${what}: greedy continuation`);
      } finally {
        engine.dispose();
      }
    }
  });
}

test('webgpu prefill profile: every dispatch of a layer step timed, then the sequence is empty', { skip: SKIP_GPU }, async () => {
  const model = await loadModel(ALL_FIXTURE_MODELS[1]!);
  const engine = await WebGpuEngine.create(model, { contextLength: 64, gpu: await testGpu({ subgroupMatrix: false }), kvCache: 'f32', matvecActivations: 'f32' });
  try {
    const seq = engine.createSequence();
    const rows = await engine.profilePrefill(seq, 9, 1);
    console.log(rows.map((r) => `${r.label} ${r.microseconds.toFixed(0)} us`).join(', '));
    const labels = rows.map((r) => r.label);
    assert.ok(labels.includes('attention') && labels.includes('rope_kv') && labels.some((l) => l.startsWith('matmul_tiled_')), labels.join(', '));
    assert.ok(rows.every((r) => r.microseconds > 0));
    assert.equal(seq.length, 0);
    // a step at later positions (bench --profile's last step of a prompt), and none past the context
    const late = await engine.profilePrefill(seq, 9, 1, 50);
    assert.deepEqual(late.map((r) => r.label), labels);
    await assert.rejects(engine.profilePrefill(seq, 9, 1, 56), /profile: positions 56\.\.64 pass the context \(64\)/);
    assert.equal(seq.length, 0);
    // the sequence still prefills as the CPU engine does afterwards
    const prompt = [1, 5, 9, 2, 7];
    const cpu = new CpuEngine(model.config, model.weights, 64);
    assertClose(await engine.forward(seq, prompt), await cpu.forward(cpu.createSequence(), prompt), 1e-4, 'logits after profiling');
  } finally {
    engine.dispose();
  }
});
