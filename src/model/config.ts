/**
 * The model configuration the engine needs, built from a Hugging Face config.json by keeping the keys
 * it knows. Both RoPE styles are read: top-level `rope_theta` / `rope_scaling` (most hub checkpoints)
 * and the newer `rope_parameters` object (transformers 5).
 */
import { InvalidInputError, ModelFormatError, UnsupportedArchitectureError } from '../errors.js';

export const SUPPORTED_ARCHITECTURES = [
  'LlamaForCausalLM',
  'MistralForCausalLM',
  'Qwen2ForCausalLM',
  'Phi3ForCausalLM',
] as const;
export type Architecture = (typeof SUPPORTED_ARCHITECTURES)[number];

export type RopeScaling =
  | { type: 'default' }
  | { type: 'linear'; factor: number }
  | { type: 'llama3'; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositionEmbeddings: number };

export interface ModelConfig {
  architecture: Architecture;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  /** Dimensions of each head that RoPE rotates (headDim unless partial_rotary_factor < 1). */
  rotaryDim: number;
  vocabSize: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  /** config.json says `"tie_word_embeddings": false`: the checkpoint must then carry its own lm_head.weight. */
  untiedDeclared?: boolean;
  /** Attention looks back at most this many positions (itself included), or null for full attention. */
  slidingWindow: number | null;
  /** q/k/v projections carry biases (Qwen2). */
  attentionBias: boolean;
  bosTokenId: number | null;
  eosTokenIds: number[];
}

type Json = Record<string, unknown>;

function toIdList(v: unknown): number[] {
  if (v === null || v === undefined) return [];
  return (Array.isArray(v) ? v : [v]).filter((x): x is number => Number.isInteger(x));
}

export function parseConfig(json: Json, file = 'config.json', generationConfig?: Json): ModelConfig {
  const fail = (problem: string): never => {
    throw new ModelFormatError(file, problem);
  };
  if (typeof json !== 'object' || json === null || Array.isArray(json)) fail(`must be a JSON object, got ${json === null ? 'null' : Array.isArray(json) ? 'an array' : typeof json}`);
  const archs = json.architectures;
  const architecture = Array.isArray(archs) && typeof archs[0] === 'string' ? archs[0] : undefined;
  if (!architecture) fail('has no "architectures" entry; is this a Hugging Face causal-LM config?');
  if (!(SUPPORTED_ARCHITECTURES as readonly string[]).includes(architecture!)) {
    throw new UnsupportedArchitectureError(
      `${file}: architecture ${architecture} is not supported; supported: ${SUPPORTED_ARCHITECTURES.join(', ')}`,
    );
  }
  const int = (key: string, fallback?: number): number => {
    const v = json[key] ?? fallback;
    if (v === undefined || v === null) fail(`is missing the required key "${key}"`);
    if (!Number.isInteger(v) || (v as number) <= 0) fail(`"${key}" must be a positive integer, got ${JSON.stringify(v)}`);
    return v as number;
  };
  const num = (v: unknown, key: string): number => {
    if (typeof v !== 'number' || !Number.isFinite(v)) fail(`"${key}" must be a number, got ${JSON.stringify(v)}`);
    return v as number;
  };

  const hiddenSize = int('hidden_size');
  const numHeads = int('num_attention_heads');
  const numKvHeads = int('num_key_value_heads', numHeads);
  if ((json.head_dim === undefined || json.head_dim === null) && hiddenSize % numHeads !== 0) {
    fail(`hidden_size ${hiddenSize} is not a multiple of num_attention_heads ${numHeads}, and there is no "head_dim" to say the head size; fix one of the two`);
  }
  const headDim = int('head_dim', hiddenSize / numHeads);
  if (numHeads % numKvHeads !== 0) fail(`num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKvHeads}`);

  // RoPE: rope_parameters (new) wins over rope_theta/rope_scaling (old).
  const objectOrNull = (key: string): Json | null => {
    const v = json[key];
    if (v === undefined || v === null) return null;
    if (typeof v !== 'object' || Array.isArray(v)) fail(`"${key}" must be an object such as {"rope_type": "linear", "factor": 2} or null, got ${JSON.stringify(v)}`);
    return v as Json;
  };
  const params = objectOrNull('rope_parameters');
  const oldScaling = objectOrNull('rope_scaling');
  const ropeTheta = num(params?.rope_theta ?? json.rope_theta ?? 10000, 'rope_theta');
  const scalingSrc = params ?? oldScaling ?? {};
  const ropeType = String(scalingSrc.rope_type ?? scalingSrc.type ?? 'default');
  let ropeScaling: RopeScaling;
  if (ropeType === 'default') ropeScaling = { type: 'default' };
  else if (ropeType === 'linear') ropeScaling = { type: 'linear', factor: num(scalingSrc.factor, 'rope_scaling.factor') };
  else if (ropeType === 'llama3') {
    ropeScaling = {
      type: 'llama3',
      factor: num(scalingSrc.factor, 'rope_scaling.factor'),
      lowFreqFactor: num(scalingSrc.low_freq_factor, 'rope_scaling.low_freq_factor'),
      highFreqFactor: num(scalingSrc.high_freq_factor, 'rope_scaling.high_freq_factor'),
      originalMaxPositionEmbeddings: num(scalingSrc.original_max_position_embeddings, 'rope_scaling.original_max_position_embeddings'),
    };
  } else {
    return fail(`rope scaling type "${ropeType}" is not supported (supported: default, linear, llama3)`);
  }
  if (ropeTheta <= 0) fail(`"rope_theta" must be positive, got ${ropeTheta}`);
  if ('factor' in ropeScaling && !(ropeScaling.factor > 0)) fail(`rope scaling "factor" must be positive, got ${ropeScaling.factor}`);
  const partial = num(json.partial_rotary_factor ?? 1, 'partial_rotary_factor');
  if (!(partial > 0 && partial <= 1)) fail(`"partial_rotary_factor" must be in (0, 1], got ${partial}`);
  const rotaryDim = Math.round(headDim * partial);
  if (rotaryDim % 2 !== 0 || rotaryDim === 0) fail(`"partial_rotary_factor" ${partial} of head size ${headDim} rotates ${rotaryDim} dimensions; RoPE needs an even, nonzero number`);

  let slidingWindow: number | null = null;
  if (architecture === 'MistralForCausalLM' || (architecture === 'Qwen2ForCausalLM' && json.use_sliding_window === true)) {
    slidingWindow = Number.isInteger(json.sliding_window) ? (json.sliding_window as number) : null;
  } else if (architecture === 'Phi3ForCausalLM' && Number.isInteger(json.sliding_window)) {
    slidingWindow = json.sliding_window as number;
  }

  const gen = generationConfig ?? {};
  const eos = toIdList(gen.eos_token_id ?? json.eos_token_id);
  const bos = gen.bos_token_id ?? json.bos_token_id;
  return {
    architecture: architecture as Architecture,
    hiddenSize,
    intermediateSize: int('intermediate_size'),
    numLayers: int('num_hidden_layers'),
    numHeads,
    numKvHeads,
    headDim,
    rotaryDim,
    vocabSize: int('vocab_size'),
    rmsNormEps: num(json.rms_norm_eps ?? 1e-6, 'rms_norm_eps'),
    ropeTheta,
    ropeScaling,
    maxPositionEmbeddings: int('max_position_embeddings', 2048),
    tieWordEmbeddings: json.tie_word_embeddings === true,
    untiedDeclared: json.tie_word_embeddings === false,
    slidingWindow,
    attentionBias: architecture === 'Qwen2ForCausalLM' || json.attention_bias === true,
    bosTokenId: Number.isInteger(bos) ? (bos as number) : null,
    eosTokenIds: eos,
  };
}

/** Bytes of one sequence's KV cache: K and V, every layer, `contextLength` positions (f32 on the CPU). */
export function kvCacheBytes(c: ModelConfig, contextLength: number, bytesPerValue = 4): number {
  return 2 * c.numLayers * contextLength * c.numKvHeads * c.headDim * bytesPerValue;
}

export function formatBytes(n: number): string {
  if (n >= 1e12) return `${(n / 1e12).toFixed(1)} TB`;
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)} GB`;
  return `${(n / 1e6).toFixed(1)} MB`;
}

/**
 * Checks a requested context length before anything is allocated: a whole number >= 2, within the
 * model's max_position_embeddings (the message names the maximum), and, given `memoryBytes`, a KV
 * cache that fits (the message says how much it would need). `what` names the flag or option.
 */
export function checkContextLength(c: ModelConfig, contextLength: number, what = 'the context length', memoryBytes?: number): number {
  if (!Number.isSafeInteger(contextLength) || contextLength < 2) throw new InvalidInputError(`${what} must be a whole number >= 2, got ${contextLength}`);
  const max = c.maxPositionEmbeddings;
  if (contextLength > max) {
    throw new InvalidInputError(`${what} ${contextLength} is more than the model's maximum of ${max} positions (max_position_embeddings); use at most ${max}`);
  }
  const need = kvCacheBytes(c, contextLength);
  if (memoryBytes !== undefined && need > memoryBytes) {
    throw new InvalidInputError(
      `${what} ${contextLength} needs ${formatBytes(need)} of KV cache for each sequence (${c.numLayers} layers x ${c.numKvHeads} KV heads x ${c.headDim} x 2 x 4 bytes a position), ` +
        `more than this machine's ${formatBytes(memoryBytes)} of memory; use a smaller ${what}`,
    );
  }
  return contextLength;
}
