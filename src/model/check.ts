/**
 * Checks a config against the tensors a checkpoint or artifact holds, before anything is allocated:
 * the layer count and the vocabulary first (so a config that claims 10^9 layers or 2^40 tokens fails at
 * once instead of building a tensor list of that size), then every tensor the architecture needs, by
 * name and shape. Used by loading (Hugging Face folders and UPG artifacts), `pdvm compress` and
 * `pdvm verify`, so all of them refuse the same files with the same message.
 */
import { ModelFormatError } from '../errors.js';
import { architectures } from './architectures/index.js';
import type { ModelConfig } from './config.js';
import type { TensorSpec } from './weights.js';

export interface TensorLookup {
  /** Shape of a tensor, or undefined when there is none of that name. */
  shape(name: string): number[] | undefined;
  names(): Iterable<string>;
  /** What a message names as the holder of tensor `name` (a file, or all of them when it is missing). */
  fileOf(name?: string): string;
  /** How a message names the config (`config.json`, `model.upg (upg_config)`). */
  configName: string;
}

const LAYER = /^model\.layers\.(\d+)\./;

/** The tensors the architecture needs, each present with the shape the config implies; throws ModelFormatError naming the first that is not. */
export function checkTensorsAgainstConfig(config: ModelConfig, tensors: TensorLookup): TensorSpec[] {
  const fail = (file: string, problem: string): never => {
    throw new ModelFormatError(file, problem);
  };
  // sizes first, from a single pass over the names: nothing here grows with what the config claims
  let layers = 0;
  for (const name of tensors.names()) {
    const m = LAYER.exec(name);
    if (m) layers = Math.max(layers, Number(m[1]) + 1);
  }
  if (config.numLayers !== layers) {
    fail(tensors.configName, `num_hidden_layers is ${config.numLayers} but ${tensors.fileOf()} holds tensors for ${layers} layers; fix num_hidden_layers or use the matching weights`);
  }
  const embed = tensors.shape('model.embed_tokens.weight');
  if (embed && embed.length === 2 && (embed[0] !== config.vocabSize || embed[1] !== config.hiddenSize)) {
    fail(
      tensors.fileOf('model.embed_tokens.weight'),
      `tensor model.embed_tokens.weight has shape [${embed}] but ${tensors.configName} implies [${config.vocabSize},${config.hiddenSize}] (vocab_size, hidden_size); fix the config or use the matching weights`,
    );
  }
  const has = (n: string) => tensors.shape(n) !== undefined;
  if (config.untiedDeclared && !has('lm_head.weight')) {
    fail(
      tensors.fileOf(),
      `has no lm_head.weight, but ${tensors.configName} says "tie_word_embeddings": false (an output layer of its own); add the tensor, or set tie_word_embeddings to true if the model shares the embedding`,
    );
  }
  const specs = architectures[config.architecture].tensorSpecs(config, has);
  for (const spec of specs) {
    const shape = tensors.shape(spec.name);
    if (!shape) fail(tensors.fileOf(), `is missing tensor ${spec.name}, which ${config.architecture} needs`);
    if (shape!.length !== spec.shape.length || shape!.some((d, i) => d !== spec.shape[i])) {
      fail(tensors.fileOf(spec.name), `tensor ${spec.name} has shape [${shape}] but ${tensors.configName} implies [${spec.shape}]`);
    }
  }
  return specs;
}

/** The lookup over a Hugging Face checkpoint (one file or shards). */
export function checkpointLookup(ckpt: { has(n: string): boolean; info(n: string): { shape: number[]; file: string }; names(): string[]; files: { name: string }[] }): TensorLookup {
  return {
    shape: (n) => (ckpt.has(n) ? ckpt.info(n).shape : undefined),
    names: () => ckpt.names(),
    fileOf: (n) => (n !== undefined && ckpt.has(n) ? ckpt.info(n).file : ckpt.files.map((f) => f.name).join(', ')),
    configName: 'config.json',
  };
}
