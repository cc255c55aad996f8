/**
 * The kernels under WebGPU's default limits (a device asked for no limits: 256 invocations a
 * workgroup, 16 KiB of workgroup memory, 8 storage buffers a stage), as a browser or a page sharing
 * its device may give, while lavapipe's adapter offers more (1024, 32 KiB, 16). The fused and the
 * unfused decode paths each generate greedily, token for token the CPU backend's ids, with no GPU
 * error and without the fused path falling back: on the demo model (q4), brown-llama in bf16, and the
 * architecture fixtures with a QKV bias (qwen2) and fused QKV and gate/up (phi3). Where a fused
 * kernel needs more than the defaults (norm + QKV + RoPE + KV append binds 9 to 11 storage buffers)
 * the decoder runs its parts as separate dispatches.
 * On the f32 options (matvecActivations: 'f32', kvCache: 'f32'), so that every sum is float32 on both
 * sides; the faster defaults (int8 activations, f16 KV cache) are run once, to run without error.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { basename, join } from 'node:path';
import { CpuEngine } from '../../../src/backends/cpu/engine.js';
import { WebGpuEngine } from '../../../src/backends/webgpu/engine.js';
import { loadModel } from '../../../src/model/load.js';
import { generateAll, type GenerationContext } from '../../../src/runtime/generate.js';
import type { Engine } from '../../../src/runtime/engine.js';
import { ARCH_MODELS, BROWN, readReference, ROOT } from '../../helpers.js';
import { SKIP_GPU, testGpu } from './gpu.js';

const CONTEXT = 64;
const DEMO = join(ROOT, 'models', 'brown-llama-12m.upg');
const MODELS = [DEMO, BROWN, ...ARCH_MODELS.filter((m) => /qwen2|phi3/.test(m))];

test('webgpu default limits: the device has WebGPU\'s defaults although the adapter offers more', { skip: SKIP_GPU }, async () => {
  const gpu = await testGpu({ limits: 'default' });
  const l = gpu.device.limits;
  assert.equal(l.maxComputeInvocationsPerWorkgroup, 256);
  assert.equal(l.maxComputeWorkgroupStorageSize, 16384);
  assert.equal(l.maxStorageBuffersPerShaderStage, 8);
  assert.equal(l.maxStorageBufferBindingSize, 134217728);
});

for (const dir of MODELS) {
  test(`webgpu default limits: ${basename(dir)} fused and unfused greedy ids equal the CPU backend's`, { skip: SKIP_GPU }, async () => {
    const model = await loadModel(dir);
    const prompt = model.tokenizer ? model.tokenizer.encode('The jury said that', true) : (await readReference(dir)).prompts[0]!.prompt;
    const greedy = { temperature: 0, maxTokens: 16, ignoreEos: true };
    const ctx = (engine: Engine): GenerationContext => ({ engine, tokenizer: model.tokenizer, eosTokenIds: model.config.eosTokenIds });
    const cpu = new CpuEngine(model.config, model.weights, CONTEXT);
    const want = (await generateAll(ctx(cpu), cpu.createSequence(), prompt, greedy)).tokenIds;
    const gpu = await testGpu({ limits: 'default' });
    for (const decode of ['fused', 'unfused'] as const) {
      // f32 activations: token for token against the CPU runs on the CPU's numerics (int8 x: fused-nll.test)
      const engine = await WebGpuEngine.create(model, { contextLength: CONTEXT, gpu, decode, prefillChunk: 8, matvecActivations: 'f32', kvCache: 'f32' });
      try {
        assert.equal(engine.decode, decode, `${decode}: ${engine.decodeNotice}`);
        assert.equal(engine.decodeNotice, undefined);
        const got = (await generateAll(ctx(engine), engine.createSequence(), prompt, greedy)).tokenIds;
        gpu.check();
        const at = got.findIndex((id, i) => id !== want[i]);
        console.log(`${basename(dir)} ${decode}: ${got.length} ids, first difference from the CPU at ${at}`);
        assert.deepEqual(got, want, `${basename(dir)} ${decode}: first difference at token ${at}: [${got}] vs the CPU's [${want}]`);
      } finally {
        engine.dispose();
      }
    }
  });
}

test('webgpu default limits: the demo model decodes fused on its defaults (int8 activations, f16 KV cache), with no GPU error and no fallback', { skip: SKIP_GPU }, async () => {
  const model = await loadModel(DEMO);
  const prompt = model.tokenizer!.encode('The jury said that', true);
  const greedy = { temperature: 0, maxTokens: 16, ignoreEos: true };
  const ctx = (engine: Engine): GenerationContext => ({ engine, tokenizer: model.tokenizer, eosTokenIds: model.config.eosTokenIds });
  const cpu = new CpuEngine(model.config, model.weights, CONTEXT);
  const want = (await generateAll(ctx(cpu), cpu.createSequence(), prompt, greedy)).tokenIds;
  const gpu = await testGpu({ limits: 'default' });
  const engine = await WebGpuEngine.create(model, { contextLength: CONTEXT, gpu, prefillChunk: 8 });
  try {
    assert.equal(engine.decode, 'fused', engine.decodeNotice);
    assert.equal(engine.decodeNotice, undefined);
    const got = (await generateAll(ctx(engine), engine.createSequence(), prompt, greedy)).tokenIds;
    gpu.check();
    // int8 x and f16 K/V are not the CPU's arithmetic (their loss: fused-nll.test, kv's tests); here they must run
    const same = got.filter((id, i) => id === want[i]).length;
    console.log(`demo on int8 activations and a f16 KV cache: ${got.length} ids, ${same} equal to the CPU's at the same position`);
    assert.equal(got.length, 16);
  } finally {
    engine.dispose();
  }
});

test('webgpu default limits: the demo model decodes fused within 1 MiB storage bindings (matrices split by rows), token for token the CPU\'s', { skip: SKIP_GPU }, async () => {
  const model = await loadModel(DEMO);
  const prompt = model.tokenizer!.encode('The jury said that', true);
  const greedy = { temperature: 0, maxTokens: 16, ignoreEos: true };
  const ctx = (engine: Engine): GenerationContext => ({ engine, tokenizer: model.tokenizer, eosTokenIds: model.config.eosTokenIds });
  const cpu = new CpuEngine(model.config, model.weights, CONTEXT);
  const want = (await generateAll(ctx(cpu), cpu.createSequence(), prompt, greedy)).tokenIds;
  // the embedding table (4096 x 384, 6.3 MB as f32 rows; 1.5 MB of q4 words) exceeds a 1 MiB binding
  const gpu = await testGpu({ limits: 'default', maxBindingBytes: 1 << 20 });
  const engine = await WebGpuEngine.create(model, { contextLength: CONTEXT, gpu, prefillChunk: 8, matvecActivations: 'f32', kvCache: 'f32' });
  try {
    assert.equal(engine.decode, 'fused', engine.decodeNotice);
    const got = (await generateAll(ctx(engine), engine.createSequence(), prompt, greedy)).tokenIds;
    gpu.check();
    const at = got.findIndex((id, i) => id !== want[i]);
    console.log(`demo in 1 MiB bindings: ${got.length} ids, first difference from the CPU at ${at}`);
    assert.deepEqual(got, want, `first difference at token ${at}: [${got}] vs the CPU's [${want}]`);
  } finally {
    engine.dispose();
  }
});
