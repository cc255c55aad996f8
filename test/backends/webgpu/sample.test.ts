/**
 * GPU token selection vs a CPU reference of the same rule (kernels/sample.ts): argmax equals the
 * runtime's argmax; sampling with temperature, top-k, min-p and top-p picks the same token as
 * `sampleReference` for the same uniform draw.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { argmaxOp, sampleOp } from '../../../src/backends/webgpu/ops.js';
import { argmax } from '../../../src/runtime/sampling.js';
import { rng } from '../../helpers.js';
import { featureVariants, readU32, run, SKIP_GPU, stepBuffer, storage, testGpu, zeros } from './gpu.js';

interface Options { temperature: number; topK: number; topP: number; minP: number }

/**
 * The kernel's rule in float64: keep the top-k logits (and ties), those with weight >= minP, and the
 * largest-logit set whose mass reaches topP of what is left; draw u * kept mass in index order.
 */
export function sampleReference(logits: Float32Array, o: Options, u: number): number {
  const n = logits.length;
  const sorted = Array.from(logits).sort((a, b) => b - a);
  const max = sorted[0]!;
  const weight = (x: number) => Math.exp((x - max) / o.temperature);
  const kMin = o.topK > 0 && o.topK < n ? sorted[o.topK - 1]! : -Infinity;
  const kept = (x: number, floor: number) => x >= kMin && x >= floor && weight(x) > 0 && weight(x) >= o.minP;
  let floor = -Infinity;
  if (o.topP < 1) {
    const total = sorted.filter((x) => kept(x, -Infinity)).reduce((a, x) => a + weight(x), 0);
    let mass = 0;
    for (const x of sorted) {
      if (!kept(x, -Infinity)) continue;
      mass += weight(x);
      if (mass >= o.topP * total) {
        floor = x;
        break;
      }
    }
  }
  let total = 0;
  for (let i = 0; i < n; i++) if (kept(logits[i]!, floor)) total += weight(logits[i]!);
  let run = 0;
  let last = -1;
  for (let i = 0; i < n; i++) {
    if (!kept(logits[i]!, floor)) continue;
    run += weight(logits[i]!);
    last = i;
    if (run > u * total) return i;
  }
  return last;
}

const variants = SKIP_GPU ? [] : await featureVariants();

for (const { name, options } of variants) {
  test(`webgpu sampling (${name}): argmax and temperature/top-k/min-p/top-p draws match the CPU rule`, async () => {
    const gpu = await testGpu(options);
    const r = rng(42);
    for (const vocab of [1, 300, 4099]) {
      const logits = Float32Array.from({ length: vocab }, () => (r() * 2 - 1) * 8);
      const lb = storage(gpu, logits);
      const out = zeros(gpu, 4);
      await run(gpu, [argmaxOp(gpu, vocab, lb, out)], 1);
      assert.equal((await readU32(gpu, out, 1))[0], argmax(logits), `argmax over ${vocab}`);

      const settings: Options[] = [
        { temperature: 1, topK: 0, topP: 1, minP: 0 },
        { temperature: 0.7, topK: 40, topP: 0.9, minP: 0 },
        { temperature: 1.3, topK: 0, topP: 0.5, minP: 0.05 },
        { temperature: 0.5, topK: 1, topP: 1, minP: 0 },
        // fewer than k pass min-p at 300 (the top-k search is skipped), more at 4099
        { temperature: 0.3, topK: 40, topP: 0.95, minP: 0.5 },
        // top-p over the whole vocabulary: more kept logits than an invocation holds at 4099 (the search reads the vocabulary)
        { temperature: 1, topK: 0, topP: 0.9, minP: 0 },
      ];
      for (const s of settings) {
        for (let i = 0; i < 6; i++) {
          const u = (i + 0.37) / 6.3;
          const step = stepBuffer(gpu, 1, 0, [], { 2: u, 3: s.topK, 4: s.temperature, 5: s.topP, 6: s.minP });
          await run(gpu, [sampleOp(gpu, vocab, lb, out, step)], 1);
          const got = (await readU32(gpu, out, 1))[0]!;
          assert.equal(got, sampleReference(logits, s, u), `sample over ${vocab} with ${JSON.stringify(s)}, u=${u.toFixed(3)}`);
        }
      }
    }
  });
}
