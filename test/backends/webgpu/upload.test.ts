/**
 * Streaming upload (upload.ts): weights loaded lazily and uploaded layer by layer give the same logits
 * and greedy ids as the same model loaded whole into memory and uploaded, on the fused and the unfused
 * path, for the demo q4 artifact and a dense Hugging Face fixture; each matrix is read from the
 * source once (a tied embedding once); the loaded model keeps no host copy of a matrix.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { WebGpuEngine } from '../../../src/backends/index.js';
import { loadModel } from '../../../src/model/load.js';
import { LazyTensor } from '../../../src/model/lazy.js';
import type { LoadedModel } from '../../../src/model/loaded.js';
import { ARCH_MODELS, ROOT, compare } from '../../helpers.js';
import { SKIP_GPU, testGpu } from './gpu.js';

const PROMPT = [1, 450, 432, 2835, 1497, 29892, 7, 11, 42];

async function run(model: Pick<LoadedModel, 'config' | 'weights'>, decode: 'fused' | 'unfused'): Promise<{ logits: Float32Array; ids: number[]; decodePath: string }> {
  const gpu = await testGpu();
  const engine = await WebGpuEngine.create(model, { contextLength: 64, decode, gpu });
  try {
    const seq = engine.createSequence();
    const logits = (await engine.forward(seq, PROMPT.map((t) => t % model.config.vocabSize))).slice();
    seq.dispose();
    const ids: number[] = [];
    const greedy = engine.createSequence();
    let last = await engine.forward(greedy, PROMPT.map((t) => t % model.config.vocabSize));
    for (let i = 0; i < 8; i++) {
      let best = 0;
      for (let v = 1; v < last.length; v++) if (last[v]! > last[best]!) best = v;
      ids.push(best);
      last = await engine.forward(greedy, [best]);
    }
    greedy.dispose();
    return { logits, ids, decodePath: engine.decode };
  } finally {
    engine.dispose();
  }
}

for (const [name, path] of [
  ['demo q4 artifact', join(ROOT, 'models', 'brown-llama-12m.upg')],
  ['dense HF fixture (llama3, tied)', ARCH_MODELS[1]!],
] as const) {
  test(`streamed from the source = uploaded from memory, fused and unfused: ${name}`, { skip: SKIP_GPU }, async () => {
    const eager = await loadModel(path);
    const reads: string[] = [];
    const lazy = await loadModel(path, { lazy: true, onProgress: (p) => p.phase === 'tensors' && reads.push(p.tensor) });
    try {
      const matrices = [lazy.weights.embed, lazy.weights.lmHead, ...lazy.weights.layers.flatMap((L) => [...L.qkv, L.o, ...L.gateUp, L.down])];
      assert.ok(matrices.every((m) => m instanceof LazyTensor), 'a lazy load holds no matrix in memory');
      const vectorReads = reads.length;
      for (const decode of ['fused', 'unfused'] as const) {
        reads.length = vectorReads;
        const ref = await run(eager, decode);
        const got = await run(lazy, decode);
        assert.equal(got.decodePath, ref.decodePath);
        const c = compare(got.logits, ref.logits);
        assert.equal(c.worst, 0, `${decode}: logits differ, worst at [${c.worstAt}]: ${c.a} vs ${c.b}`);
        assert.deepEqual(got.ids, ref.ids, `${decode}: greedy ids`);
        const matrixReads = reads.slice(vectorReads);
        assert.equal(new Set(matrixReads).size, matrixReads.length, `${decode}: a matrix read twice: ${matrixReads.join(', ')}`);
        assert.equal(matrixReads.length, new Set(matrices).size, `${decode}: every matrix read once`);
      }
    } finally {
      await lazy.close?.();
    }
  });
}
