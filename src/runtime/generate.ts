/**
 * The generation loop: one prefill of the prompt, then one token at a time through the KV cache,
 * streaming text as it becomes final. Stops on EOS, a stop string, max tokens, the end of the context
 * or an AbortSignal.
 *
 * Two ways to get the tokens, with the same stopping rules and text handling (`take`): through
 * forward() and the CPU sampler, or, where the engine has decodeOnDevice and the sampling needs nothing
 * only the CPU sampler does (penalties), from the device, which chooses each token itself with one
 * Random(seed) draw per token and runs ahead; it is told to stop through onToken, and what it computed
 * past the stop is discarded.
 */
import { AbortError, InvalidInputError } from '../errors.js';
import type { TextTokenizer } from '../tokenizer/tokenizer.js';
import { Detokenizer } from './detokenizer.js';
import type { DeviceSampling, Engine, Sequence } from './engine.js';
import { Random, resolveSampling, Sampler, type ResolvedSampling, type SamplingOptions } from './sampling.js';
import type { Constraint, TokenFilter } from './token-filter.js';

export interface GenerateOptions extends SamplingOptions {
  /** New tokens at most (default 256). */
  maxTokens?: number;
  /** Generation ends before the first occurrence of any of these; the stop string is not returned. */
  stop?: string[];
  /** Token ids that end generation (default: the model's EOS ids). */
  eosTokenIds?: number[];
  /** Keep going past EOS (benchmarks, tests). */
  ignoreEos?: boolean;
  signal?: AbortSignal;
  /**
   * A compiled grammar (grammar/compiler.ts): every token is chosen among those it allows; the
   * generation ends ('stop') when it is complete and a stop token (eosTokenIds) is chosen. Stop
   * strings and ignoreEos do not apply to a constrained generation.
   */
  constraint?: Constraint | null;
}

export type FinishReason = 'stop' | 'length';

export interface GenerationChunk {
  /** Text that became final with this step (may be ''). */
  text: string;
  /** Token ids generated in this step. */
  tokenIds: number[];
}

export interface GenerationResult {
  text: string;
  tokenIds: number[];
  promptTokens: number;
  /** Prompt tokens taken from a kept KV cache instead of being prefilled (prefix reuse). */
  cachedTokens: number;
  finishReason: FinishReason;
  /** Time from start to the end of the prefill (the first token's logits), ms. */
  prefillMs: number;
  /** Time spent decoding after the first token, ms. */
  decodeMs: number;
  /** Generated tokens per second over the decode phase (first token excluded). */
  tokensPerSecond: number;
}

export interface GenerationContext {
  engine: Engine;
  tokenizer: TextTokenizer | null;
  /** Defaults for sampling (from generation_config.json). */
  defaults?: SamplingOptions;
  eosTokenIds: number[];
}

/** Longest suffix of `text` that is a proper prefix of some stop string (held back while undecided). */
function pendingStopPrefix(text: string, stops: string[]): number {
  let keep = 0;
  for (const s of stops) {
    for (let n = Math.min(s.length - 1, text.length); n > keep; n--) {
      if (text.endsWith(s.slice(0, n))) {
        keep = n;
        break;
      }
    }
  }
  return keep;
}

/**
 * The sampling as a device sampler does it exactly (engines with decodeOnDevice), or null where it
 * needs what only the CPU sampler does (penalties over the tokens seen so far).
 */
function deviceSampling(s: ResolvedSampling, vocabSize: number): DeviceSampling | null {
  if (s.repetitionPenalty !== 1 || s.presencePenalty !== 0 || s.frequencyPenalty !== 0) return null;
  return { temperature: s.temperature, topK: Math.min(s.topK, vocabSize), topP: s.topP, minP: s.minP };
}

/**
 * One generation's bookkeeping, whichever way its tokens are computed (forward(), a batched step, the
 * device): validates the request, samples (the CPU sampler) or takes a chosen token, turns tokens into
 * final text (stop strings held back while undecided), decides when it ends and builds the result.
 * The scheduler keeps one per running request; generate() below drives one alone.
 */
export class Generation {
  readonly sampling: ResolvedSampling;
  /** New tokens at most: max tokens, or fewer where the context ends first. */
  readonly limit: number;
  readonly maxTokens: number;
  readonly tokenIds: number[] = [];
  /** Prompt tokens whose KV entries came from a kept cache (prefix reuse), set by whoever ran the prefill. */
  cachedTokens = 0;
  /** The grammar's per-generation token filter (after start()), or null. */
  filter: TokenFilter | null = null;
  private readonly constraint: Constraint | null;
  private deviceRandom: Random | null = null;
  private readonly sampler: Sampler;
  private readonly detok: Detokenizer | null;
  private readonly stops: string[];
  private readonly maxStop: number;
  private readonly eos: Set<number>;
  private text = ''; // all final text so far (stop strings cut)
  private emitted = 0; // chars of `text` already handed out
  private finishReason: FinishReason = 'length';
  private readonly t0 = performance.now();
  private tFirst: number | null = null;

  constructor(readonly ctx: GenerationContext, readonly promptIds: number[], options: GenerateOptions = {}) {
    const { engine, tokenizer } = ctx;
    this.sampling = resolveSampling(options, ctx.defaults);
    const maxTokens = options.maxTokens ?? 256;
    if (!Number.isInteger(maxTokens) || maxTokens < 0) throw new InvalidInputError(`max tokens must be a whole number >= 0, got ${maxTokens}`);
    if (promptIds.length === 0) throw new InvalidInputError('the prompt is empty: give at least one token');
    if (promptIds.length >= engine.contextLength) {
      throw new InvalidInputError(`the prompt has ${promptIds.length} tokens but the context holds ${engine.contextLength}; shorten the prompt or raise contextLength`);
    }
    this.constraint = options.constraint ?? null;
    this.stops = this.constraint ? [] : (options.stop ?? []).filter((s) => s.length > 0);
    if (this.stops.length && !tokenizer) throw new InvalidInputError('stop strings need a tokenizer; this model has none');
    this.maxTokens = maxTokens;
    // the forward path stops here too: the last token's step would not fit the context
    this.limit = Math.min(maxTokens, engine.contextLength - promptIds.length + 1);
    this.maxStop = Math.max(0, ...this.stops.map((s) => s.length));
    this.eos = new Set(options.ignoreEos && !this.constraint ? [] : (options.eosTokenIds ?? ctx.eosTokenIds));
    this.sampler = new Sampler(this.sampling, engine.config.vocabSize, promptIds);
    this.detok = tokenizer ? new Detokenizer(tokenizer) : null;
  }

  /** The sampling as a device sampler does it exactly, or null where only the CPU sampler can (penalties). */
  get deviceSampling(): DeviceSampling | null {
    return deviceSampling(this.sampling, this.ctx.engine.config.vocabSize);
  }

  /** Makes the grammar's token filter (where there is a constraint); call once before the first token. */
  async start(): Promise<void> {
    if (this.constraint && this.maxTokens > 0 && !this.filter) this.filter = await this.constraint.newFilter([...this.eos]);
  }

  dispose(): void {
    this.filter?.dispose();
    this.filter = null;
  }

  /**
   * Chooses the next token from its logits with the CPU sampler (the grammar's mask applied) and takes
   * it, then any tokens the grammar forces after it (jump-forward: they need no logits). `feed` is
   * what the next step must append to the sequence; empty when the generation ends.
   */
  async choose(logits: Float32Array): Promise<{ chunks: GenerationChunk[]; end: boolean; feed: number[] }> {
    this.firstToken();
    const chunks: GenerationChunk[] = [];
    const feed: number[] = [];
    let id = this.filter?.forced ?? this.sampler.sample(logits, this.filter?.bitmask);
    while (true) {
      if (this.filter) await this.filter.accept(id);
      const { chunk, end } = this.take(id);
      if (chunk) chunks.push(chunk);
      if (end) return { chunks, end: true, feed: [] };
      feed.push(id);
      if (this.filter?.forced == null) return { chunks, end: false, feed };
      id = this.filter.forced;
    }
  }

  /**
   * The draw for the next token the device chooses (device sampling: Random(seed), one draw per
   * sampled token, as decodeOnDevice takes them); 0 when greedy (no draw is used).
   */
  nextDraw(): number {
    if (this.sampling.temperature === 0) return 0;
    this.deviceRandom ??= new Random(this.sampling.seed);
    return this.deviceRandom.next();
  }

  /** Takes a token the device chose: as choose() without the sampler (no grammar filter here). */
  takeChosen(id: number): { chunks: GenerationChunk[]; end: boolean; feed: number[] } {
    this.firstToken();
    const { chunk, end } = this.take(id);
    return { chunks: chunk ? [chunk] : [], end, feed: end ? [] : [id] };
  }

  /** Marks the first token's arrival (the end of the prefill) once. */
  firstToken(): void {
    this.tFirst ??= performance.now();
  }

  /** Takes a chosen token: the chunk it makes final (null at EOS) and whether generation ends with it. */
  take(id: number): { chunk: GenerationChunk | null; end: boolean } {
    if (this.eos.has(id) || this.filter?.done) {
      this.finishReason = 'stop';
      return { chunk: null, end: true };
    }
    this.sampler.accept(id);
    this.tokenIds.push(id);
    let stopped = false;
    if (this.detok) {
      this.text += this.detok.push(id);
      if (this.stops.length) {
        // search only where a stop string could newly end
        const from = Math.max(0, this.emitted - this.maxStop);
        let cut = -1;
        for (const s of this.stops) {
          const at = this.text.indexOf(s, from);
          if (at >= 0 && (cut < 0 || at < cut)) cut = at;
        }
        if (cut >= 0) {
          this.text = this.text.slice(0, cut);
          stopped = true;
        }
      }
    }
    const safe = stopped ? this.text.length : this.text.length - pendingStopPrefix(this.text, this.stops);
    const chunk = { text: this.text.slice(this.emitted, Math.max(this.emitted, safe)), tokenIds: [id] };
    this.emitted = Math.max(this.emitted, safe);
    if (stopped) this.finishReason = 'stop';
    return { chunk, end: stopped || this.tokenIds.length >= this.limit };
  }

  /** Ends the generation: the text held back (if any) and the whole result. */
  finish(): { tail: GenerationChunk | null; result: GenerationResult } {
    if (this.detok && this.finishReason !== 'stop') this.text += this.detok.flush();
    const tail = this.text.length > this.emitted ? { text: this.text.slice(this.emitted), tokenIds: [] } : null;
    this.emitted = this.text.length;
    const t1 = performance.now();
    const tFirst = this.tFirst ?? this.t0;
    const decoded = Math.max(0, this.tokenIds.length - 1);
    return {
      tail,
      result: {
        text: this.text,
        tokenIds: this.tokenIds,
        promptTokens: this.promptIds.length,
        cachedTokens: this.cachedTokens,
        finishReason: this.finishReason,
        prefillMs: tFirst - this.t0,
        decodeMs: t1 - tFirst,
        tokensPerSecond: decoded > 0 ? decoded / ((t1 - tFirst) / 1000) : 0,
      },
    };
  }
}

/** Prompt tokens a batched step takes from one sequence at most (the rest waits for later steps). */
export const PREFILL_CHUNK = 64;

/**
 * Streams a generation. Yields chunks as text becomes final; returns the whole result.
 * The sequence is reset first; the prompt must fit the context with room for one new token.
 * Engines with a batched step run this one sequence through it (the same arithmetic as under the
 * scheduler, so a request's tokens are the same alone or batched).
 */
export async function* generate(
  ctx: GenerationContext,
  seq: Sequence,
  promptIds: number[],
  options: GenerateOptions = {},
): AsyncGenerator<GenerationChunk, GenerationResult> {
  const { engine } = ctx;
  const g = new Generation(ctx, promptIds, options);
  const signal = options.signal;

  seq.reset();
  await g.start();
  try {
    const onDevice = engine.decodeOnDevice && !engine.step ? g.deviceSampling : null;
    if (g.maxTokens > 0 && onDevice) yield* decodeOnDevice(g, seq, onDevice, signal);
    else if (g.maxTokens > 0) {
      // the prompt first (in chunks through a batched step, as the scheduler feeds it), then each
      // chosen token with any the grammar forces after it
      let input = promptIds;
      while (true) {
        if (signal?.aborted) throw new AbortError();
        let last: Float32Array | number | null = null;
        if (engine.step) {
          // the device chooses where it can, as the scheduler has it (no penalties, no grammar)
          const sampling = engine.stepChoosesTokens && !g.filter ? g.deviceSampling : null;
          for (let at = 0; at < input.length; at += PREFILL_CHUNK) {
            if (signal?.aborted) throw new AbortError();
            const n = Math.min(PREFILL_CHUNK, input.length - at), end = at + n === input.length;
            const choose = end && sampling ? { sampling, random: g.nextDraw() } : undefined;
            [last] = await engine.step([{ seq, tokens: input.slice(at, at + n), logits: end, ...(choose ? { choose } : {}) }]);
          }
        } else {
          last = await engine.forward(seq, input);
        }
        const { chunks, end, feed } = typeof last === 'number' ? g.takeChosen(last) : await g.choose(last!);
        for (const chunk of chunks) {
          if (signal?.aborted) throw new AbortError();
          yield chunk;
        }
        if (end) break;
        input = feed;
      }
    }
  } finally {
    g.dispose();
  }
  const { tail, result } = g.finish();
  if (tail) yield tail;
  return result;
}

/** The device path of generate(): the device chooses the tokens and runs ahead; they are handed on as they arrive. */
async function* decodeOnDevice(g: Generation, seq: Sequence, onDevice: DeviceSampling, signal: AbortSignal | undefined): AsyncGenerator<GenerationChunk> {
  // the device chooses the tokens and runs ahead of us; this loop hands them on as they arrive
  if (signal?.aborted) throw new AbortError();
  const random = new Random(g.sampling.seed); // one draw per token, as the CPU sampler takes them
  const ready: GenerationChunk[] = [];
  let wake: (() => void) | null = null;
  let settled = false, failure: unknown = null, cancelled = false;
  const decoding = g.ctx.engine.decodeOnDevice!(seq, g.promptIds, {
    maxTokens: g.limit,
    sampling: onDevice,
    random: () => random.next(),
    // the device masks each step by the filter and calls filter.accept before onToken
    filter: g.filter,
    onToken: (id) => {
      g.firstToken();
      if (cancelled || signal?.aborted) return true;
      const { chunk, end } = g.take(id);
      if (chunk) ready.push(chunk);
      wake?.();
      return end;
    },
  }).then(
    () => undefined,
    (e: unknown) => {
      failure = e;
    },
  ).finally(() => {
    settled = true;
    wake?.();
  });
  const onAbort = () => wake?.();
  signal?.addEventListener('abort', onAbort);
  try {
    while (true) {
      if (signal?.aborted) throw new AbortError();
      if (ready.length > 0) yield ready.shift()!;
      else if (settled) break;
      else await new Promise<void>((resolve) => (wake = resolve));
      wake = null;
    }
    if (failure !== null) throw failure;
  } finally {
    // a consumer that stopped early: end the decode before the sequence can be reused or freed
    cancelled = true;
    signal?.removeEventListener('abort', onAbort);
    await decoding;
  }
}

/** Runs a generation to the end, collecting the result. */
export async function generateAll(ctx: GenerationContext, seq: Sequence, promptIds: number[], options: GenerateOptions = {}): Promise<GenerationResult> {
  const it = generate(ctx, seq, promptIds, options);
  while (true) {
    const r = await it.next();
    if (r.done) return r.value;
  }
}
