/**
 * Kept KV caches for prefix reuse: finished generations' sequences with the tokens they hold, least
 * recently used evicted first. A new prompt takes the kept cache sharing its longest prefix (the next
 * turn of a chat holds the previous turns; requests with one system prompt share it) and prefills only
 * the rest. A cache taken is no longer kept: it becomes the new generation's (and is kept again, longer,
 * when that one ends).
 */
import type { Sequence } from '../runtime/engine.js';

/** Shorter shared prefixes are not worth taking a kept cache away from a later, longer match. */
export const MIN_REUSED_TOKENS = 16;

interface Kept {
  seq: Sequence;
  /** The tokens in seq's cache, in order (seq.length of them). */
  tokens: number[];
}

export class PrefixCache {
  /** Most recently used last. */
  private readonly kept: Kept[] = [];

  constructor(readonly capacity: number) {}

  get size(): number {
    return this.kept.length;
  }

  /** Tokens held by kept caches. */
  get tokens(): number {
    return this.kept.reduce((a, k) => a + k.tokens.length, 0);
  }

  /**
   * The kept cache sharing the longest prefix with `prompt` (at most `maxLength` tokens of it, and at
   * least MIN_REUSED_TOKENS or the whole of maxLength), removed from the kept set; null when none does.
   */
  take(prompt: ArrayLike<number>, maxLength: number): { seq: Sequence; length: number } | null {
    let best = -1, bestLength = 0;
    this.kept.forEach((k, i) => {
      const limit = Math.min(maxLength, k.tokens.length);
      let n = 0;
      while (n < limit && k.tokens[n] === prompt[n]) n++;
      if (n > bestLength) {
        best = i;
        bestLength = n;
      }
    });
    if (best < 0 || (bestLength < MIN_REUSED_TOKENS && bestLength < maxLength)) return null;
    const [k] = this.kept.splice(best, 1);
    return { seq: k!.seq, length: bestLength };
  }

  /** Keeps a finished sequence holding `tokens`; returns the sequence evicted to make room, if any. */
  put(seq: Sequence, tokens: number[]): Sequence | null {
    this.kept.push({ seq, tokens });
    return this.kept.length > this.capacity ? this.kept.shift()!.seq : null;
  }

  /** Gives up the least recently used kept cache (its memory goes to a running sequence). */
  evictOldest(): Sequence | null {
    return this.kept.shift()?.seq ?? null;
  }

  clear(): void {
    for (const k of this.kept.splice(0)) k.seq.dispose();
  }
}
