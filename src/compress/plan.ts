/**
 * Which encoding each checkpoint tensor gets. Vectors stay dense in their own dtype; the embedding and
 * lm_head become q8 (or stay dense when skipped); every other matrix is pruned by `pattern` to its layer
 * type's sparsity and its values stored in `bits`.
 */
import { InvalidInputError } from '../errors.js';
import type { EncodingParams } from '../format/upg/encodings/common.js';
import type { TensorSpec } from '../model/weights.js';

export type Pattern = 'unstructured' | '2:4' | '4:8' | 'csr';
export type Method = 'magnitude' | 'wanda';

export interface CompressOptions {
  method: Method;
  /** Fraction of weights zeroed in attention and MLP matrices (overridden per type below). */
  sparsity: number;
  attnSparsity?: number;
  mlpSparsity?: number;
  pattern: Pattern;
  /** 16 keeps matrices dense bf16; 8 and 4 quantize. */
  bits: 4 | 8 | 16;
  /** q4 group (and bitmap tile) in input columns. */
  group: number;
  /** Which of 'embed', 'lm_head' to leave dense instead of q8. */
  skip: string[];
  calibTokens: number;
}

export interface TensorPlan {
  encoding: 'dense' | 'q8' | 'q4' | 'bitmap' | 'nm' | 'csr';
  params: EncodingParams;
  /** Unstructured sparsity to prune to (0: none); n:m patterns carry theirs in params. */
  sparsity: number;
  prune: 'none' | 'unstructured' | 'nm';
}

export function layerType(name: string): 'embed' | 'lm_head' | 'attn' | 'mlp' | 'other' {
  if (name === 'model.embed_tokens.weight') return 'embed';
  if (name === 'lm_head.weight') return 'lm_head';
  if (name.includes('.self_attn.')) return 'attn';
  if (name.includes('.mlp.')) return 'mlp';
  return 'other';
}

export function validateOptions(o: CompressOptions): void {
  const bad = (m: string): never => {
    throw new InvalidInputError(m);
  };
  for (const [flag, v] of [['--sparsity', o.sparsity], ['--attn-sparsity', o.attnSparsity], ['--mlp-sparsity', o.mlpSparsity]] as const) {
    if (v !== undefined && !(v >= 0 && v < 1)) bad(`${flag} must be in [0, 1), got ${v}`);
  }
  if (![4, 8, 16].includes(o.bits)) bad(`--bits must be 4, 8 or 16, got ${o.bits}`);
  if (![32, 64, 128].includes(o.group)) bad(`--group must be 32, 64 or 128, got ${o.group}`);
  if (!['unstructured', '2:4', '4:8', 'csr'].includes(o.pattern)) bad(`--pattern must be unstructured, 2:4, 4:8 or csr, got ${o.pattern}`);
  if (o.pattern === 'csr' && o.bits !== 8) bad('--pattern csr stores int8 values: use --bits 8');
  if (o.bits === 16 && (o.pattern !== 'unstructured' || sparsityOf(o, 'attn') > 0 || sparsityOf(o, 'mlp') > 0)) bad('--bits 16 keeps matrices dense: it cannot be combined with pruning');
  for (const s of o.skip) if (!['embed', 'lm_head'].includes(s)) bad(`--skip takes embed and/or lm_head, got "${s}"`);
  if (!(Number.isInteger(o.calibTokens) && o.calibTokens >= 1)) bad(`--calib-tokens must be a positive whole number, got ${o.calibTokens}`);
}

function sparsityOf(o: CompressOptions, type: 'attn' | 'mlp'): number {
  return (type === 'attn' ? o.attnSparsity : o.mlpSparsity) ?? o.sparsity;
}

export function planTensor(spec: TensorSpec, sourceDtype: string, o: CompressOptions): TensorPlan {
  const none = { sparsity: 0, prune: 'none' as const };
  if (spec.kind === 'vector') return { encoding: 'dense', params: { dtype: sourceDtype }, ...none };
  const type = layerType(spec.name);
  if (type === 'embed' || type === 'lm_head' || type === 'other') {
    if (o.skip.includes(type) || o.bits === 16) return { encoding: 'dense', params: { dtype: sourceDtype }, ...none };
    return { encoding: 'q8', params: {}, ...none };
  }
  if (o.bits === 16) return { encoding: 'dense', params: { dtype: 'BF16' }, ...none };
  if (o.pattern === '2:4' || o.pattern === '4:8') {
    const [n, m] = o.pattern.split(':').map(Number) as [number, number];
    return { encoding: 'nm', params: o.bits === 4 ? { n, m, bits: 4, group: o.group } : { n, m, bits: 8 }, sparsity: 1 - n / m, prune: 'nm' };
  }
  const sparsity = sparsityOf(o, type);
  if (o.pattern === 'csr') return { encoding: 'csr', params: {}, sparsity, prune: sparsity > 0 ? 'unstructured' : 'none' };
  if (sparsity === 0) return o.bits === 8 ? { encoding: 'q8', params: {}, ...none } : { encoding: 'q4', params: { group: o.group }, ...none };
  return { encoding: 'bitmap', params: { tile: o.group, bits: o.bits }, sparsity, prune: 'unstructured' };
}
