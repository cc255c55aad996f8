/**
 * `pdvm bench --prefill N`: prompt processing as llama-bench's ppN measures it. A synthetic model of
 * the shape (random weights in the encoding, made on the GPU) behind a WebGpuEngine; an N-token
 * prompt goes through the engine's real prefill path (forward(): the prompt in steps of the prefill
 * chunk, each layer's products through the matrix-matrix kernels, attention over the cache, the last
 * token's logits read back), timed from the call to the logits' arrival, after a warm-up of at least
 * a second that builds the pipelines and wakes the GPU. prompt_tokens_per_second = N / that time (median of the runs).
 */
import type { Gpu, GpuFeatures } from '../backends/webgpu/device.js';
import { WebGpuEngine } from '../backends/webgpu/engine.js';
import { engineWeightsOfFused } from '../backends/webgpu/fused/engine-weights.js';
import { destroyFusedWeights } from '../backends/webgpu/fused/weights.js';
import { prefillKernel, prefillPathDescription } from '../backends/webgpu/ops.js';
import { BENCH_SHAPES, benchConfig, SyntheticWeights, type BenchEncoding } from './synthetic.js';

export interface PrefillBenchOptions {
  shape: string;
  encoding: BenchEncoding;
  group: number;
  tile: number;
  density: number;
  seed: number;
  /** Prompt tokens. */
  prompt: number;
  /** Tokens per prefill step (the engine's prefillChunk); default the engine's. */
  chunk?: number;
  /** Timed runs (the median is reported). */
  runs: number;
  /** Also time each dispatch of a layer's prefill step (profile_us_per_layer in the result). */
  profile?: boolean;
  log: (line: string) => void;
}

export interface PrefillBenchResult {
  shape: string;
  encoding: string;
  prompt_tokens: number;
  prompt_tokens_per_second: number;
  prompt_ms: number;
  prompt_ms_runs: number[];
  prefill_chunk: number;
  /** The product kernel: 'subgroup-matrix-f16' or 'f32'. */
  prefill_kernel: string;
  prefill_path: string;
  weight_bytes: number;
  device: string;
  features: GpuFeatures;
  /** With --profile: each dispatch of one layer's step of min(N, chunk) tokens, microseconds. */
  profile_us_per_layer?: { label: string; microseconds: number }[];
}

function randomPrompt(n: number, vocab: number, seed: number): number[] {
  let x = seed || 1;
  return Array.from({ length: n }, () => {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    return (x >>> 8) % vocab;
  });
}

export async function runPrefillBench(gpu: Gpu, o: PrefillBenchOptions): Promise<PrefillBenchResult> {
  const shape = BENCH_SHAPES[o.shape];
  if (!shape) throw new Error(`unknown shape '${o.shape}'; one of ${Object.keys(BENCH_SHAPES).join(', ')}`);
  if (!(o.prompt >= 1)) throw new Error('--prefill must be at least 1');
  const config = benchConfig(shape);
  o.log(`device: ${gpu.adapterDescription}; ${gpu.featureSummary}`);
  const t0 = performance.now();
  const synthetic = new SyntheticWeights(gpu, { encoding: o.encoding, group: o.group, tile: o.tile, density: o.density, seed: o.seed });
  const fused = await synthetic.model(config);
  o.log(`weights: ${o.shape} ${o.encoding}, ${(fused.bytes / 1e9).toFixed(2)} GB on the GPU (made in ${((performance.now() - t0) / 1000).toFixed(1)} s)`);
  let engine: WebGpuEngine | null = null;
  try {
    engine = await WebGpuEngine.overGpuWeights(gpu, config, engineWeightsOfFused(fused), { contextLength: o.prompt + 1, prefillChunk: o.chunk });
    if (engine.decodeNotice) o.log(`notice: ${engine.decodeNotice}`);
    o.log(`prefill: ${engine.prefillChunk} tokens a step; products ${prefillPathDescription(gpu)}`);
    const prompt = randomPrompt(o.prompt, config.vocabSize, o.seed);
    const seq = engine.createSequence();
    // warm-up: every pipeline of a full step and of a last partial one, repeated for at least a second
    // (on the H100 and H200 the first runs after the device was idle took 2-4x the later ones:
    // docs/PERFORMANCE.md, llama-3.2-1b pp512 runs of 2026-12-05)
    const w0 = performance.now();
    do {
      seq.reset();
      await engine.forward(seq, prompt.slice(0, Math.min(o.prompt, engine.prefillChunk + 1)));
    } while (performance.now() - w0 < 1000);
    const times: number[] = [];
    for (let i = 0; i < o.runs; i++) {
      seq.reset();
      const p0 = performance.now();
      const logits = await engine.forward(seq, prompt);
      times.push(performance.now() - p0);
      if (!Number.isFinite(logits[0]!)) throw new Error(`prefill gave a non-finite logit (${logits[0]})`);
    }
    let profile: { label: string; microseconds: number }[] | undefined;
    if (o.profile) {
      // the prompt's last full step, at its positions: a long prompt's attention where it costs most
      const T = Math.min(o.prompt, engine.prefillChunk), pos0 = o.prompt - T;
      profile = await engine.profilePrefill(seq, T, 20, pos0);
      const layer = profile.filter((p) => !p.label.startsWith('embedding')).reduce((a, p) => a + p.microseconds, 0);
      o.log(`profile, one step of ${T} tokens at positions ${pos0}..${o.prompt - 1} (µs a dispatch; layer 0, repeated alone): ${profile.map((p) => `${p.label} ${p.microseconds.toFixed(1)}`).join(', ')}; a layer ${layer.toFixed(0)} µs x ${config.numLayers} layers = ${((layer * config.numLayers) / 1000).toFixed(1)} ms`);
    }
    const sorted = [...times].sort((a, b) => a - b);
    const ms = sorted[Math.floor(sorted.length / 2)]!;
    const r: PrefillBenchResult = {
      shape: o.shape,
      encoding: o.encoding === 'q4' ? `q4 g${o.group}` : o.encoding,
      prompt_tokens: o.prompt,
      prompt_tokens_per_second: o.prompt / (ms / 1000),
      prompt_ms: ms,
      prompt_ms_runs: times,
      prefill_chunk: engine.prefillChunk,
      prefill_kernel: prefillKernel(gpu),
      prefill_path: prefillPathDescription(gpu),
      weight_bytes: fused.bytes,
      device: gpu.adapterDescription,
      features: gpu.features,
      ...(profile ? { profile_us_per_layer: profile } : {}),
    };
    o.log(`pp${o.prompt}: ${r.prompt_tokens_per_second.toFixed(0)} tok/s (${ms.toFixed(1)} ms; runs ${times.map((t) => t.toFixed(1)).join(', ')} ms)`);
    return r;
  } finally {
    engine?.dispose();
    destroyFusedWeights(fused);
  }
}
