/**
 * What the f16 KV cache costs in accuracy, measured through the fused decoder itself: teacher-forced
 * negative log-likelihood of the demo model (models/brown-llama-12m.upg: q4 g64 layers) over the first
 * 2,049 validation tokens by the fixtures' protocol (windows of 256 predicted tokens, no state between
 * windows), with the f32 and the f16 cache (packed in u32, the kernels every device runs). The f16 mean
 * NLL must stay within +0.5% of the f32 one (issue 14). Slow on lavapipe (two passes of 2,048 steps).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FusedDecoder } from '../../../src/backends/webgpu/fused/decoder.js';
import { destroyFusedWeights, uploadFusedWeights } from '../../../src/backends/webgpu/fused/weights.js';
import { loadModel } from '../../../src/model/load.js';
import { logProbability, perplexityTokenStream } from '../../../src/runtime/perplexity.js';
import { ROOT, VALIDATION_TEXT } from '../../helpers.js';
import { SKIP_GPU, testGpu } from './gpu.js';

const LIMIT = 2049;
const CTX = 256;

test('fused decode: the f16 KV cache keeps the demo model\'s NLL over 2,049 validation tokens within +0.5% of the f32 cache', { skip: SKIP_GPU }, async () => {
  const model = await loadModel(join(ROOT, 'models', 'brown-llama-12m.upg'));
  const ids = perplexityTokenStream(model.tokenizer!, await readFile(VALIDATION_TEXT, 'utf8'), model.config.bosTokenId).slice(0, LIMIT);
  const gpu = await testGpu();
  const w = uploadFusedWeights(gpu, model.weights);
  const nll: Record<string, number> = {};
  try {
    for (const kvCache of ['f32', 'f16'] as const) {
      const decoder = new FusedDecoder(gpu, model.config, w, { path: 'fused', contextLength: CTX + 1, kvCache, kvPacked: true });
      try {
        let sum = 0, n = 0;
        for (let s = 0; s + 1 < ids.length; s += CTX) {
          const window = ids.slice(s, Math.min(s + CTX + 1, ids.length));
          decoder.reset();
          for (let i = 0; i + 1 < window.length; i++) {
            const logits = await decoder.forwardLogits([window[i]!]);
            sum -= logProbability(logits, 0, model.config.vocabSize, window[i + 1]!);
            n++;
          }
        }
        nll[kvCache] = sum / n;
        console.log(`${kvCache} KV cache: mean NLL ${nll[kvCache]!.toFixed(5)} over ${n} tokens, perplexity ${Math.exp(nll[kvCache]!).toFixed(4)}`);
      } finally {
        decoder.dispose();
      }
    }
  } finally {
    destroyFusedWeights(w);
  }
  const change = nll.f16! / nll.f32! - 1;
  console.log(`f16 vs f32 KV cache mean NLL: ${(100 * change).toFixed(4)}%`);
  assert.ok(change <= 0.005, `the f16 KV cache raises the mean NLL by ${(100 * change).toFixed(3)}% (> 0.5%): ${nll.f16} vs ${nll.f32}`);
});
