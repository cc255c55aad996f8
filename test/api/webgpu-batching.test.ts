/**
 * Continuous batching on WebGPU (lavapipe in CI): with `batchedStep`, concurrent greedy generations of
 * different prompts and lengths run through the engine's batched step, and each equals the same
 * request run alone through the same step (a row's arithmetic does not depend on the batch). Skipped,
 * with the reason, where no WebGPU adapter exists or the engine offers no batched step.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { loadModel, type GenerationResult, type Model } from 'pdvm';
import { WebGpuUnavailableError } from '../../src/backends/index.js';
import { ROOT } from '../helpers.js';

test('WebGPU batched step: 4 concurrent greedy streams each equal the request run alone', async (t) => {
  let model: Model;
  try {
    model = await loadModel(join(ROOT, 'models', 'brown-llama-12m.upg'), { backend: 'webgpu', batchedStep: true, maxConcurrency: 4, prefixCacheBytes: 0, contextLength: 256 });
  } catch (e) {
    if (e instanceof WebGpuUnavailableError) {
      t.skip(`no WebGPU here: ${e.message}`);
      return;
    }
    throw e;
  }
  try {
    if (!model.engine.step) {
      t.skip('this WebGPU engine offers no batched step (Engine.step)');
      return;
    }
    const prompts = ['The jury said', 'In the morning the city of Atlanta', 'He had never', 'It was a long and quiet day in the county when the'];
    const options = (i: number) => ({ maxTokens: 4 + i, temperature: 0, ignoreEos: true });
    const alone: GenerationResult[] = [];
    for (const [i, p] of prompts.entries()) alone.push(await model.generate(p, options(i)));
    let widest = 0;
    const watch = setInterval(() => (widest = Math.max(widest, model.schedulerStats.lastStepDecodeRows)), 1);
    const together = await Promise.all(prompts.map((p, i) => model.generate(p, options(i))));
    clearInterval(watch);
    together.forEach((r, i) => assert.deepEqual(r.tokenIds, alone[i]!.tokenIds, `stream ${i} (${JSON.stringify(prompts[i])}) differs from the request run alone`));
    console.log(`# widest decode batch seen: ${widest} rows`);
    assert.ok(widest >= 2, `the streams decoded in batches (widest ${widest})`);
  } finally {
    await model.dispose();
  }
});
