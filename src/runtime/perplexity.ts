/**
 * Perplexity by the fixtures' protocol (../shared/fixtures/README.md): documents split on blank lines,
 * each prefixed with BOS; windows of ctx+1 tokens starting every ctx tokens, each predicting its last
 * ctx tokens from the ones before, with no state carried between windows.
 */
import { InvalidInputError } from '../errors.js';
import type { TextTokenizer } from '../tokenizer/tokenizer.js';
import type { Engine } from './engine.js';

export function perplexityTokenStream(tokenizer: TextTokenizer, text: string, bosTokenId: number | null): number[] {
  const ids: number[] = [];
  for (const doc of text.split('\n\n')) {
    if (bosTokenId !== null) ids.push(bosTokenId);
    for (const id of tokenizer.encode(doc, false)) ids.push(id);
  }
  return ids;
}

export interface PerplexityResult {
  perplexity: number;
  predictedTokens: number;
  /** Sum of negative log-likelihoods (nats). */
  totalNll: number;
}

/** log-softmax(logits)[target], in float64. */
export function logProbability(logits: Float32Array, offset: number, vocab: number, target: number): number {
  let max = -Infinity;
  for (let v = 0; v < vocab; v++) if (logits[offset + v]! > max) max = logits[offset + v]!;
  let sum = 0;
  for (let v = 0; v < vocab; v++) sum += Math.exp(logits[offset + v]! - max);
  return logits[offset + target]! - max - Math.log(sum);
}

export async function perplexity(
  engine: Engine,
  ids: number[],
  ctx: number,
  onProgress?: (doneTokens: number, totalTokens: number) => void,
): Promise<PerplexityResult> {
  if (!Number.isInteger(ctx) || ctx < 1) throw new InvalidInputError(`--ctx must be a whole number >= 1, got ${ctx}`);
  if (ctx + 1 > engine.contextLength) throw new InvalidInputError(`--ctx ${ctx} needs a context of ${ctx + 1} positions; the engine holds ${engine.contextLength}`);
  if (ids.length < 2) throw new InvalidInputError(`perplexity needs at least 2 tokens, got ${ids.length}`);
  const vocab = engine.config.vocabSize;
  const total = ids.length - 1;
  const seq = engine.createSequence();
  let nll = 0;
  let predicted = 0;
  try {
    for (let s = 0; s + 1 < ids.length; s += ctx) {
      const window = ids.slice(s, s + ctx + 1);
      seq.reset();
      const logits = await engine.forward(seq, window.slice(0, -1), true);
      for (let t = 0; t + 1 < window.length; t++) nll -= logProbability(logits, t * vocab, vocab, window[t + 1]!);
      predicted += window.length - 1;
      onProgress?.(predicted, total);
    }
  } finally {
    seq.dispose();
  }
  return { perplexity: Math.exp(nll / predicted), predictedTokens: predicted, totalNll: nll };
}
