/** What every backend provides to the runtime (generation, perplexity, server). */
import type { ModelConfig } from '../model/config.js';
import type { TokenFilter } from './token-filter.js';

/** One sequence's state on a backend: its KV cache and how many positions it holds. */
export interface Sequence {
  /** Number of tokens already in the KV cache (the position of the next token). */
  readonly length: number;
  /** Forget everything (the cache is reused, not freed). */
  reset(): void;
  /** Drop cached positions past `length` (e.g. to reuse a shared prompt prefix). */
  truncate(length: number): void;
  /**
   * Where supported: make this sequence hold the first `length` positions of `source` (a copy of its
   * KV cache entries; `source` is unchanged). Prefix reuse copies a shared prefix (a system prompt)
   * out of a kept cache this way, so the kept cache can serve other requests too.
   */
  copyPrefix?(source: Sequence, length: number): void;
  dispose(): void;
}

/**
 * Token choice a device makes by itself, exactly as the CPU sampler would without penalties:
 * argmax when temperature is 0, else temperature, top-k (0 = off), min-p (0 = off), top-p (1 = off).
 */
export interface DeviceSampling {
  temperature: number;
  topK: number;
  topP: number;
  minP: number;
}

export interface DeviceDecodeOptions {
  /** New tokens at most (fewer where the context ends first). */
  maxTokens: number;
  sampling: DeviceSampling;
  /** Uniform draws in [0, 1), one per sampled token in order; not called when greedy. */
  random: () => number;
  /** Called with each token in order; return true to stop after it (EOS, stop string, abort). */
  onToken: (id: number) => boolean;
  /**
   * A grammar's token filter: each token is chosen among those its bitmask allows, and the engine
   * calls `filter.accept(id)` before onToken(id). The next mask needs the token before it, so the
   * device cannot run ahead: it steps with a lag of 1, except through tokens the filter forces,
   * which it feeds without choosing.
   */
  filter?: TokenFilter | null;
}

/** One row group of a batched step: tokens appended to one sequence. */
export interface StepRow {
  seq: Sequence;
  /** One token (a decode step) or a chunk of the prompt (prefill), appended at the sequence's length. */
  tokens: ArrayLike<number>;
  /** Return the logits of the last token (false for a prompt chunk that is not the prompt's end). */
  logits: boolean;
  /**
   * Where the engine's `stepChoosesTokens` is true: choose the row's next token on the device from its
   * last token's logits, as DeviceSampling says (argmax at temperature 0, else `random` is the draw),
   * and return the token id instead of the logits (only ids are read back). Other engines ignore it.
   */
  choose?: { sampling: DeviceSampling; random: number };
}

export interface Engine {
  readonly backend: 'cpu' | 'webgpu';
  readonly config: ModelConfig;
  /** Positions a sequence can hold. */
  readonly contextLength: number;
  createSequence(): Sequence;
  /**
   * Appends `tokens` to the sequence (one prefill for many tokens) and returns logits:
   * (vocab) for the last token, or (tokens.length, vocab) when `allLogits`. The last-token array may
   * belong to the sequence and be overwritten by its next forward; copy it to keep it.
   */
  forward(seq: Sequence, tokens: ArrayLike<number>, allLogits?: boolean): Promise<Float32Array>;
  /**
   * Present where the engine runs many sequences in one pass (continuous batching): appends each row's
   * tokens to its own sequence (every sequence at most once a step, at its own position) with each
   * weight read once for all rows, and returns per row its last token's logits (vocab), or null where
   * `logits` is false. A row's arithmetic does not depend on the other rows of the step, so a
   * sequence's tokens never depend on the batch (an engine may run a row's prompt tokens through its
   * prefill kernels, whose results depend on where the prompt is cut into rows: callers cut a prompt
   * at the same places alone or batched, as the scheduler and generate() do). The arrays belong to the
   * engine and are overwritten by the next step. A row with `choose` (engines with stepChoosesTokens)
   * gets the chosen token id instead.
   */
  step?(rows: StepRow[]): Promise<(Float32Array | number | null)[]>;
  /** Bytes one sequence's KV cache takes, where it is not float32 K and V of every layer for the whole context. */
  readonly kvBytesPerSequence?: number;
  /** The step honours `StepRow.choose`: rows that ask get a token id back instead of logits. */
  readonly stepChoosesTokens?: boolean;
  /**
   * Present where the engine can decode without returning logits (WebGPU's fused path): appends
   * `prompt` to the sequence, then chooses up to maxTokens tokens on the device, each one the next
   * step's input, calling onToken with each. Resolves with the tokens through the one onToken stopped
   * at; anything the device computed past it is discarded, and the sequence then holds what forward()
   * would have left: the prompt and every returned token but the last.
   */
  decodeOnDevice?(seq: Sequence, prompt: ArrayLike<number>, options: DeviceDecodeOptions): Promise<number[]>;
  dispose(): void;
}
