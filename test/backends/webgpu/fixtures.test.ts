/**
 * GPU model vs the Hugging Face references, as test/model/fixtures.test.ts does for the CPU: logits
 * for input_ids within 1e-4 relative, and every greedy continuation identical. Weights stay in their
 * checkpoint dtype (brown-llama: bf16, exact) and every sum is float32, so the CPU tolerance applies.
 * Greedy decoding picks tokens on the GPU (argmax kernel).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { basename } from 'node:path';
import { loadModel } from '../../../src/model/load.js';
import { WebGpuEngine } from '../../../src/backends/webgpu/engine.js';
import { ALL_FIXTURE_MODELS, assertClose, readReference } from '../../helpers.js';
import { SKIP_GPU, testGpu } from './gpu.js';

for (const dir of ALL_FIXTURE_MODELS) {
  test(`webgpu: ${basename(dir)} logits and greedy continuations match transformers`, { skip: SKIP_GPU }, async () => {
    const model = await loadModel(dir);
    const ref = await readReference(dir);
    // a small prefill chunk so the 128-token brown-llama reference runs as several chunks
    const engine = await WebGpuEngine.create(model, { kvCache: 'f32', contextLength: 256, prefillChunk: 48, gpu: await testGpu() });
    try {
      const seq = engine.createSequence();
      const logits = await engine.forward(seq, ref.inputIds, true);
      assertClose(logits, ref.logits, 1e-4, `${basename(dir)} logits`);

      for (const { prompt, greedy } of ref.prompts) {
        seq.reset();
        const greedyOptions = { temperature: 0, topK: 0, topP: 1, minP: 0, random: 0 };
        const got = [await engine.forwardToken(seq, prompt, greedyOptions)];
        while (got.length < greedy.length) got.push(await engine.forwardToken(seq, [got.at(-1)!], greedyOptions));
        assert.deepEqual(got, greedy, `${basename(dir)} greedy from [${prompt}]`);
      }
    } finally {
      engine.dispose();
    }
  });
}
