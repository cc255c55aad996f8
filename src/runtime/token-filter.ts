/**
 * A per-generation token filter: which tokens may come next (a grammar's mask). Each generation
 * carries its own, in its options (`GenerateOptions.constraint` makes one when the generation starts),
 * so a batched step applies row r's filter to row r's logits only.
 *
 * The bitmask is xgrammar's layout: bit (id & 31) of word (id >> 5) is set where token id is allowed;
 * ceil(vocab / 32) words. Every sampler applies it: the CPU sampler sets the logits of disallowed
 * tokens to -Infinity before choosing; the fused GPU decoder uploads it and runs a masking dispatch
 * on the logits buffer before argmax/sample.
 */
export interface TokenFilter {
  /** The tokens allowed next. */
  readonly bitmask: Int32Array;
  /** The one token allowed next where the grammar leaves a single choice (no sampling needed), else null. */
  readonly forced: number | null;
  /** True once the grammar has accepted a stop token: the output is complete. */
  readonly done: boolean;
  /** Advances past `id` (which must be allowed) and computes the next bitmask. */
  accept(id: number): Promise<void>;
  dispose(): void;
}

/** Makes a fresh TokenFilter for one generation (a compiled grammar: see grammar/compiler.ts). */
export interface Constraint {
  /** What it enforces, for messages ("JSON schema", "grammar"...). */
  readonly description: string;
  newFilter(stopTokenIds: number[]): Promise<TokenFilter>;
}

export function isAllowed(bitmask: Int32Array, id: number): boolean {
  return ((bitmask[id >>> 5]! >>> (id & 31)) & 1) === 1;
}

/** Number of allowed tokens among the first `vocab`, and the lowest one (-1 when none). */
export function countAllowed(bitmask: Int32Array, vocab: number): { count: number; first: number } {
  let count = 0, first = -1;
  const words = Math.ceil(vocab / 32);
  for (let w = 0; w < words; w++) {
    let bits = bitmask[w]! >>> 0;
    if (w === words - 1 && vocab % 32 !== 0) bits &= (1 << (vocab % 32)) - 1 >>> 0;
    if (bits === 0) continue;
    if (first < 0) first = w * 32 + (31 - Math.clz32(bits & -bits));
    // popcount
    bits = bits - ((bits >>> 1) & 0x55555555);
    bits = (bits & 0x33333333) + ((bits >>> 2) & 0x33333333);
    count += (Math.imul((bits + (bits >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24);
  }
  return { count, first };
}

/** Sets the logits of disallowed tokens to -Infinity, in place. (vocab) */
export function maskLogits(logits: Float32Array, bitmask: Int32Array): void {
  const n = logits.length;
  for (let w = 0, base = 0; base < n; w++, base += 32) {
    const bits = bitmask[w]! | 0;
    if (bits === -1) continue; // all 32 allowed
    const end = Math.min(32, n - base);
    for (let b = 0; b < end; b++) if (((bits >>> b) & 1) === 0) logits[base + b] = -Infinity;
  }
}
