/**
 * Compressed brown-llama-12m judged by perplexity (fixtures protocol, first 2049 tokens of validation.txt,
 * dense reference 81.3069): q8 within +0.5%, q4 g64 within +5%, Wanda 50% (q8 values) within +35%, and
 * Wanda 50% strictly better than magnitude 50% at the same bits. Perplexity runs on every core.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { compressModel } from '../../src/compress/compress.js';
import type { CompressOptions } from '../../src/compress/plan.js';
import { loadModel } from '../../src/model/load.js';
import { parallelPerplexity } from '../../src/runtime/parallel-perplexity.js';
import { perplexityTokenStream } from '../../src/runtime/perplexity.js';
import { BROWN, TRAIN_TEXT, VALIDATION_TEXT } from '../helpers.js';

const LIMIT = 2049;
let dir: string;
let ids: number[];

const base: CompressOptions = { method: 'magnitude', sparsity: 0, pattern: 'unstructured', bits: 8, group: 64, skip: [], calibTokens: 1024 };

async function compressedPerplexity(name: string, options: Partial<CompressOptions>): Promise<number> {
  const output = join(dir, `${name}.upg`);
  await compressModel({ ...base, ...options, input: BROWN, output, calib: TRAIN_TEXT });
  return (await parallelPerplexity(output, ids, 256)).perplexity;
}

/** The dense model's perplexity on these tokens (../shared/fixtures/README.md; the CPU engine reproduces it, see test/cli). */
const dense = 81.3069;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pdvm-ppl-'));
  const model = await loadModel(BROWN);
  ids = perplexityTokenStream(model.tokenizer!, await readFile(VALIDATION_TEXT, 'utf8'), model.config.bosTokenId).slice(0, LIMIT);
});
after(() => rm(dir, { recursive: true, force: true }));

const change = (p: number) => `${p.toFixed(4)} (${((100 * (p - dense)) / dense).toFixed(2)}% vs dense ${dense.toFixed(4)})`;

test('q8 is within +0.5% of dense', async () => {
  const p = await compressedPerplexity('q8', { bits: 8 });
  assert.ok(p <= dense * 1.005, `q8 perplexity ${change(p)}`);
});

test('q4 group 64 is within +5% of dense', async () => {
  const p = await compressedPerplexity('q4', { bits: 4, group: 64 });
  assert.ok(p <= dense * 1.05, `q4 g64 perplexity ${change(p)}`);
});

test('Wanda 50% with q8 values is within +35% of dense, and beats magnitude 50% with q8 values', async () => {
  const wanda = await compressedPerplexity('wanda50', { method: 'wanda', sparsity: 0.5, bits: 8 });
  assert.ok(wanda <= dense * 1.35, `Wanda 50% q8 perplexity ${change(wanda)}`);
  const magnitude = await compressedPerplexity('magnitude50', { method: 'magnitude', sparsity: 0.5, bits: 8 });
  assert.ok(wanda < magnitude, `Wanda 50% ${change(wanda)} should be below magnitude 50% ${change(magnitude)}`);
});
