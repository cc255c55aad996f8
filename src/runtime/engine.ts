/** What every backend provides to the runtime (generation, perplexity, server). */
import type { ModelConfig } from '../model/config.js';

/** One sequence's state on a backend: its KV cache and how many positions it holds. */
export interface Sequence {
  /** Number of tokens already in the KV cache (the position of the next token). */
  readonly length: number;
  /** Forget everything (the cache is reused, not freed). */
  reset(): void;
  /** Drop cached positions past `length` (e.g. to reuse a shared prompt prefix). */
  truncate(length: number): void;
  dispose(): void;
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
  dispose(): void;
}
