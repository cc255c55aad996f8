/**
 * GPU vs CPU on whole compressed models: brown-llama-12m compressed in each UPG encoding, perplexity by
 * the fixtures' protocol on the first 2049 validation tokens, WebGPU backend equal to the CPU backend
 * within 1e-3 relative. (Slow on lavapipe: about 1.5 minutes an encoding on a 2-core machine.)
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { compressModel } from '../../../src/compress/compress.js';
import type { CompressOptions } from '../../../src/compress/plan.js';
import { loadModel } from '../../../src/model/load.js';
import { createEngine } from '../../../src/backends/index.js';
import { parallelPerplexity } from '../../../src/runtime/parallel-perplexity.js';
import { perplexity, perplexityTokenStream } from '../../../src/runtime/perplexity.js';
import { BROWN, VALIDATION_TEXT } from '../../helpers.js';
import { SKIP_GPU } from './gpu.js';

const LIMIT = 2049;
const CTX = 256;
let dir: string;
let ids: number[];

const base: CompressOptions = { method: 'magnitude', sparsity: 0, pattern: 'unstructured', bits: 8, group: 64, skip: [], calibTokens: 1024 };
const encodings: [string, Partial<CompressOptions>][] = [
  ['dense-bf16', { bits: 16 }],
  ['q8', { bits: 8 }],
  ['q4-g64', { bits: 4, group: 64 }],
  ['bitmap-50-q4', { sparsity: 0.5, bits: 4 }],
  ['nm-2of4-q4', { sparsity: 0.5, pattern: '2:4', bits: 4 }],
  ['csr-90', { sparsity: 0.9, pattern: 'csr', bits: 8 }],
];

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pdvm-gpu-ppl-'));
  const model = await loadModel(BROWN);
  ids = perplexityTokenStream(model.tokenizer!, await readFile(VALIDATION_TEXT, 'utf8'), model.config.bosTokenId).slice(0, LIMIT);
});
after(() => rm(dir, { recursive: true, force: true }));

for (const [name, options] of encodings) {
  test(`webgpu perplexity equals cpu on brown-llama-12m ${name}`, { skip: SKIP_GPU }, async () => {
    const output = join(dir, `${name}.upg`);
    await compressModel({ ...base, ...options, input: BROWN, output });
    const model = await loadModel(output);
    const encodingsUsed = new Set(model.tensors.map((t) => t.encoding));
    assert.ok(encodingsUsed.size > 0);
    const cpu = (await parallelPerplexity(output, ids, CTX)).perplexity;
    const { engine } = await createEngine(model, { backend: 'webgpu', kvCache: 'f32', contextLength: CTX + 1 });
    try {
      const gpu = (await perplexity(engine, ids, CTX)).perplexity;
      const rel = Math.abs(gpu - cpu) / cpu;
      assert.ok(rel <= 1e-3, `${name} (${[...encodingsUsed].join(', ')}): webgpu ${gpu} vs cpu ${cpu}, relative ${rel.toExponential(2)} > 1e-3`);
    } finally {
      engine.dispose();
    }
  });
}
