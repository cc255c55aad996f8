/**
 * The WebGPU batched step's decode rows on a synthetic model of a named shape (random q4 weights made
 * on the GPU, as `pdvm bench`): B sequences each prefilled with a prompt, then decode steps of B rows
 * (one token each, chosen greedily on the GPU), timed from the step call to the ids' arrival. Prints,
 * per setting of the batched q4 kernel (rows a pass NB, output rows a subgroup RPS) and per B, the ms
 * a step and the aggregate tok/s (`rNB-GxRPS[-sS][-uU]`: the 'rows' layout, G sets of 8 lanes a 32, RPS
 * rows a lane, S slices of the columns, U units a lane loaded at once; a `+cq` suffix: the attention
 * merge writes the o product's int8 x), beside the fused decoder's single-stream rate in the same process
 * (the best one-stream path); `--kernels tiled` puts the prefill's matrix-matrix kernels in the
 * products instead (`tiled@TILE/WGS`: the int8 few-token tile and column split, as PDVM_I8_TILE and
 * PDVM_I8_SPLIT, under PDVM_PREFILL_I8=row|row-q4; `tiled@dTT` the direct 'row' kernel, `tiled@tTT` the same on tiles), `tc` the batched tensor-core products (kernels/batched-tensor-core.ts; `tc-KS-WARPS[-DEPTH]`
 * with columns a stage, the subgroups a dispatch aims at and the stages loaded ahead; `...-nodequant`
 * and `...-nox` time the kernel without its weights' dequantization or without x's global loads:
 * wrong tokens, timing only); with --profile, each dispatch of a
 * decode-row pass (layer 0, head).
 * A program, not a test: figures go to docs/PERFORMANCE.md.
 *   node bench/batched-step.js [--shape llama-3.1-8b] [--batches 1,8,32] [--kernels 8x2,r8-4x2,tc,tc-128-4096] [--steps 16]
 *     [--context 512] [--prompt 32] [--profile 1,32] [--fused-tokens 128] [--kv-slots N]
 */
import { scriptArgs } from '../scripts/args.js';
import { Gpu } from '../src/backends/webgpu/device.js';
import { WebGpuEngine } from '../src/backends/webgpu/engine.js';
import { parseInt8Tile } from '../src/backends/webgpu/kernels/matmul-int8.js';
import { defaultTensorCoreSplit, selfTestBatchedTensorCore } from '../src/backends/webgpu/batched-products.js';
import { FusedDecoder } from '../src/backends/webgpu/fused/decoder.js';
import { engineWeightsOfFused } from '../src/backends/webgpu/fused/engine-weights.js';
import { BENCH_SHAPES, benchConfig, SyntheticWeights } from '../src/bench/synthetic.js';
import type { DeviceSampling, Sequence } from '../src/runtime/engine.js';
import { Scheduler } from '../src/api/scheduler.js';

const { values } = scriptArgs({
  options: {
    shape: { type: 'string', default: 'llama-3.1-8b' },
    batches: { type: 'string', default: '1,8,32' },
    kernels: { type: 'string', default: '8x2' },
    steps: { type: 'string', default: '16' },
    context: { type: 'string', default: '512' },
    prompt: { type: 'string', default: '32' },
    profile: { type: 'string', default: '' },
    'fused-tokens': { type: 'string', default: '128' },
    /** Bursts of N greedy generations of --scheduler-tokens through the server's scheduler in this process (no HTTP), after the kernels: its steps' time against the bench's. */
    scheduler: { type: 'string', default: '' },
    'scheduler-tokens': { type: 'string', default: '128' },
    /** KV slots allocated at load (default: every sequence's, one buffer group); 1 grows the pool on demand, in doubling groups, as a server without preallocation does. */
    'kv-slots': { type: 'string' },
  },
});
const shape = BENCH_SHAPES[values.shape!];
if (!shape) throw new Error(`unknown shape ${values.shape}; one of ${Object.keys(BENCH_SHAPES).join(', ')}`);
const config = benchConfig(shape);
const batches = values.batches!.split(',').map(Number);
const steps = Number(values.steps), context = Number(values.context), promptTokens = Number(values.prompt);
const GREEDY: DeviceSampling = { temperature: 0, topK: 0, topP: 1, minP: 0 };

const gpu = await Gpu.acquire({});
console.log(`device: ${gpu.adapterDescription}; ${gpu.featureSummary}; ${new Date().toISOString()}`);
const t0 = performance.now();
const fused = await new SyntheticWeights(gpu, { encoding: 'q4', group: 64, tile: 64, density: 0.5, seed: 1 }).model(config);
console.log(`weights: ${values.shape} q4 g64, ${(fused.bytes / 1e9).toFixed(2)} GB (made in ${((performance.now() - t0) / 1000).toFixed(1)} s)`);
const engine = await WebGpuEngine.overGpuWeights(gpu, config, engineWeightsOfFused(fused), { contextLength: context, batchedStep: true, kvSlots: Number(values['kv-slots'] ?? Math.max(...batches) + 2) });
// the tensor-core products where asked for (--kernels tc...) and their self-test passes here
if (values.kernels!.split(',').some((k) => k.startsWith('tc'))) gpu.features.selfTests['batched products (subgroup matrix)'] ??= await selfTestBatchedTensorCore(gpu);
console.log(`batched products by default: ${engine.batchProducts}; tensor-core self-test: ${gpu.features.selfTests['batched products (subgroup matrix)'] ?? 'not run'}`);
const prompt = (b: number) => Array.from({ length: promptTokens }, (_, i) => (b * 7919 + i * 104729) % config.vocabSize);

// the fused decoder alone (one stream), over a slot of the same cache
{
  const slot = engine.kv.acquire();
  const decoder = new FusedDecoder(gpu, config, fused, { path: 'fused', contextLength: context, kv: { cache: engine.kv, slot } });
  const n = Number(values['fused-tokens']);
  await decoder.generate(prompt(0), { maxTokens: 8 });
  decoder.reset();
  const f0 = performance.now();
  const ids = await decoder.generate(prompt(0), { maxTokens: n });
  const s = (performance.now() - f0) / 1000;
  console.log(`fused decoder, one stream: ${ids.length} tokens after a ${promptTokens}-token prompt in ${s.toFixed(3)} s = ${(ids.length / s).toFixed(1)} tok/s`);
  decoder.dispose();
  engine.kv.release(slot);
}

const results: { kernel: string; B: number; msPerStep: number; tokPerS: number }[] = [];
const firstIds: Record<number, number[]> = {};
const defaults = { int8Tile: gpu.features.int8Tile, int8Direct: gpu.features.int8Direct, int8DirectTiles: gpu.features.int8DirectTiles, int8SplitWorkgroups: gpu.features.int8SplitWorkgroups };
for (const name of values.kernels!.split(',')) {
  // `+cq`: the attention merge writes the o product's int8 x (WebGpuEngine.batchCombineQuantize)
  const combineQuantize = name.endsWith('+cq');
  // `tiled@TILE/WGS`: the int8 few-token products (PDVM_PREFILL_I8=row|row-q4) with that tile (as
  // PDVM_I8_TILE) and split aiming at WGS workgroups a token tile (as PDVM_I8_SPLIT)
  const few = /^tiled(?:@(\w+))?(?:\/(\d+))?$/.exec(name.replace(/\+cq$/, ''));
  // `tiled@dTT`: scaling 'row' with the operands straight from global memory, 16 x TT tokens a workgroup (as PDVM_I8_DIRECT);
  // `tiled@tTT`: the same with the operands in tiles of 16 rows x 128 bytes (as PDVM_I8_DIRECT=tTT)
  // (each `tiled` kernel starts from the process's settings, not from the kernel before it)
  if (few) {
    const direct = /^[dt][124]$/.test(few[1] ?? '');
    const tile = few[1] && !direct ? parseInt8Tile(few[1]) : defaults.int8Tile;
    if (!tile && few[1] && !direct) throw new Error(`kernel ${name}: no int8 tile ${few[1]}`);
    gpu.features.int8Direct = direct ? Number(few[1]!.slice(1)) : defaults.int8Direct;
    gpu.features.int8DirectTiles = direct ? few[1]!.startsWith('t') : defaults.int8DirectTiles;
    gpu.features.int8Tile = tile;
    gpu.features.int8SplitWorkgroups = few[2] ? Number(few[2]) : defaults.int8SplitWorkgroups;
  }
  const k = few ? 'tiled' : name.replace(/\+cq$/, '');
  // NBxRPS: the batched q4 products ('units' layout); rNB-GxRPS: the same in the 'rows' layout; 'tiled': the
  // prefill's matrix-matrix kernels; 'tc[-KS-WARPS]': the tensor-core products
  const tc = /^tc(?:-(\d+)-(\d+)(?:-(\d))?(?:-(nodequant|nox))?)?$/.exec(k);
  const rows = /^r(\d+)-(\d+)x(\d+)(?:-s(\d+))?(?:-u(\d+))?$/.exec(k);
  if (tc && gpu.features.selfTests['batched products (subgroup matrix)'] !== 'passed') {
    console.log(`kernel ${k}: skipped, the tensor-core products are off here (${gpu.features.selfTests['batched products (subgroup matrix)']})`);
    continue;
  }
  const [nb, rps] = k === 'tiled' || tc ? [8, 2] : rows ? [Number(rows[1]), Number(rows[3])] : (k.split('x').map(Number) as [number, number]);
  const lanes = rows ? { layout: 'rows' as const, rps, groups: Number(rows[2]), slices: rows[4] ? Number(rows[4]) : undefined, unroll: Number(rows[5] ?? 1) } : { layout: 'units' as const, rps, groups: 4 };
  engine.setBatchKernel(nb, lanes, k === 'tiled' ? 'tiled' : tc ? 'tensor-core' : 'matvec', tc ? (tc[1] ? { ks: Number(tc[1]), warps: Number(tc[2]), depth: Number(tc[3] ?? 1), lab: tc[4] === 'nodequant' ? 'no-dequant' : tc[4] === 'nox' ? 'no-x-loads' : undefined } : defaultTensorCoreSplit()) : undefined, combineQuantize);
  for (const B of batches) {
    const seqs: Sequence[] = Array.from({ length: B }, () => engine.createSequence());
    let ids = (await engine.step!(seqs.map((seq, b) => ({ seq, tokens: prompt(b), logits: true, choose: { sampling: GREEDY, random: 0 } })))) as number[];
    // a sanity check of the kernel's answers: the prompts' greedy ids against the first kernel's
    const first = (firstIds[B] ??= ids.slice());
    const same = ids.filter((id, b) => id === first[b]).length;
    const decode = async () => {
      ids = (await engine.step!(seqs.map((seq, b) => ({ seq, tokens: [ids[b]!], logits: true, choose: { sampling: GREEDY, random: 0 } })))) as number[];
    };
    for (let i = 0; i < 2; i++) await decode(); // warm
    const s0 = performance.now();
    for (let i = 0; i < steps; i++) await decode();
    const ms = (performance.now() - s0) / steps;
    results.push({ kernel: name, B, msPerStep: ms, tokPerS: (B * 1000) / ms });
    console.log(`kernel ${name}, B ${B}: ${ms.toFixed(2)} ms a step = ${((B * 1000) / ms).toFixed(1)} tok/s (KV buffer groups ${engine.kv.groups.length}; prompts' ids ${same} of ${B} the first kernel's)`);
    if (values.profile!.split(',').map(Number).includes(B)) {
      const p = await engine.profileDecodeRows(seqs);
      console.log(`  profile (µs a dispatch: embedding, layer 0, head, choice): ${p.map((d) => `${d.label} ${d.microseconds.toFixed(1)}`).join(', ')}`);
    }
    for (const s of seqs) s.dispose();
  }
}
console.log(JSON.stringify(results));

// the same engine under the server's scheduler (continuous batching, sampling bookkeeping, the
// launch-ahead of the next step), with the last kernel of --kernels: are its steps the bench's?
if (values.scheduler) {
  const scheduler = new Scheduler(engine, { engine, tokenizer: null, eosTokenIds: [] }, { maxActive: 64, maxQueued: 64 });
  const maxTokens = Number(values['scheduler-tokens']);
  for (const n of values.scheduler.split(',').map(Number)) {
    const before = scheduler.stats;
    const t0 = performance.now();
    const done = Array.from({ length: n }, (_, b) => new Promise<number>((ok, fail) => {
      let tokens = 0;
      scheduler.submit({ promptIds: prompt(b + 100), options: { maxTokens, temperature: 0, ignoreEos: true }, sink: { push: () => { tokens++; }, finish: (r) => ok(r.tokenIds.length), fail } });
    }));
    const tokens = (await Promise.all(done)).reduce((a, b) => a + b, 0);
    const wall = (performance.now() - t0) / 1000;
    const after = scheduler.stats;
    const steps = after.steps - before.steps, decodeSteps = after.decodeSteps - before.decodeSteps;
    console.log(`scheduler, ${n} generations (${engine.batchProducts}): ${tokens} tokens in ${wall.toFixed(2)} s = ${(tokens / wall).toFixed(1)} tok/s; ${steps} steps, ${(((after.stepSeconds - before.stepSeconds) / steps) * 1000).toFixed(2)} ms each; decode rows only ${decodeSteps} steps, ${(((after.decodeStepSeconds - before.decodeStepSeconds) / decodeSteps) * 1000).toFixed(2)} ms each, ${((after.decodeStepRows - before.decodeStepRows) / decodeSteps).toFixed(1)} rows; ${(((after.betweenStepSeconds - before.betweenStepSeconds) / steps) * 1000).toFixed(2)} ms between steps`);
  }
  await scheduler.close();
}
engine.dispose();
