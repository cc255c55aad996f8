/**
 * Kept KV caches for prefix reuse: finished generations' sequences with the tokens they hold, least
 * recently used evicted first. A new prompt finds the kept cache sharing its longest prefix (the next
 * turn of a chat holds the previous turns; requests with one system prompt share it) and prefills only
 * the rest: the scheduler takes the kept cache over when the prompt continues all of it (a chat's next
 * turn), else copies the shared prefix out of it (Sequence.copyPrefix) so it stays for others.
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
   * least MIN_REUSED_TOKENS or the whole of maxLength), with the number of tokens it holds; null when
   * none does. It stays kept: take() or touch() it.
   */
  match(prompt: ArrayLike<number>, maxLength: number): { seq: Sequence; length: number; held: number } | null {
    let best: Kept | null = null, bestLength = 0;
    for (const k of this.kept) {
      const limit = Math.min(maxLength, k.tokens.length);
      let n = 0;
      while (n < limit && k.tokens[n] === prompt[n]) n++;
      if (n > bestLength) {
        best = k;
        bestLength = n;
      }
    }
    if (!best || (bestLength < MIN_REUSED_TOKENS && bestLength < maxLength)) return null;
    return { seq: best.seq, length: bestLength, held: best.tokens.length };
  }

  /** Removes a kept cache (it becomes a running generation's). */
  take(seq: Sequence): void {
    const i = this.kept.findIndex((k) => k.seq === seq);
    if (i >= 0) this.kept.splice(i, 1);
  }

  /** Marks a kept cache as just used (least recently used go first). */
  touch(seq: Sequence): void {
    const i = this.kept.findIndex((k) => k.seq === seq);
    if (i >= 0) this.kept.push(this.kept.splice(i, 1)[0]!);
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
