/**
 * The library API on the WebGPU backend, whose forward passes are truly asynchronous: concurrent
 * generations interleaved by the scheduler each equal the same generation run alone. Skipped (with the
 * reason) where no WebGPU adapter exists.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { loadModel, type GenerationResult, type Model } from 'pdvm';
import { WebGpuUnavailableError } from '../../src/backends/index.js';
import { ROOT } from '../helpers.js';

test('WebGPU: concurrent generations each equal the same generation run alone', async (t) => {
  let model: Model;
  try {
    model = await loadModel(join(ROOT, 'models', 'brown-llama-12m.upg'), { backend: 'webgpu', maxConcurrency: 3 });
  } catch (e) {
    if (e instanceof WebGpuUnavailableError) {
      t.skip(`no WebGPU here: ${e.message}`);
      return;
    }
    throw e;
  }
  try {
    assert.equal(model.backend, 'webgpu');
    const requests = [
      () => model.generate('The jury said', { maxTokens: 12, temperature: 0, stream: true }),
      () => model.chat([{ role: 'user', content: 'Hello' }], { maxTokens: 10, temperature: 0.8, seed: 4, stream: true }),
      () => model.generate('In the morning', { maxTokens: 14, temperature: 1, topK: 30, seed: 8, stream: true }),
    ];
    const alone: GenerationResult[] = [];
    for (const r of requests) alone.push(await r().result);
    const together = await Promise.all(requests.map((r) => r().result));
    together.forEach((g, i) => assert.deepEqual(g.tokenIds, alone[i]!.tokenIds, `request ${i}`));
    assert.deepEqual(model.activity, { active: 0, queued: 0 });
  } finally {
    await model.dispose();
  }
});
