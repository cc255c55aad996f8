/**
 * The loading layer: a model source (path, URL, bytes, Blob, ByteSource, or a folder of them) opened
 * as byte sources (io/open.ts), then read by its format: a UPG artifact (format/upg/load.ts) or a
 * Hugging Face folder (here, through format/hf.ts), into the canonical weights plus config, tokenizer,
 * chat template and generation defaults.
 */
import { ModelFormatError } from '../errors.js';
import { CheckpointTensors, readTokenizerFiles } from '../format/hf.js';
import { loadUpgModel } from '../format/upg/load.js';
import { readOptionalJson, type FileSet } from '../io/files.js';
import { openModelSource, type ModelSource, type OpenOptions } from '../io/open.js';
import type { ByteSource } from '../io/source.js';
import { TextTokenizer } from '../tokenizer/tokenizer.js';
import { architectures } from './architectures/index.js';
import { parseConfig } from './config.js';
import { checkTensorsAgainstConfig, checkpointLookup } from './check.js';
import { tensorLoading, type LoadOptions, type LoadedModel, type TensorSummary } from './loaded.js';
import { LazyTensor } from './lazy.js';
import { DenseTensor, type WeightTensor } from './tensor.js';

export type { LoadOptions, LoadedModel, LoadProgress, TensorSummary } from './loaded.js';
export type { ModelSource } from '../io/open.js';

export interface ModelLoadOptions extends LoadOptions, Omit<OpenOptions, 'onDownload' | 'signal'> {}

export async function loadModel(source: ModelSource, options: ModelLoadOptions = {}): Promise<LoadedModel> {
  const opened = await openModelSource(source, {
    ...options,
    onDownload: options.onProgress && ((loadedBytes, totalBytes, url) => options.onProgress!({ phase: 'download', loadedBytes, totalBytes, tensor: url })),
  });
  if (opened.kind === 'folder') return loadHfModel(opened.files, options);
  return loadModelFile(opened.source, options);
}

/** A single file: a UPG artifact, recognised by its safetensors header. */
async function loadModelFile(source: ByteSource, options: LoadOptions): Promise<LoadedModel> {
  try {
    await checkSafetensorsSignature(source);
  } catch (e) {
    await source.close();
    throw e;
  }
  return loadUpgModel(source, options);
}

/** A safetensors file starts with a little-endian u64 header length, then the header's "{". */
async function checkSafetensorsSignature(source: ByteSource): Promise<void> {
  const head = await source.read(0, Math.min(source.size, 9));
  const headerLength = head.length >= 8 ? Number(new DataView(head.buffer, head.byteOffset, 8).getBigUint64(0, true)) : -1;
  if (head.length === 9 && head[8] === 0x7b && headerLength > 0 && headerLength <= source.size - 8) return;
  const shown = [...head.subarray(0, 8)].map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('');
  throw new ModelFormatError(
    source.name,
    `is neither a UPG artifact nor a safetensors file (${source.size} bytes, starting "${shown}"); give a .upg made by pdvm compress, or a Hugging Face folder (a path, a URL ending in "/", or its files by name)`,
  );
}

export async function loadHfModel(folder: FileSet | string, options: LoadOptions = {}): Promise<LoadedModel> {
  if (typeof folder === 'string') {
    const opened = await openModelSource(folder);
    if (opened.kind !== 'folder') throw new ModelFormatError(folder, 'is a file; expected a Hugging Face model folder');
    folder = opened.files;
  }
  const files = folder;
  const configPath = files.locate('config.json');
  const configJson = await readOptionalJson(files, 'config.json');
  if (!configJson) throw new ModelFormatError(files.name, 'has no config.json; is this a Hugging Face model folder?');
  const generationConfig = (await readOptionalJson(files, 'generation_config.json')) ?? {};
  const config = parseConfig(configJson, configPath, generationConfig);
  const tokFiles = await readTokenizerFiles(files);
  const tokenizer = tokFiles ? new TextTokenizer(tokFiles) : null;

  const ckpt = await CheckpointTensors.open(files);
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
    const matrices = new Map<string, WeightTensor>();
    const vectors = new Map<string, Float32Array>();
    const tensors: TensorSummary[] = [];
    const { progress, aborted } = tensorLoading(options, totalBytes, files.name);
    for (const spec of specs) {
      aborted();
      const info = ckpt.info(spec.name);
      const [rows, cols] = spec.shape as [number, number];
      const read = async () => {
        aborted();
        const m = new DenseTensor(rows, cols, await ckpt.readF32(spec.name), info.dtype as 'F32');
        progress(spec.name, info.byteLength);
        return m;
      };
      if (spec.kind === 'vector') {
        vectors.set(spec.name, await ckpt.readF32(spec.name));
        progress(spec.name, info.byteLength);
      } else if (options.lazy) matrices.set(spec.name, new LazyTensor(spec.name, 'dense', rows, cols, info.byteLength, read));
      else matrices.set(spec.name, await read());
      tensors.push({ name: spec.name, encoding: 'dense', dtype: info.dtype, shape: info.shape, bytes: info.byteLength });
    }
    const weights = arch.assemble(config, (n) => matrices.get(n)!, (n) => vectors.get(n)!, has);
    if (options.lazy) return { path: files.name, config, weights, tokenizer, generationConfig, tensors, close: () => ckpt.close() };
    await ckpt.close();
    return { path: files.name, config, weights, tokenizer, generationConfig, tensors };
  } catch (e) {
    await ckpt.close();
    throw e;
  }
}
