/**
 * Loads a model from a Hugging Face folder (or, through format/upg, a UPG artifact) into the canonical
 * weights plus everything generation needs: config, tokenizer, chat template, generation defaults.
 */
import { join } from 'node:path';
import { stat } from 'node:fs/promises';
import { ModelFormatError, PdvmError } from '../errors.js';
import { CheckpointTensors, exists, readJsonFile, readTokenizerFiles } from '../format/hf.js';
import { TextTokenizer } from '../tokenizer/tokenizer.js';
import { architectures } from './architectures/index.js';
import { loadUpgModel } from '../format/upg/load.js';
import { parseConfig, type ModelConfig } from './config.js';
import { checkTensorsAgainstConfig, checkpointLookup } from './check.js';
import { DenseTensor, type WeightTensor } from './tensor.js';
import type { ModelWeights } from './weights.js';

export interface TensorSummary {
  name: string;
  encoding: string;
  dtype: string;
  shape: number[];
  bytes: number;
  /** UPG artifacts: fraction of zero weights and relative reconstruction error, as the compressor measured them. */
  sparsity?: number;
  relError?: number;
}

export interface LoadedModel {
  /** Where it came from (folder or file). */
  path: string;
  config: ModelConfig;
  weights: ModelWeights;
  tokenizer: TextTokenizer | null;
  /** Defaults from generation_config.json (temperature, top_p, ...), as written there. */
  generationConfig: Record<string, unknown>;
  tensors: TensorSummary[];
}

export interface LoadProgress {
  loadedBytes: number;
  totalBytes: number;
  tensor: string;
}

export interface LoadOptions {
  onProgress?: (p: LoadProgress) => void;
}

export async function loadModel(path: string, options: LoadOptions = {}): Promise<LoadedModel> {
  let isDir: boolean;
  try {
    isDir = (await stat(path)).isDirectory();
  } catch {
    throw new PdvmError(`${path}: no such model folder or file`);
  }
  if (!isDir) {
    if (path.endsWith('.upg')) return loadUpgModel(path, options);
    throw new ModelFormatError(path, 'is a file; expected a Hugging Face model folder or a .upg artifact');
  }
  return loadHfModel(path, options);
}

export async function loadHfModel(dir: string, options: LoadOptions = {}): Promise<LoadedModel> {
  const configPath = join(dir, 'config.json');
  if (!(await exists(configPath))) throw new ModelFormatError(dir, 'has no config.json; is this a Hugging Face model folder?');
  const genPath = join(dir, 'generation_config.json');
  const generationConfig = (await exists(genPath)) ? await readJsonFile(genPath) : {};
  const config = parseConfig(await readJsonFile(configPath), configPath, generationConfig);
  const tokFiles = await readTokenizerFiles(dir);
  const tokenizer = tokFiles ? new TextTokenizer(tokFiles) : null;

  const ckpt = await CheckpointTensors.open(dir);
  try {
    const arch = architectures[config.architecture];
    const has = (n: string) => ckpt.has(n);
    // validate every tensor before reading any: sizes, names and shapes (model/check.ts), then dtypes
    const specs = checkTensorsAgainstConfig(config, checkpointLookup(ckpt));
    for (const spec of specs) {
      const info = ckpt.info(spec.name);
      if (!['F32', 'F16', 'BF16'].includes(info.dtype)) {
        throw new ModelFormatError(info.file, `tensor ${spec.name} has dtype ${info.dtype}; expected F32, F16 or BF16`);
      }
    }
    const totalBytes = specs.reduce((a, s) => a + ckpt.info(s.name).byteLength, 0);
    let loadedBytes = 0;
    const matrices = new Map<string, WeightTensor>();
    const vectors = new Map<string, Float32Array>();
    const tensors: TensorSummary[] = [];
    for (const spec of specs) {
      const info = ckpt.info(spec.name);
      const data = await ckpt.readF32(spec.name);
      if (spec.kind === 'matrix') matrices.set(spec.name, new DenseTensor(spec.shape[0]!, spec.shape[1]!, data, info.dtype as 'F32'));
      else vectors.set(spec.name, data);
      tensors.push({ name: spec.name, encoding: 'dense', dtype: info.dtype, shape: info.shape, bytes: info.byteLength });
      loadedBytes += info.byteLength;
      options.onProgress?.({ loadedBytes, totalBytes, tensor: spec.name });
    }
    const weights = arch.assemble(config, (n) => matrices.get(n)!, (n) => vectors.get(n)!, has);
    return { path: dir, config, weights, tokenizer, generationConfig, tensors };
  } finally {
    await ckpt.close();
  }
}
