/**
 * Structured output benchmark (figures go to docs/PERFORMANCE.md):
 *   node dist/bench/grammar.js decode [--backend cpu|webgpu] [--runs 5] [--model PATH (default the demo model)]
 *     constrained (a JSON schema) against unconstrained decoding of the demo model, tok/s over the
 *     decode phase, same prompt, temperature 1; the constrained runs also report how many tokens were
 *     forced (taken without sampling) and the time spent in the grammar matcher per token.
 *   node dist/bench/grammar.js mask [--vocab 4096,32768,131072] [--steps 200]
 *     the mask's cost against vocabulary size on the CPU, on synthetic vocabularies: per step, xgrammar
 *     computing the next bitmask and accepting a token, and the CPU sampler applying the mask
 *     (maskLogits + top-k 40 sampling) against sampling without one. The grammar is JSON (any object);
 *     the token each step is a random allowed one.
 *   node dist/bench/grammar.js gpu-mask [--shape llama-3.2-1b] [--vocab 32768,131072] [--steps 256]
 *     the mask's cost on the WebGPU fused path against vocabulary size: a synthetic q4 model of the
 *     shape with its vocabulary (and lm_head) set to each size, temperature-1 sampling on the GPU, ms
 *     a token for (a) no grammar, 8 steps in flight (the default decode), (b) no grammar, 1 step in
 *     flight (a constrained decode must wait for each token), (c) an allow-everything mask: the
 *     bitmask upload and token_mask dispatch each step, lag 1, no matcher, (d) xgrammar's JSON grammar
 *     over a synthetic vocabulary of that size (syntheticVocab): the matcher's mask and accept on the
 *     CPU each step as well (its time reported on its own), no token forced. (c) - (b) is the GPU
 *     side of the mask, (d) - (c) the matcher. Also the mask alone: its upload and dispatch over a
 *     logits row, 1000 submits back to back (µs each).
 * A program, not a test.
 */
import { scriptArgs } from '../scripts/args.js';
import '../src/io/node-files.js'; // Node file access (a bundle of this program does not reach it by the computed import)
import os from 'node:os';
import { demoModelPath } from '../src/cli/common.js';
import { createEngine } from '../src/backends/index.js';
import { loadModel } from '../src/model/load.js';
import { generateAll } from '../src/runtime/generate.js';
import { GrammarCompiler, type TokenizerJson, jumpTokenizer } from '../src/runtime/grammar/compiler.js';
import { xgrammar, type XgrammarModule } from '../src/runtime/grammar/xgrammar.js';
import { resolveSampling, Sampler } from '../src/runtime/sampling.js';
import type { TokenFilter } from '../src/runtime/token-filter.js';

const { values, positionals } = scriptArgs({
  allowPositionals: true,
  options: {
    backend: { type: 'string', default: 'cpu' },
    runs: { type: 'string', default: '5' },
    vocab: { type: 'string', default: '4096,32768,131072' },
    steps: { type: 'string', default: '200' },
    shape: { type: 'string', default: 'llama-3.2-1b' },
    model: { type: 'string' },
  },
});
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const machine = `${os.cpus()[0]?.model ?? 'cpu'} x${os.cpus().length}, node ${process.version}, load ${os.loadavg()[0]!.toFixed(1)}`;

const SCHEMA = {
  type: 'object',
  properties: {
    name: { type: 'string', pattern: '^[a-z ]{1,24}$' },
    age: { type: 'integer', minimum: 0, maximum: 120 },
    city: { type: 'string', maxLength: 24 },
    tags: { type: 'array', items: { enum: ['red', 'green', 'blue'] }, maxItems: 3 },
  },
  required: ['name', 'age', 'city', 'tags'],
  additionalProperties: false,
};

async function decodeBench(): Promise<void> {
  const model = await loadModel(values.model ?? demoModelPath());
  const backend = values.backend as 'cpu' | 'webgpu';
  const { engine } = await createEngine(model, { backend, contextLength: 512 });
  const ctx = { engine, tokenizer: model.tokenizer, eosTokenIds: model.config.eosTokenIds };
  const grammars = new GrammarCompiler(model.tokenizer!.files.tokenizerJson as TokenizerJson, model.config.vocabSize, jumpTokenizer(model.tokenizer!));
  const constraint = (await grammars.responseFormat({ type: 'json_schema', schema: SCHEMA }))!;
  // time spent in the matcher: wrap the constraint's filters
  let matcherMs = 0, forced = 0, sampled = 0;
  const timed = {
    description: constraint.description,
    async newFilter(stops: number[]): Promise<TokenFilter> {
      const f = await constraint.newFilter(stops);
      return {
        get bitmask() { return f.bitmask; },
        get forced() { return f.forced; },
        get done() { return f.done; },
        async accept(id: number) {
          const t = performance.now();
          if (f.forced !== null) forced++;
          else sampled++;
          await f.accept(id);
          matcherMs += performance.now() - t;
        },
        dispose: () => f.dispose(),
      };
    },
  };
  const prompt = model.tokenizer!.encode('The jury said', true);
  const seq = engine.createSequence();
  const runs = Number(values.runs);
  await generateAll(ctx, seq, prompt, { temperature: 1, seed: 99, maxTokens: 16, constraint: timed }); // warm-up (xgrammar, kernels)
  matcherMs = forced = sampled = 0;
  const free: number[] = [], constrained: number[] = [];
  let tokens = 0;
  for (let r = 0; r < runs; r++) {
    const c = await generateAll(ctx, seq, prompt, { temperature: 1, seed: r, maxTokens: 96, constraint: timed });
    constrained.push(c.tokensPerSecond);
    tokens += c.tokenIds.length;
    // unconstrained: as many tokens as the constrained run wrote
    const u = await generateAll(ctx, seq, prompt, { temperature: 1, seed: r, maxTokens: Math.max(2, c.tokenIds.length), ignoreEos: true });
    free.push(u.tokensPerSecond);
    if (r === 0) console.log(`e.g. ${c.text} (${c.finishReason})`);
  }
  const out = {
    bench: 'grammar-decode', backend: engine.backend, machine, date: new Date().toISOString(), runs,
    unconstrained_tok_s: +median(free).toFixed(1), constrained_tok_s: +median(constrained).toFixed(1),
    ratio: +(median(constrained) / median(free)).toFixed(2),
    tokens_per_run: +(tokens / runs).toFixed(1), forced_share: +(forced / (forced + sampled)).toFixed(2),
    matcher_ms_per_token: +(matcherMs / (forced + sampled)).toFixed(3),
  };
  console.log(`${engine.backend}: unconstrained ${out.unconstrained_tok_s} tok/s, constrained ${out.constrained_tok_s} tok/s (x${out.ratio}); ` +
    `${out.tokens_per_run} tokens a run, ${(out.forced_share * 100).toFixed(0)}% forced, matcher ${out.matcher_ms_per_token} ms/token`);
  console.log(JSON.stringify(out));
  seq.dispose();
  engine.dispose();
}

/** A synthetic byte-level vocabulary: the 95 printable ASCII characters, then random pieces of 2..8. */
function syntheticVocab(size: number, seed: number): string[] {
  let s = seed >>> 0;
  const rand = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  const chars = ' etaoinshrdlucmfwypvbgkqjxz{}[]":,0123456789.-ETAOINSHRDLU';
  const seen = new Set<string>();
  const out: string[] = [];
  for (let c = 32; c < 127; c++) out.push(String.fromCharCode(c) === ' ' ? 'Ġ' : String.fromCharCode(c));
  out.forEach((t) => seen.add(t));
  while (out.length < size - 1) {
    const n = 2 + Math.floor(rand() * 7);
    let t = '';
    for (let i = 0; i < n; i++) t += chars[Math.floor(rand() * rand() * chars.length)]!;
    t = t.replace(/ /g, 'Ġ');
    if (!seen.has(t)) (seen.add(t), out.push(t));
  }
  out.push('</s>'); // the stop token, last
  return out;
}

async function maskBench(): Promise<void> {
  const xg = await xgrammar();
  const steps = Number(values.steps);
  const rows: Record<string, number | string>[] = [];
  for (const vocab of values.vocab!.split(',').map(Number)) {
    const tokens = syntheticVocab(vocab, vocab);
    const t0 = performance.now();
    const info = await xg.TokenizerInfo.createTokenizerInfo(tokens, 'byte_level', false, vocab, [vocab - 1]);
    const compiler = await xg.GrammarCompiler.createGrammarCompiler(info);
    const compiled = await compiler.compileBuiltinJSONGrammar();
    const compileMs = performance.now() - t0;
    const matcher = await xg.GrammarMatcher.createGrammarMatcher(compiled, [vocab - 1]);
    const sampler = new Sampler(resolveSampling({ temperature: 1, topK: 40, topP: 0.95, minP: 0.05, seed: 1 }), vocab);
    const plain = new Sampler(resolveSampling({ temperature: 1, topK: 40, topP: 0.95, minP: 0.05, seed: 1 }), vocab);
    let s = 7;
    const rand = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
    const logits = Float32Array.from({ length: vocab }, () => rand() * 10);
    let maskMs = 0, acceptMs = 0, sampleMs = 0, plainMs = 0, n = 0;
    const warmup = 20;
    for (let i = -warmup; i < steps; i++) {
      if (i === 0) maskMs = acceptMs = sampleMs = plainMs = n = 0;
      let t = performance.now();
      const bitmask = await matcher.getNextTokenBitmask();
      maskMs += performance.now() - t;
      t = performance.now();
      let id = sampler.sample(logits, bitmask);
      sampleMs += performance.now() - t;
      t = performance.now();
      plain.sample(logits);
      plainMs += performance.now() - t;
      if (id === vocab - 1) {
        matcher.reset();
        continue;
      }
      for (let k = 0; k < 4 && rand() < 0.3; k++) logits[Math.floor(rand() * vocab)] = rand() * 10; // vary the choice a little
      t = performance.now();
      if (!matcher.acceptToken(id)) throw new Error(`token ${id} refused`);
      acceptMs += performance.now() - t;
      n++;
    }
    const row = {
      vocab, compile_ms: +compileMs.toFixed(0), mask_ms: +(maskMs / steps).toFixed(3), accept_ms: +(acceptMs / n).toFixed(3),
      masked_sample_ms: +(sampleMs / steps).toFixed(3), plain_sample_ms: +(plainMs / steps).toFixed(3),
    };
    rows.push(row);
    console.log(`vocab ${vocab}: compile ${row.compile_ms} ms; per token: mask ${row.mask_ms} ms, accept ${row.accept_ms} ms, masked sampling ${row.masked_sample_ms} ms vs ${row.plain_sample_ms} ms unmasked`);
    matcher.dispose();
  }
  console.log(JSON.stringify({ bench: 'grammar-mask', machine, date: new Date().toISOString(), steps, rows }));
}

/** (d)'s filter: xgrammar over a synthetic vocabulary, never forcing a token; restarts the grammar when it completes. */
class SyntheticJsonFilter implements TokenFilter {
  bitmask: Int32Array = new Int32Array(0);
  readonly forced = null;
  readonly done = false;
  matcherMs = 0;
  steps = 0;
  constructor(private readonly matcher: Awaited<ReturnType<XgrammarModule['GrammarMatcher']['createGrammarMatcher']>>) {}
  async refresh(): Promise<void> {
    const t = performance.now();
    this.bitmask = await this.matcher.getNextTokenBitmask();
    this.matcherMs += performance.now() - t;
  }
  async accept(id: number): Promise<void> {
    const t = performance.now();
    if (!this.matcher.acceptToken(id)) throw new Error(`token ${id} refused: the GPU sampler ignored the mask`);
    if (this.matcher.isTerminated()) this.matcher.reset();
    this.matcherMs += performance.now() - t;
    this.steps++;
    await this.refresh();
  }
  dispose(): void {
    this.matcher.dispose();
  }
}

async function gpuMaskBench(): Promise<void> {
  const { Gpu } = await import('../src/backends/webgpu/device.js');
  const { FusedDecoder } = await import('../src/backends/webgpu/fused/decoder.js');
  const { tokenMaskOp } = await import('../src/backends/webgpu/ops.js');
  const { encodeDispatches } = await import('../src/backends/webgpu/dispatch.js');
  const { BENCH_SHAPES, benchConfig, SyntheticWeights } = await import('../src/bench/synthetic.js');
  const xg = await xgrammar();
  const steps = Number(values.steps);
  const shape = BENCH_SHAPES[values.shape!];
  if (!shape) throw new Error(`--shape: one of ${Object.keys(BENCH_SHAPES).join(', ')}`);
  const gpu = await Gpu.acquire();
  console.log(`device: ${gpu.adapterDescription}; ${gpu.featureSummary}`);
  const sampling = { temperature: 1, topK: 40, topP: 0.95, minP: 0.05 };
  let s = 12345;
  const random = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  const rows: Record<string, number | string>[] = [];
  try {
    for (const vocab of values.vocab!.split(',').map(Number)) {
      const config = benchConfig({ ...shape, vocab });
      const synthetic = new SyntheticWeights(gpu, { encoding: 'q4', group: 32, tile: 64, density: 0.5, seed: 1 });
      const weights = await synthetic.model(config);
      const decoder = new FusedDecoder(gpu, config, weights, { path: 'fused', contextLength: 8 + 4 * (steps + 16) + 64 });
      const prompt = Array.from({ length: 8 }, (_, i) => (i * 7919) % vocab);
      const tokens = syntheticVocab(vocab, vocab);
      const t0 = performance.now();
      const info = await xg.TokenizerInfo.createTokenizerInfo(tokens, 'byte_level', false, vocab, [vocab - 1]);
      const compiled = await (await xg.GrammarCompiler.createGrammarCompiler(info)).compileBuiltinJSONGrammar();
      const compileMs = performance.now() - t0;
      const allowAll: TokenFilter = { bitmask: new Int32Array(Math.ceil(vocab / 32)).fill(-1), forced: null, done: false, accept: async () => {}, dispose: () => {} };
      // ms a token over `steps` tokens after the first (whose step also ran the prompt)
      const timed = async (lag: number, filter: TokenFilter | null): Promise<number> => {
        decoder.reset();
        const arrivals: number[] = [];
        await decoder.generate(prompt, { maxTokens: steps + 1, lag, sampling, random, filter, onToken: () => (arrivals.push(performance.now()), false) });
        return (arrivals.at(-1)! - arrivals[0]!) / (arrivals.length - 1);
      };
      await timed(8, null); // warm-up: pipelines
      await timed(1, allowAll);
      const runs = { free8: [] as number[], free1: [] as number[], allowAll: [] as number[], json: [] as number[], matcher: [] as number[] };
      for (let r = 0; r < 3; r++) {
        runs.free8.push(await timed(8, null));
        runs.free1.push(await timed(1, null));
        runs.allowAll.push(await timed(1, allowAll));
        const filter = new SyntheticJsonFilter(await xg.GrammarMatcher.createGrammarMatcher(compiled, [vocab - 1]));
        await filter.refresh();
        filter.matcherMs = 0;
        runs.json.push(await timed(1, filter));
        runs.matcher.push(filter.matcherMs / filter.steps);
        filter.dispose();
      }
      // the mask alone: its upload and dispatch over a logits row, one submit each, 1000 back to back
      const logits = gpu.createBuffer('bench.logits', vocab * 4, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST);
      const maskBuffer = gpu.createBuffer('bench.mask', Math.ceil(vocab / 32) * 4, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST);
      const mask = tokenMaskOp(gpu, vocab, logits, maskBuffer);
      const bits = new Int32Array(Math.ceil(vocab / 32)).fill(0x55555555);
      const maskLoop = async (n: number): Promise<number> => {
        const t = performance.now();
        for (let i = 0; i < n; i++) {
          gpu.device.queue.writeBuffer(maskBuffer, 0, bits);
          const encoder = gpu.device.createCommandEncoder();
          const pass = encoder.beginComputePass();
          encodeDispatches(pass, [mask], 1);
          pass.end();
          gpu.device.queue.submit([encoder.finish()]);
        }
        await gpu.device.queue.onSubmittedWorkDone();
        return ((performance.now() - t) * 1000) / n;
      };
      await maskLoop(50);
      const maskOnlyUs = median([await maskLoop(1000), await maskLoop(1000), await maskLoop(1000)]);
      logits.destroy();
      maskBuffer.destroy();
      const row = {
        vocab, compile_ms: +compileMs.toFixed(0), mask_upload_dispatch_us: +maskOnlyUs.toFixed(1),
        free_lag8_ms: +median(runs.free8).toFixed(4), free_lag1_ms: +median(runs.free1).toFixed(4),
        allow_all_mask_ms: +median(runs.allowAll).toFixed(4), json_grammar_ms: +median(runs.json).toFixed(4),
        matcher_ms: +median(runs.matcher).toFixed(4),
        gpu_mask_cost_ms: +(median(runs.allowAll) - median(runs.free1)).toFixed(4),
      };
      rows.push(row);
      console.log(`vocab ${vocab} (${values.shape} q4, lm_head ${vocab} rows): ms a token: no grammar ${row.free_lag8_ms} (lag 8), ${row.free_lag1_ms} (lag 1); ` +
        `allow-all mask ${row.allow_all_mask_ms} (GPU mask cost ${row.gpu_mask_cost_ms}; upload + dispatch alone ${row.mask_upload_dispatch_us} µs); JSON grammar ${row.json_grammar_ms} of which matcher ${row.matcher_ms} on the CPU; compile ${row.compile_ms} ms`);
      decoder.dispose();
    }
  } finally {
    gpu.destroy();
  }
  console.log(JSON.stringify({ bench: 'grammar-gpu-mask', device: gpu.adapterDescription, machine, date: new Date().toISOString(), shape: values.shape, steps, rows }));
}

if (positionals[0] === 'mask') await maskBench();
else if (positionals[0] === 'gpu-mask') await gpuMaskBench();
else await decodeBench();
