/** The weights of a decoder-only transformer in the engine's canonical layout, whatever the checkpoint. */
import type { ModelConfig } from './config.js';
import type { WeightTensor } from './tensor.js';

export interface LayerWeights {
  attnNorm: Float32Array; // (hidden)
  /** q, k and v stacked along rows: (numHeads*headDim + 2*numKvHeads*headDim, hidden); one part if the checkpoint fuses them. */
  qkv: WeightTensor[];
  qkvBias: Float32Array | null; // (qDim + 2*kvDim)
  o: WeightTensor; // (hidden, numHeads*headDim)
  mlpNorm: Float32Array; // (hidden)
  /** gate and up stacked along rows: (2*intermediate, hidden). */
  gateUp: WeightTensor[];
  down: WeightTensor; // (hidden, intermediate)
}

export interface ModelWeights {
  embed: WeightTensor; // (vocab, hidden)
  layers: LayerWeights[];
  finalNorm: Float32Array; // (hidden)
  lmHead: WeightTensor; // (vocab, hidden); the embedding itself when tied
}

/** A checkpoint tensor the architecture needs, with the shape the config implies. */
export interface TensorSpec {
  name: string;
  shape: number[];
  /** vectors (norms, biases) are always read as float32; matrices may be encoded. */
  kind: 'matrix' | 'vector';
}

/** What each architecture file exports: the tensors it needs and how they form the canonical layout. */
export interface ArchitectureDefinition {
  tensorSpecs(config: ModelConfig, has: (name: string) => boolean): TensorSpec[];
  assemble(config: ModelConfig, matrix: (name: string) => WeightTensor, vector: (name: string) => Float32Array, has: (name: string) => boolean): ModelWeights;
}

export function qDim(c: ModelConfig): number {
  return c.numHeads * c.headDim;
}
export function kvDim(c: ModelConfig): number {
  return c.numKvHeads * c.headDim;
}
