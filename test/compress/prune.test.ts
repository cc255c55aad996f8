/** Pruning masks (magnitude, Wanda scores, N:M) and the calibration that feeds Wanda. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { activationNorms } from '../../src/compress/calibrate.js';
import { pruneNM, pruneUnstructured, pruningScores } from '../../src/compress/prune.js';
import { rmsnorm } from '../../src/backends/cpu/ops.js';
import { CheckpointTensors } from '../../src/format/hf.js';
import { loadModel } from '../../src/model/load.js';
import { MODELS, assertClose, rng } from '../helpers.js';

function random(n: number, seed: number): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => r() * 2 - 1);
}

test('unstructured pruning zeroes exactly round(s * cols) of each row, the lowest scores', () => {
  const rows = 9, cols = 37;
  const w = random(rows * cols, 1);
  for (const s of [0.25, 0.5, 0.7, 0.9]) {
    const p = pruneUnstructured(w, pruningScores(w, rows, cols, null), rows, cols, s);
    for (let r = 0; r < rows; r++) {
      const row = Array.from(p.subarray(r * cols, (r + 1) * cols));
      const zeros = row.filter((v) => v === 0).length;
      assert.equal(zeros, Math.round(s * cols), `row ${r} at ${s}`);
      const keptMin = Math.min(...row.filter((v) => v !== 0).map(Math.abs));
      const droppedMax = Math.max(...Array.from(w.subarray(r * cols, (r + 1) * cols)).filter((_, c) => row[c] === 0).map(Math.abs));
      assert.ok(droppedMax <= keptMin, `row ${r}: dropped ${droppedMax} > kept ${keptMin}`);
    }
  }
});

test('Wanda scores weigh |W| by the input channel norm: a loud channel keeps its small weights', () => {
  const rows = 4, cols = 8;
  const w = Float32Array.from({ length: rows * cols }, (_, i) => (i % cols === 3 ? 0.01 : 1));
  const norms = Float32Array.from({ length: cols }, (_, c) => (c === 3 ? 1000 : 1));
  const magnitude = pruneUnstructured(w, pruningScores(w, rows, cols, null), rows, cols, 0.125);
  const wanda = pruneUnstructured(w, pruningScores(w, rows, cols, norms), rows, cols, 0.125);
  for (let r = 0; r < rows; r++) {
    assert.equal(magnitude[r * cols + 3], 0, 'magnitude drops the small weight');
    assert.equal(wanda[r * cols + 3], Math.fround(0.01), 'wanda keeps it');
  }
});

test('N:M pruning keeps the n largest of every block of m (2:4 and 4:8, ragged last block)', () => {
  const rows = 5, cols = 30;
  const w = random(rows * cols, 2);
  for (const [n, m] of [[2, 4], [4, 8]]) {
    const p = pruneNM(w, pruningScores(w, rows, cols, null), rows, cols, n!, m!);
    for (let r = 0; r < rows; r++) {
      for (let b = 0; b < cols; b += m!) {
        const idx = Array.from({ length: Math.min(m!, cols - b) }, (_, k) => r * cols + b + k);
        const kept = idx.filter((i) => p[i] !== 0);
        assert.equal(kept.length, Math.min(n!, idx.length));
        const want = [...idx].sort((i, j) => Math.abs(w[j]!) - Math.abs(w[i]!)).slice(0, n!).sort((a, c) => a - c);
        assert.deepEqual(kept, want);
      }
    }
  }
});

test('calibration: layer 0 q/k/v channel norms equal the norms of rmsnorm(embedding) computed directly', async () => {
  const dir = join(MODELS, 'arch', 'llama');
  const model = await loadModel(dir);
  const c = model.config;
  const ids = Array.from({ length: 50 }, (_, i) => (i * 53 + 7) % c.vocabSize);
  const ckpt = await CheckpointTensors.open(dir);
  let norms: Map<string, Float32Array>;
  try {
    norms = await activationNorms(ckpt, c, ids, 16); // 4 windows of at most 16 tokens
  } finally {
    await ckpt.close();
  }
  const H = c.hiddenSize;
  const x = new Float32Array(ids.length * H);
  ids.forEach((id, t) => model.weights.embed.readRow(id, x.subarray(t * H, (t + 1) * H)));
  const xn = new Float32Array(ids.length * H);
  rmsnorm(x, model.weights.layers[0]!.attnNorm, c.rmsNormEps, ids.length, xn);
  const want = new Float32Array(H);
  for (let t = 0; t < ids.length; t++) for (let k = 0; k < H; k++) want[k] += xn[t * H + k]! ** 2;
  for (let k = 0; k < H; k++) want[k] = Math.sqrt(want[k]!);
  for (const name of ['q_proj', 'k_proj', 'v_proj']) assertClose(norms.get(`model.layers.0.self_attn.${name}.weight`)!, want, 1e-5, name);
  assert.equal(norms.get('model.layers.2.mlp.down_proj.weight')!.length, c.intermediateSize);
});
