/**
 * Token sampling on the CPU: penalties, temperature, top-k, top-p, min-p, with a seeded generator so
 * a run with the same seed gives the same tokens. Temperature 0 is greedy (argmax).
 */
import { InvalidInputError } from '../errors.js';
import { countAllowed, maskLogits } from './token-filter.js';

export interface SamplingOptions {
  /** 0 = greedy. */
  temperature?: number;
  /** Keep the k most likely tokens; 0 = off. */
  topK?: number;
  /** Keep the smallest set whose probability reaches p; 1 = off. */
  topP?: number;
  /** Drop tokens under minP times the top token's probability; 0 = off. */
  minP?: number;
  /** Divide positive / multiply negative logits of tokens already seen (prompt and output); 1 = off. */
  repetitionPenalty?: number;
  /** Subtract from logits of tokens already generated (OpenAI semantics); 0 = off. */
  presencePenalty?: number;
  /** Subtract count times this from logits of generated tokens; 0 = off. */
  frequencyPenalty?: number;
  seed?: number;
}

export type ResolvedSampling = Required<Omit<SamplingOptions, 'seed'>> & { seed: number };

export function resolveSampling(o: SamplingOptions, defaults: SamplingOptions = {}): ResolvedSampling {
  const pick = <K extends keyof SamplingOptions>(k: K, fallback: number): number => (o[k] ?? defaults[k] ?? fallback) as number;
  const r: ResolvedSampling = {
    temperature: pick('temperature', 0.8),
    topK: pick('topK', 40),
    topP: pick('topP', 0.95),
    minP: pick('minP', 0.05),
    repetitionPenalty: pick('repetitionPenalty', 1),
    presencePenalty: pick('presencePenalty', 0),
    frequencyPenalty: pick('frequencyPenalty', 0),
    seed: o.seed ?? defaults.seed ?? Math.floor(Math.random() * 2 ** 32),
  };
  const check = (ok: boolean, what: string) => {
    if (!ok) throw new InvalidInputError(what);
  };
  check(Number.isFinite(r.temperature) && r.temperature >= 0, `temperature must be >= 0, got ${r.temperature}`);
  check(Number.isInteger(r.topK) && r.topK >= 0, `top-k must be a whole number >= 0, got ${r.topK}`);
  check(r.topP > 0 && r.topP <= 1, `top-p must be in (0, 1], got ${r.topP}`);
  check(r.minP >= 0 && r.minP < 1, `min-p must be in [0, 1), got ${r.minP}`);
  check(r.repetitionPenalty > 0, `repetition penalty must be > 0, got ${r.repetitionPenalty}`);
  check(Number.isFinite(r.presencePenalty) && Number.isFinite(r.frequencyPenalty), 'penalties must be finite numbers');
  check(Number.isInteger(r.seed), `seed must be an integer, got ${r.seed}`);
  return r;
}

/** xoshiro128** seeded through splitmix32: fast, 32-bit, reproducible across platforms. */
export class Random {
  private s = new Uint32Array(4);
  constructor(seed: number) {
    let x = seed >>> 0;
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      this.s[i] = (z ^ (z >>> 16)) >>> 0;
    }
  }
  /** Uniform in [0, 1). */
  next(): number {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1]!, 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1]! << 9) >>> 0;
    s[2]! ^= s[0]!;
    s[3]! ^= s[1]!;
    s[1]! ^= s[2]!;
    s[0]! ^= s[3]!;
    s[2]! ^= t;
    s[3] = rotl(s[3]!, 11);
    return result / 4294967296;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

export function argmax(logits: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
  return best;
}

/** Samples one token per call; keeps the token counts the penalties need. */
export class Sampler {
  private readonly random: Random;
  private readonly counts = new Map<number, number>(); // generated tokens
  private readonly seen = new Set<number>(); // prompt and generated
  private work: Float32Array;
  private index: Int32Array;

  constructor(readonly options: ResolvedSampling, vocabSize: number, promptIds: ArrayLike<number> = []) {
    this.random = new Random(options.seed);
    this.work = new Float32Array(vocabSize);
    this.index = new Int32Array(vocabSize);
    for (let i = 0; i < promptIds.length; i++) this.seen.add(promptIds[i]!);
  }

  /** Records a generated token (for the penalties). */
  accept(id: number): void {
    this.counts.set(id, (this.counts.get(id) ?? 0) + 1);
    this.seen.add(id);
  }

  /**
   * Chooses the next token. `bitmask` (a TokenFilter's: bit id & 31 of word id >> 5 set where token
   * id is allowed) restricts the choice: the other logits are set to -Infinity, and only allowed
   * tokens are candidates for top-k / top-p / min-p.
   */
  sample(logits: Float32Array, bitmask?: Int32Array): number {
    const o = this.options;
    const n = logits.length;
    const x = this.work;
    x.set(logits);
    // masked tokens sit at -Infinity: top-k over at most the allowed count never reaches them
    let allowed = n;
    if (bitmask) {
      maskLogits(x, bitmask);
      allowed = Math.max(1, countAllowed(bitmask, n).count);
    }
    if (o.repetitionPenalty !== 1) {
      for (const id of this.seen) if (id < n) x[id] = x[id]! > 0 ? x[id]! / o.repetitionPenalty : x[id]! * o.repetitionPenalty;
    }
    if (o.presencePenalty !== 0 || o.frequencyPenalty !== 0) {
      for (const [id, c] of this.counts) if (id < n) x[id]! -= o.presencePenalty + o.frequencyPenalty * c;
    }
    if (o.temperature === 0) return argmax(x);

    // candidates sorted by logit, descending: the top k when k is set, else all
    const k = Math.min(o.topK > 0 ? o.topK : n, n, allowed);
    const cand = this.topIndices(x, k);
    const max = x[cand[0]!]!;
    const probs = new Float64Array(cand.length);
    let sum = 0;
    for (let i = 0; i < cand.length; i++) {
      probs[i] = Math.exp((x[cand[i]!]! - max) / o.temperature);
      sum += probs[i]!;
    }
    let keep = cand.length;
    if (o.minP > 0) {
      const floor = o.minP * (probs[0]! / sum);
      while (keep > 1 && probs[keep - 1]! / sum < floor) keep--;
    }
    if (o.topP < 1) {
      let acc = 0;
      for (let i = 0; i < keep; i++) {
        acc += probs[i]! / sum;
        if (acc >= o.topP) {
          keep = i + 1;
          break;
        }
      }
    }
    let total = 0;
    for (let i = 0; i < keep; i++) total += probs[i]!;
    let r = this.random.next() * total;
    for (let i = 0; i < keep; i++) {
      r -= probs[i]!;
      if (r < 0) return cand[i]!;
    }
    return cand[keep - 1]!;
  }

  /** Indices of the k largest values of x, largest first (ties: lower index first). */
  private topIndices(x: Float32Array, k: number): Int32Array {
    const n = x.length;
    const idx = this.index;
    if (k >= n / 4) {
      for (let i = 0; i < n; i++) idx[i] = i;
      const all = idx.subarray(0, n).sort((a, b) => x[b]! - x[a]! || a - b);
      return all.subarray(0, k);
    }
    // keep a sorted list of the best k seen so far
    let size = 0;
    for (let i = 0; i < n; i++) {
      const v = x[i]!;
      if (size === k && v <= x[idx[k - 1]!]!) continue;
      let j = size < k ? size++ : k - 1;
      while (j > 0 && x[idx[j - 1]!]! < v) {
        idx[j] = idx[j - 1]!;
        j--;
      }
      idx[j] = i;
    }
    return idx.subarray(0, k);
  }
}
