/**
 * `pdvm bench`: decode and prefill speed of a synthetic model of a named shape, against the read
 * bandwidth the same run measures. Per path (fused, unfused; same weights):
 *   prefill: `context` prompt tokens, one step each (the decode kernels), timed to the GPU's finish
 *   decode:  `tokens` greedy tokens after them, pipelined (ids read back `lag` steps behind), timed
 *            between the first and the last id's arrival; a warm-up generation runs first
 * achieved GB/s = weight bytes one step reads x tokens/s; bandwidth_fraction = that / measured read GB/s.
 */
import type { Gpu, GpuFeatures } from '../backends/webgpu/device.js';
import { FusedDecoder, type DecodeAttentionKind, type DecodePath } from '../backends/webgpu/fused/decoder.js';
import { destroyFusedWeights, weightBytesPerToken } from '../backends/webgpu/fused/weights.js';
import { measureReadBandwidth } from './bandwidth.js';
import { BENCH_SHAPES, benchConfig, SyntheticWeights, type BenchEncoding } from './synthetic.js';

export interface BenchOptions {
  shape: string;
  encoding: BenchEncoding;
  group: number;
  tile: number;
  density: number;
  /** bitmap: expanded to q4 on the GPU (default, as the engine runs it) or walked by the bitmap kernel. */
  bitmap?: 'expand' | 'walk';
  context: number;
  tokens: number;
  paths: DecodePath[];
  seed: number;
  lag: number;
  workgroups?: number;
  /** Workgroups of the norm and int8 matvecs, each run over the same weights (0: the decoder's default). */
  normWorkgroups?: number[];
  /** The int8 kernels' norm prologue, each run over the same weights (FusedDecoderOptions.int8Prologue). */
  int8Prologue?: ('octets' | 'units')[];
  /** Row groups dealt across workgroups first or not, each run over the same weights (FusedDecoderOptions.interleaveWorkers). */
  interleave?: boolean[];
  /** Sampling temperatures, each run over the same weights: 0 greedy (argmax), above 0 sampled on the GPU with top-k 40, top-p 0.95, min-p 0.05. */
  temperatures?: number[];
  /** The greedy token's choice, each run over the same weights (FusedDecoderOptions.argmax). */
  argmax?: ('fused' | 'dispatch')[];
  /** The grid of the int8 kernels with a global x, each run over the same weights (FusedDecoderOptions.globalGrid). */
  globalGrid?: ('default' | 'one-round')[];
  /** SwiGLU's output storage, each run over the same weights (FusedDecoderOptions.act). */
  act?: ('f32' | 'f16')[];
  /** Runs of the whole list of variants (ABAB..., to see the spread within a process). */
  repeat?: number;
  /** Units a lane loads per pass of the subgroup matvecs, each run over the same weights (0: the decoder's default, as without). */
  unroll?: number[];
  attentionWorkgroup?: number;
  /** Decode attention kinds to run, each over the same weights (default the decoder's). */
  attention?: DecodeAttentionKind[];
  /** Chunks of keys of the split decode attention (default: the decoder's). */
  attentionSplits?: number;
  /** The KV caches to run, each over the same weights (default ['f16'], as generate runs). */
  kvCaches?: ('f16' | 'f32')[];
  workerWorkgroup?: number;
  /** x of the q4 products: int8 blocks with dot4I8Packed (default) or f32 (FusedDecoderOptions.matvecActivations). */
  activations?: 'int8' | 'f32';
  /** Compare the fused and unfused paths on this model first (logits over `check` tokens, greedy). */
  check: number;
  /**
   * Take the context's first positions as already in the cache (zeros, FusedDecoder.advance) instead
   * of prefilling them a step each: decode and attention times at that context (the kernels read the
   * same bytes whatever the cache holds) without the prefill's minutes; prefill_tokens_per_second is 0.
   */
  skipPrefill?: boolean;
  /** Log each dispatch's time (layer 0, head). */
  profile?: boolean;
  /** Bytes of the read-bandwidth probe's buffer. */
  probeBytes: number;
  log: (line: string) => void;
}

export interface BenchResult {
  shape: string;
  encoding: string;
  context: number;
  path: DecodePath;
  device: string;
  decode_tokens: number;
  decode_ms_per_token: number;
  decode_tokens_per_second: number;
  prefill_tokens_per_second: number;
  dispatches_per_token: number;
  dispatches_per_layer: number;
  weight_bytes_per_token: number;
  kv_bytes_per_token: number;
  kv_cache: 'f16' | 'f32';
  /** The decode attention kind asked for (FusedDecoderOptions.attention; default 'split'). */
  attention: DecodeAttentionKind;
  /** Units a lane loads per pass of the subgroup matvecs ('default': the decoder's choice a matrix). */
  unroll: number | 'default';
  norm_workgroups: number | 'default';
  int8_prologue: 'octets' | 'units' | 'default';
  interleave_workers: boolean | 'default';
  argmax: 'fused' | 'dispatch' | 'default';
  global_grid: 'default' | 'one-round';
  act: 'f32' | 'f16' | 'default';
  /** 0: greedy (argmax); above 0: sampled on the GPU (top-k 40, top-p 0.95, min-p 0.05). */
  temperature: number;
  /** With --profile: layer 0's attention dispatches (µs) and the time to read its K and V at the probe's bandwidth. */
  attention_us?: number;
  attention_kv_read_us?: number;
  achieved_gbps: number;
  measured_read_gbps: number;
  bandwidth_fraction: number;
  peak_gpu_bytes: number;
  workgroups: number;
  subgroups: boolean;
  /** The device's features and the self-tests' outcomes (device.ts). */
  features: GpuFeatures;
  /** x of the q4 products as run (int8 only where the kernel applies: q4 with subgroups). */
  activations: 'int8' | 'f32';
  /** With --check: largest relative difference of fused vs unfused logits, and greedy agreement. */
  check_max_rel_diff?: number;
  check_greedy_identical?: boolean;
}

function relativeDifference(a: Float32Array, b: Float32Array): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i]! - b[i]!) ** 2;
    den += b[i]! ** 2;
  }
  return Math.sqrt(num) / Math.sqrt(den || 1);
}

/** Fused vs unfused on the same weights: logits after each of n prompt tokens, then n greedy tokens. */
async function checkPaths(gpu: Gpu, config: ReturnType<typeof benchConfig>, w: Awaited<ReturnType<SyntheticWeights['model']>>, prompt: number[], n: number, workgroups?: number) {
  // f32 activations: both plans then compute the same sums, so they must agree to rounding
  const make = (path: DecodePath) => new FusedDecoder(gpu, config, w, { path, contextLength: 2 * n + 8, workgroups, matvecActivations: 'f32' });
  const fused = make('fused'), unfused = make('unfused');
  try {
    let worst = 0;
    for (let i = 0; i < n; i++) {
      const a = await fused.forwardLogits([prompt[i]!]);
      const b = await unfused.forwardLogits([prompt[i]!]);
      const d = relativeDifference(a, b);
      worst = Number.isNaN(d) ? Infinity : Math.max(worst, d);
    }
    fused.reset();
    unfused.reset();
    const g1 = await fused.generate(prompt.slice(0, n), { maxTokens: n, lag: 4 });
    const g2 = await unfused.generate(prompt.slice(0, n), { maxTokens: n, lag: 1 });
    return { worst, identical: g1.length === g2.length && g1.every((t, i) => t === g2[i]) };
  } finally {
    fused.dispose();
    unfused.dispose();
  }
}

function randomPrompt(n: number, vocab: number, seed: number): number[] {
  let x = seed || 1;
  return Array.from({ length: n }, () => {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    return (x >>> 8) % vocab;
  });
}

export async function runBench(gpu: Gpu, o: BenchOptions): Promise<BenchResult[]> {
  const shape = BENCH_SHAPES[o.shape];
  if (!shape) throw new Error(`unknown shape '${o.shape}'; one of ${Object.keys(BENCH_SHAPES).join(', ')}`);
  const config = benchConfig(shape);
  o.log(`device: ${gpu.adapterDescription}; ${gpu.featureSummary}`);
  const bw = await measureReadBandwidth(gpu, { bytes: o.probeBytes });
  o.log(`read bandwidth: ${bw.medianGbps.toFixed(0)} GB/s median of [${bw.samplesGbps.map((g) => g.toFixed(0)).join(', ')}] over ${(bw.bytes / 2 ** 30).toFixed(2)} GiB`);

  const t0 = performance.now();
  const synthetic = new SyntheticWeights(gpu, { encoding: o.encoding, group: o.group, tile: o.tile, density: o.density, seed: o.seed, bitmap: o.bitmap });
  const w = await synthetic.model(config);
  const perToken = weightBytesPerToken(w);
  o.log(`weights: ${o.shape} ${o.encoding}, ${(w.bytes / 1e9).toFixed(2)} GB on the GPU, ${(perToken / 1e9).toFixed(3)} GB read a token (made in ${((performance.now() - t0) / 1000).toFixed(1)} s)`);

  const results: BenchResult[] = [];
  const prompt = randomPrompt(Math.max(o.context, o.check), config.vocabSize, o.seed);
  try {
    const check = o.check > 0 ? await checkPaths(gpu, config, w, prompt, o.check, o.workgroups) : null;
    if (check) o.log(`check (f32 activations): fused vs unfused logits relative difference <= ${check.worst.toExponential(2)} over ${o.check} tokens; greedy continuations ${check.identical ? 'identical' : 'DIFFER'}`);
    // every combination of the listed variants, each over the same weights, the list `repeat` times
    type Variant = { path: DecodePath; kvCache: 'f16' | 'f32'; attentionKind: DecodeAttentionKind; unroll: number; normWorkgroups: number; prologue?: 'octets' | 'units'; interleave?: boolean; argmax?: 'fused' | 'dispatch'; globalGrid?: 'default' | 'one-round'; act?: 'f32' | 'f16'; temperature: number };
    let variants: Variant[] = [{ path: o.paths[0]!, kvCache: 'f16', attentionKind: 'split', unroll: 0, normWorkgroups: 0, temperature: 0 }];
    const each = <K extends keyof Variant>(key: K, values: Variant[K][] | undefined) => {
      if (values && values.length > 0) variants = variants.flatMap((v) => values.map((x) => ({ ...v, [key]: x })));
    };
    each('path', o.paths);
    each('kvCache', o.kvCaches);
    each('attentionKind', o.attention);
    each('unroll', o.unroll);
    each('normWorkgroups', o.normWorkgroups);
    each('prologue', o.int8Prologue);
    each('interleave', o.interleave);
    each('temperature', o.temperatures);
    each('argmax', o.argmax);
    each('globalGrid', o.globalGrid);
    each('act', o.act);
    variants = Array.from({ length: Math.max(1, o.repeat ?? 1) }, () => variants).flat();
    for (const { path, kvCache, attentionKind, unroll, normWorkgroups, prologue, interleave, argmax, globalGrid, act, temperature } of variants) {
      const decoder = new FusedDecoder(gpu, config, w, {
        path, contextLength: o.context + o.tokens + 16, workgroups: o.workgroups, normWorkgroups: normWorkgroups || undefined, unroll: unroll || undefined, attentionWorkgroup: o.attentionWorkgroup,
        attention: attentionKind, attentionSplits: o.attentionSplits, workerWorkgroup: o.workerWorkgroup, matvecActivations: o.activations, kvCache, int8Prologue: prologue, interleaveWorkers: interleave, argmax, globalGrid, act,
      });
      const variantName = `${kvCache} KV, ${attentionKind} attention, unroll ${unroll || 'default'}, norm workgroups ${normWorkgroups || 'default'}, prologue ${prologue ?? 'default'}, interleave ${interleave ?? 'default'}, argmax ${argmax ?? 'default'}, global grid ${globalGrid ?? 'default'}, act ${act ?? 'default'}, ${temperature > 0 ? `sampled at temperature ${temperature}` : 'greedy'}`;
      // seeded uniform draws for the sampled runs
      let draws = o.seed || 1;
      const sampling = temperature > 0 ? { temperature, topK: 40, topP: 0.95, minP: 0.05 } : undefined;
      const random = () => ((draws = (Math.imul(draws, 1103515245) + 12345) >>> 0) >>> 8) / 2 ** 24;
      try {
        // warm-up: pipelines, caches, clocks
        await decoder.generate(prompt.slice(0, 8), { maxTokens: 8, lag: o.lag, sampling, random });
        decoder.reset();
        const p0 = performance.now();
        if (o.skipPrefill) decoder.advance(o.context - 1);
        else await decoder.prefill(prompt.slice(0, o.context - 1));
        const prefillSeconds = o.skipPrefill ? Infinity : (performance.now() - p0) / 1000;
        const kvBytes = kvCache === 'f32' ? 4 : 2;
        const arrivals: number[] = [];
        await decoder.generate(prompt.slice(o.context - 1, o.context), { maxTokens: o.tokens + 1, lag: o.lag, sampling, random, onToken: () => (arrivals.push(performance.now()), false) });
        let attention: { us: number; kvReadUs: number } | null = null;
        if (o.profile) {
          // after the timed decode (the cache holds context + tokens positions; profile overwrites the activations)
          const rows = await decoder.profile(200, { sample: temperature > 0 });
          o.log(`${path} ${variantName} profile at position ${decoder.length - 1} (µs per dispatch): ${rows.map((r) => `${r.label} ${r.microseconds.toFixed(1)}`).join(', ')}`);
          // layer 0's attention against reading its keys and values once at the probe's bandwidth
          const us = rows.filter((r) => r.label.startsWith('attention')).reduce((a, r) => a + r.microseconds, 0);
          const bytes = 2 * decoder.length * config.numKvHeads * config.headDim * kvBytes;
          attention = { us, kvReadUs: bytes / (bw.medianGbps * 1e3) };
          o.log(`${path} attention over ${decoder.length} keys (${kvCache} KV cache, ${(bytes / 1e6).toFixed(2)} MB a layer): ${us.toFixed(1)} µs; reading those bytes at the probe's ${bw.medianGbps.toFixed(0)} GB/s takes ${attention.kvReadUs.toFixed(1)} µs (${(us / attention.kvReadUs).toFixed(2)}x)`);
        }
        const decodeSeconds = (arrivals.at(-1)! - arrivals[0]!) / 1000;
        const n = arrivals.length - 1;
        const tps = n / decodeSeconds;
        const achieved = (perToken * tps) / 1e9;
        const kvPerToken = 2 * config.numLayers * config.numKvHeads * config.headDim * kvBytes * (o.context + o.tokens / 2);
        const r: BenchResult = {
          shape: o.shape,
          encoding: o.encoding === 'q4' ? `q4 g${o.group}` : o.encoding === 'bitmap' ? `bitmap ${o.density * 100}% tile ${o.tile}, q4 values, ${(o.bitmap ?? 'expand') === 'expand' ? 'expanded to q4' : 'walked'}` : o.encoding,
          context: o.context,
          path,
          device: gpu.adapterDescription,
          decode_tokens: n,
          decode_ms_per_token: (decodeSeconds * 1000) / n,
          decode_tokens_per_second: tps,
          prefill_tokens_per_second: (o.context - 1) / prefillSeconds,
          dispatches_per_token: decoder.dispatchesPerToken,
          dispatches_per_layer: decoder.dispatchesPerLayer,
          weight_bytes_per_token: perToken,
          kv_bytes_per_token: kvPerToken,
          kv_cache: kvCache,
          attention: attentionKind,
          unroll: unroll || 'default',
          norm_workgroups: normWorkgroups || 'default',
          int8_prologue: prologue ?? 'default',
          interleave_workers: interleave ?? 'default',
          argmax: argmax ?? 'default',
          global_grid: globalGrid ?? 'default',
          act: act ?? 'default',
          temperature,
          ...(attention ? { attention_us: attention.us, attention_kv_read_us: attention.kvReadUs } : {}),
          achieved_gbps: achieved,
          measured_read_gbps: bw.medianGbps,
          bandwidth_fraction: achieved / bw.medianGbps,
          peak_gpu_bytes: synthetic.bytes + decoder.allocatedBytes,
          workgroups: decoder.workgroups,
          subgroups: gpu.subgroups,
          features: gpu.features,
          activations: (o.activations ?? 'int8') === 'int8' && gpu.subgroups && (o.encoding === 'q4' || o.encoding === 'bitmap') && (o.bitmap ?? 'expand') === 'expand' ? 'int8' : 'f32',
          ...(check ? { check_max_rel_diff: check.worst, check_greedy_identical: check.identical } : {}),
        };
        o.log(
          `${path} (${variantName}): decode ${r.decode_ms_per_token.toFixed(3)} ms/token (${tps.toFixed(1)} tok/s), ${achieved.toFixed(0)} GB/s = ${(100 * r.bandwidth_fraction).toFixed(1)}% of measured; ` +
            `prefill ${r.prefill_tokens_per_second.toFixed(1)} tok/s; ${r.dispatches_per_token} dispatches/token (${r.dispatches_per_layer}/layer)`,
        );
        results.push(r);
      } finally {
        decoder.dispose();
      }
    }
  } finally {
    destroyFusedWeights(w);
  }
  return results;
}
