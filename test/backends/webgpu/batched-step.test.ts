/**
 * The WebGPU batched step's decode rows (engine.ts decodePass: the q4 products of
 * kernels/batched-matvec.ts, attention per row over its slot, lm_head and the token choice per row)
 * on the demo model (q4 layers), under WebGPU's default limits:
 *  - on the f32 options, greedy ids chosen on the GPU equal the CPU backend's, token for token;
 *  - three sequences stepped together (prompts in one step as decode rows, the default, then decode
 *    rows, greedy and sampled, in passes of 2 rows) give exactly the ids each gives stepped alone, on
 *    the f32 options and on the defaults (int8 activations, f16 KV cache);
 *  - rows without `choose` get logits near the CPU's (1e-4 on the f32 options, 2e-2 on the defaults:
 *    measured 3.2e-3), the prompt as decode rows (the default: 5.2e-3) or through the prefill's
 *    kernels (stepPrompts 'prefill').
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { CpuEngine } from '../../../src/backends/cpu/engine.js';
import { WebGpuEngine, type WebGpuEngineOptions } from '../../../src/backends/webgpu/engine.js';
import { loadModel } from '../../../src/model/load.js';
import { generateAll, type GenerationContext } from '../../../src/runtime/generate.js';
import type { DeviceSampling, StepRow } from '../../../src/runtime/engine.js';
import { assertClose, ROOT } from '../../helpers.js';
import { SKIP_GPU, testGpu } from './gpu.js';

const DEMO = join(ROOT, 'models', 'brown-llama-12m.upg');
const CONTEXT = 64;
const GREEDY: DeviceSampling = { temperature: 0, topK: 0, topP: 1, minP: 0 };
function relError(a: Float32Array, b: Float32Array): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i]! - b[i]!) ** 2;
    den += b[i]! ** 2;
  }
  return Math.sqrt(num / den);
}
const SAMPLED: DeviceSampling = { temperature: 0.8, topK: 40, topP: 0.95, minP: 0.05 };

test('webgpu batched step: decode rows through the batched q4 products, greedy ids equal the CPU\'s and every row equals itself alone', { skip: SKIP_GPU }, async () => {
  const model = await loadModel(DEMO);
  const gpu = await testGpu({ limits: 'default' });
  const prompts = ['The jury said that', 'In the morning the city', 'He had never seen'].map((p) => model.tokenizer!.encode(p, true));
  const cpu = new CpuEngine(model.config, model.weights, CONTEXT);
  const ctx = (engine: CpuEngine | WebGpuEngine): GenerationContext => ({ engine, tokenizer: model.tokenizer, eosTokenIds: model.config.eosTokenIds });
  const steps = 8;

  for (const numerics of ['f32', 'defaults'] as const) {
    const options: WebGpuEngineOptions = { contextLength: CONTEXT, gpu, prefillChunk: 8, batchedStep: true, batchRows: 2, ...(numerics === 'f32' ? { matvecActivations: 'f32', kvCache: 'f32' } : {}) };
    const engine = await WebGpuEngine.create(model, options);
    try {
      assert.ok(engine.stepChoosesTokens);
      assert.equal(engine.stepPrompts, 'rows', 'prompts go through the step as decode rows by default (measured faster on the H200, docs/PERFORMANCE.md)');
      // generate() through the step (the device choosing greedily) against the CPU
      if (numerics === 'f32') {
        for (const [i, p] of prompts.entries()) {
          const greedy = { temperature: 0, maxTokens: steps, ignoreEos: true };
          const want = (await generateAll(ctx(cpu), cpu.createSequence(), p, greedy)).tokenIds;
          const seq = engine.createSequence();
          const got = (await generateAll(ctx(engine), seq, p, greedy)).tokenIds;
          seq.dispose();
          const at = got.findIndex((id, k) => id !== want[k]);
          console.log(`prompt ${i}: ${got.length} ids through the batched step, first difference from the CPU at ${at}`);
          assert.deepEqual(got, want, `prompt ${i}: [${got}] vs the CPU's [${want}]`);
        }
      }
      // row i samples when i is odd; draws fixed per step and row
      const sampling = (i: number) => (i % 2 === 1 ? SAMPLED : GREEDY);
      const draw = (i: number, k: number) => ((i * 7 + k * 3) % 10 + 0.5) / 10;
      const run = async (together: boolean): Promise<number[][]> => {
        const seqs = prompts.map(() => engine.createSequence());
        const ids: number[][] = prompts.map(() => []);
        const stepRows = async (rows: StepRow[], at: number[]) => {
          if (together) {
            const out = await engine.step!(rows);
            out.forEach((o, j) => ids[at[j]!]!.push(o as number));
          } else {
            for (const [j, row] of rows.entries()) ids[at[j]!]!.push((await engine.step!([row]))[0] as number);
          }
        };
        const all = prompts.map((_, i) => i);
        await stepRows(prompts.map((p, i) => ({ seq: seqs[i]!, tokens: p, logits: true, choose: { sampling: sampling(i), random: draw(i, 0) } })), all);
        for (let k = 1; k < steps; k++) {
          await stepRows(seqs.map((seq, i) => ({ seq, tokens: [ids[i]!.at(-1)!], logits: true, choose: { sampling: sampling(i), random: draw(i, k) } })), all);
        }
        for (const s of seqs) s.dispose();
        return ids;
      };
      const alone = await run(false);
      const plan = (engine as unknown as { decodeRows: { layers: { beforeAttention: { label: string }[] }[] } }).decodeRows;
      const labels = plan.layers[0]!.beforeAttention.map((d) => d.label);
      assert.ok(labels.some((l) => l.startsWith('batched_matvec_q4')), `the q4 products run batched: ${labels.join(', ')}`);
      const together = await run(true);
      together.forEach((ids, i) => assert.deepEqual(ids, alone[i], `${numerics}: sequence ${i} (${i % 2 ? 'sampled' : 'greedy'}) stepped with the others vs alone`));
      console.log(`${numerics}: 3 sequences x ${steps} tokens, batched = alone`);

      // a row without choose: its logits, near the CPU's (f32 options: 1e-4; int8 x and a f16 cache: 2e-2),
      // its prompt through the prefill's kernels (stepPrompts 'prefill') and as decode rows (the default)
      const prefilled: number[] = [];
      const e = engine as unknown as { runChunks: (slot: unknown, pos0: number, tokens: ArrayLike<number>, output: string) => Promise<Float32Array> };
      const runChunks = e.runChunks.bind(engine);
      e.runChunks = (slot, pos0, tokens, output) => {
        prefilled.push(tokens.length);
        return runChunks(slot, pos0, tokens, output);
      };
      for (const way of ['prefill', 'rows'] as const) {
        engine.stepPrompts = way;
        prefilled.length = 0;
        const tol = numerics === 'f32' ? 1e-4 : 2e-2;
        const seq = engine.createSequence(), cseq = cpu.createSequence();
        const [out] = await engine.step!([{ seq, tokens: prompts[0]!, logits: true }]);
        const want = await cpu.forward(cseq, prompts[0]!);
        console.log(`${numerics}, prompt as ${way}: prompt logits vs the CPU, relative error ${relError(out as Float32Array, want).toExponential(2)}`);
        assertClose(out as Float32Array, want, tol, `${numerics}, prompt as ${way}: prompt logits vs the CPU`);
        assert.deepEqual(prefilled, way === 'prefill' ? [prompts[0]!.length - 1] : [], `${numerics}: tokens through the prefill's kernels with stepPrompts '${way}'`);
        const [next] = await engine.step!([{ seq, tokens: [5], logits: true }]);
        assertClose(next as Float32Array, await cpu.forward(cseq, [5]), tol, `${numerics}, prompt as ${way}: decode-row logits vs the CPU`);
        seq.dispose();
      }
    } finally {
      engine.dispose();
    }
  }
});

test('webgpu batched step on the tiled products (batchProducts \'tiled\', the prefill\'s kernels): no matvec int8 blocks made, each row the ids it gives alone, logits near the CPU\'s', { skip: SKIP_GPU }, async () => {
  const model = await loadModel(DEMO);
  const gpu = await testGpu({ limits: 'default' });
  const prompts = ['The jury said that', 'In the morning the city'].map((p) => model.tokenizer!.encode(p, true));
  const cpu = new CpuEngine(model.config, model.weights, CONTEXT);
  const engine = await WebGpuEngine.create(model, { contextLength: CONTEXT, gpu, prefillChunk: 8, batchedStep: true, batchProducts: 'tiled', kvCache: 'f32' });
  try {
    assert.equal(engine.batchProducts, 'tiled');
    const run = async (together: boolean) => {
      const seqs = prompts.map(() => engine.createSequence());
      const ids: number[][] = prompts.map(() => []);
      for (let k = 0; k < 4; k++) {
        const rows: StepRow[] = seqs.map((seq, i) => ({ seq, tokens: k === 0 ? prompts[i]! : [ids[i]!.at(-1)!], logits: true, choose: { sampling: GREEDY, random: 0 } }));
        const out = together ? await engine.step!(rows) : (await Promise.all(rows.map((r) => engine.step!([r])))).map((o) => o[0]!);
        out.forEach((o, i) => ids[i]!.push(o as number));
      }
      for (const s of seqs) s.dispose();
      return ids;
    };
    const alone = await run(false);
    const together = await run(true);
    together.forEach((ids, i) => assert.deepEqual(ids, alone[i], `sequence ${i} stepped with the other vs alone`));
    // the tiled products quantize x their own way: the norms write no matvec int8 blocks
    const plan = (engine as unknown as { decodeRows: { layers: { beforeAttention: { label: string }[]; afterAttention: { label: string }[] }[] } }).decodeRows;
    const labels = [...plan.layers[0]!.beforeAttention, ...plan.layers[0]!.afterAttention].map((d) => d.label);
    assert.ok(!labels.some((l) => l.includes('quantize_rows') || l.startsWith('batched_matvec')), `no matvec dispatches: ${labels.join(', ')}`);
    const seq = engine.createSequence(), cseq = cpu.createSequence();
    const [out] = await engine.step!([{ seq, tokens: prompts[0]!, logits: true }]);
    const want = await cpu.forward(cseq, prompts[0]!);
    console.log(`tiled products: prompt logits vs the CPU, relative error ${relError(out as Float32Array, want).toExponential(2)}`);
    assertClose(out as Float32Array, want, 1e-4, 'tiled products: prompt logits vs the CPU');
    seq.dispose();
  } finally {
    engine.dispose();
  }
});
