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
 * Streams a generation. Yields chunks as text becomes final; returns the whole result.
 * The sequence is reset first; the prompt must fit the context with room for one new token.
 */
export async function* generate(
  ctx: GenerationContext,
  seq: Sequence,
  promptIds: number[],
  options: GenerateOptions = {},
): AsyncGenerator<GenerationChunk, GenerationResult> {
  const { engine, tokenizer } = ctx;
  const sampling = resolveSampling(options, ctx.defaults);
  const maxTokens = options.maxTokens ?? 256;
  if (!Number.isInteger(maxTokens) || maxTokens < 0) throw new InvalidInputError(`max tokens must be a whole number >= 0, got ${maxTokens}`);
  if (promptIds.length === 0) throw new InvalidInputError('the prompt is empty: give at least one token');
  if (promptIds.length >= engine.contextLength) {
    throw new InvalidInputError(`the prompt has ${promptIds.length} tokens but the context holds ${engine.contextLength}; shorten the prompt or raise --context`);
  }
  const stops = (options.stop ?? []).filter((s) => s.length > 0);
  if (stops.length && !tokenizer) throw new InvalidInputError('stop strings need a tokenizer; this model has none');
  const constraint = options.constraint ?? null;
  const eos = new Set(options.ignoreEos && !constraint ? [] : (options.eosTokenIds ?? ctx.eosTokenIds));
  if (constraint) stops.length = 0;
  const sampler = new Sampler(sampling, engine.config.vocabSize, promptIds);
  const detok = tokenizer ? new Detokenizer(tokenizer) : null;
  const signal = options.signal;

  const tokenIds: number[] = [];
  let text = ''; // all final text so far (stop strings cut)
  let emitted = 0; // chars of `text` already yielded
  let finishReason = 'length' as FinishReason; // set inside take()
  const t0 = performance.now();
  let tFirst = t0;

  // the forward path stops here too: the last token's step would not fit the context
  const limit = Math.min(maxTokens, engine.contextLength - promptIds.length + 1);
  const maxStop = Math.max(0, ...stops.map((s) => s.length));

  /** Takes a chosen token: the chunk it makes final (null at EOS) and whether generation ends with it. */
  let filter: TokenFilter | null = null;
  const take = (id: number): { chunk: GenerationChunk | null; end: boolean } => {
    if (eos.has(id) || filter?.done) {
      finishReason = 'stop';
      return { chunk: null, end: true };
    }
    sampler.accept(id);
    tokenIds.push(id);
    let stopped = false;
    if (detok) {
      text += detok.push(id);
      if (stops.length) {
        // search only where a stop string could newly end
        const from = Math.max(0, emitted - maxStop);
        let cut = -1;
        for (const s of stops) {
          const at = text.indexOf(s, from);
          if (at >= 0 && (cut < 0 || at < cut)) cut = at;
        }
        if (cut >= 0) {
          text = text.slice(0, cut);
          stopped = true;
        }
      }
    }
    const safe = stopped ? text.length : text.length - pendingStopPrefix(text, stops);
    const chunk = { text: text.slice(emitted, Math.max(emitted, safe)), tokenIds: [id] };
    emitted = Math.max(emitted, safe);
    if (stopped) finishReason = 'stop';
    return { chunk, end: stopped || tokenIds.length >= limit };
  };

  seq.reset();
  if (constraint && maxTokens > 0) filter = await constraint.newFilter([...eos]);
  try {
  const onDevice = engine.decodeOnDevice && !filter ? deviceSampling(sampling, engine.config.vocabSize) : null;
  if (maxTokens > 0 && onDevice) {
    // the device chooses the tokens and runs ahead of us; this loop hands them on as they arrive
    if (signal?.aborted) throw new AbortError();
    const random = new Random(sampling.seed); // one draw per token, as the CPU sampler takes them
    const ready: GenerationChunk[] = [];
    let wake: (() => void) | null = null;
    let settled = false, failure: unknown = null, cancelled = false, first = true;
    const decoding = engine.decodeOnDevice!(seq, promptIds, {
      maxTokens: limit,
      sampling: onDevice,
      random: () => random.next(),
      filter,
      onToken: (id) => {
        if (first) tFirst = performance.now();
        first = false;
        if (cancelled || signal?.aborted) return true;
        const { chunk, end } = take(id);
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
  } else if (maxTokens > 0) {
    if (signal?.aborted) throw new AbortError();
    // jump-forward: tokens the grammar forces need no logits, so a run of them joins the next forward
    let input: number[] = promptIds;
    let first = true;
    decoding: while (true) {
      const logits = await engine.forward(seq, input);
      if (first) tFirst = performance.now();
      first = false;
      input = [];
      let id = sampler.sample(logits, filter?.bitmask);
      while (true) {
        if (signal?.aborted) throw new AbortError();
        if (filter) await filter.accept(id);
        const { chunk, end } = take(id);
        if (chunk) yield chunk;
        if (end) break decoding;
        input.push(id);
        if (filter?.forced == null) break;
        id = filter.forced;
      }
    }
  }
  } finally {
    filter?.dispose();
  }
  if (detok && finishReason !== 'stop') text += detok.flush();
  if (text.length > emitted) yield { text: text.slice(emitted), tokenIds: [] };
  const t1 = performance.now();
  const decoded = Math.max(0, tokenIds.length - 1);
  return {
    text,
    tokenIds,
    promptTokens: promptIds.length,
    finishReason,
    prefillMs: tFirst - t0,
    decodeMs: t1 - tFirst,
    tokensPerSecond: decoded > 0 ? decoded / ((t1 - tFirst) / 1000) : 0,
  };
}

/** Runs a generation to the end, collecting the result. */
export async function generateAll(ctx: GenerationContext, seq: Sequence, promptIds: number[], options: GenerateOptions = {}): Promise<GenerationResult> {
  const it = generate(ctx, seq, promptIds, options);
  while (true) {
    const r = await it.next();
    if (r.done) return r.value;
  }
}
