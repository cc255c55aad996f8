/**
 * Continuous batching on WebGPU (lavapipe in CI): with `batchedStep`, concurrent greedy generations of
 * different prompts and lengths run through the engine's batched step, and each equals the same
 * request run alone through the same step (a row's arithmetic does not depend on the batch); streams
 * aborted mid-batch leave no KV slot taken. Skipped,
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

    // aborting streams mid-batch leaks no KV slot; the stream left equals its run alone
    const kv = (model.engine as unknown as { kv: { slotsInUse: number } }).kv;
    const idle = kv.slotsInUse;
    const controllers = prompts.map(() => new AbortController());
    const runs = prompts.map((p, i) =>
      (async () => {
        const ids: number[] = [];
        for await (const chunk of model.generate(p, { ...options(i), maxTokens: 12, signal: controllers[i]!.signal, stream: true })) {
          ids.push(...chunk.tokenIds);
          if (i !== 1 && ids.length >= 2) controllers[i]!.abort();
        }
        return ids;
      })(),
    );
    const settled = await Promise.allSettled(runs);
    settled.forEach((r, i) => assert.equal(r.status, i === 1 ? 'fulfilled' : 'rejected', `stream ${i} ${i === 1 ? 'finished' : 'was aborted'}`));
    const kept = await model.generate(prompts[1]!, { ...options(1), maxTokens: 12 });
    assert.deepEqual((settled[1] as PromiseFulfilledResult<number[]>).value, kept.tokenIds, 'the stream left equals its run alone');
    assert.equal(kv.slotsInUse, idle, `KV slots in use after the aborts: ${kv.slotsInUse}, before: ${idle}`);
  } finally {
    await model.dispose();
  }
});

test('WebGPU batched step with soloOnDevice: a lone stream decodes on the fused path and hands over to the batch when another arrives; tokens are the CPU\'s (f32 options)', async (t) => {
  const demo = join(ROOT, 'models', 'brown-llama-12m.upg');
  let model: Model;
  try {
    model = await loadModel(demo, { backend: 'webgpu', batchedStep: true, soloOnDevice: true, matvecActivations: 'f32', kvCache: 'f32', maxConcurrency: 4, prefixCacheBytes: 0, contextLength: 128 });
  } catch (e) {
    if (e instanceof WebGpuUnavailableError) {
      t.skip(`no WebGPU here: ${e.message}`);
      return;
    }
    throw e;
  }
  const cpu = await loadModel(demo, { backend: 'cpu', contextLength: 128 });
  try {
    if (!model.engine.step || !model.engine.decodeOnDevice) {
      t.skip('this WebGPU engine offers no batched step and fused decoder');
      return;
    }
    const a = 'The jury said', b = 'In the morning the city of Atlanta';
    const greedy = (maxTokens: number) => ({ maxTokens, temperature: 0, ignoreEos: true });
    const want = { a: (await cpu.generate(a, greedy(24))).tokenIds, b: (await cpu.generate(b, greedy(8))).tokenIds };
    // alone: the fused decoder for the prompt (the prefill kernels) and every token, no batched step
    const s0 = model.schedulerStats.steps;
    const alone = await model.generate(a, greedy(24));
    const aloneSteps = model.schedulerStats.steps - s0;
    assert.deepEqual(alone.tokenIds, want.a, 'the lone stream vs the CPU');
    assert.equal(aloneSteps, 0, `the lone stream took ${aloneSteps} batched steps (none expected)`);
    // A alone on the fused path, then B arrives: both go on in batched steps from their slots
    let release!: () => void;
    const started = new Promise<void>((ok) => (release = ok));
    const s1 = model.schedulerStats.steps;
    const first = (async () => {
      const ids: number[] = [];
      for await (const chunk of model.generate(a, { ...greedy(24), stream: true })) {
        ids.push(...chunk.tokenIds);
        if (ids.length >= 4) release();
      }
      return ids;
    })();
    await started;
    const second = await model.generate(b, greedy(8));
    const got = await first;
    const mixedSteps = model.schedulerStats.steps - s1;
    console.log(`# A: ${got.length} tokens, B: ${second.tokenIds.length}; ${mixedSteps} batched steps while both ran`);
    assert.deepEqual(got, want.a, 'A (fused, then batched, then fused) vs the CPU');
    assert.deepEqual(second.tokenIds, want.b, 'B (batched) vs the CPU');
    assert.ok(mixedSteps >= 8, `B joined the batch (${mixedSteps} batched steps)`);
  } finally {
    await model.dispose();
    await cpu.dispose();
  }
});
