/**
 * Loads a UPG artifact from any byte source into the engine's canonical weights: matrices stay in
 * their encodings (the CPU engine multiplies from them directly), vectors become float32, and config,
 * tokenizer and chat template come from the artifact's metadata.
 */
import type { ByteSource } from '../../io/source.js';
import { architectures } from '../../model/architectures/index.js';
import { parseConfig } from '../../model/config.js';
import { checkTensorsAgainstConfig } from '../../model/check.js';
import { metadataJson, upgLookup } from './verify.js';
import { tensorLoading, type LoadOptions, type LoadedModel, type TensorSummary } from '../../model/loaded.js';
import type { WeightTensor } from '../../model/tensor.js';
import { LazyTensor } from '../../model/lazy.js';
import { TextTokenizer } from '../../tokenizer/tokenizer.js';
import { UpgFile } from './reader.js';

/** Reads the artifact in `source` (closed when done or on failure; with `lazy`, by the loaded model's close()). */
export async function loadUpgModel(source: ByteSource, options: LoadOptions = {}): Promise<LoadedModel> {
  const file = await UpgFile.open(source);
  const path = source.name;
  try {
    const f = file.files;
    const generationConfig = metadataJson(path, 'upg_generation_config', f.upg_generation_config) ?? {};
    const config = parseConfig(metadataJson(path, 'upg_config', f.upg_config)!, `${path} (upg_config)`, generationConfig);
    const tokenizerJson = metadataJson(path, 'upg_tokenizer', f.upg_tokenizer);
    const tokenizer = tokenizerJson
      ? new TextTokenizer({ tokenizerJson, tokenizerConfig: metadataJson(path, 'upg_tokenizer_config', f.upg_tokenizer_config) ?? {}, chatTemplate: f.upg_chat_template ?? null, sources: { tokenizer: `${path} (upg_tokenizer)`, chatTemplate: `${path} (upg_chat_template)` } })
      : null;

    const arch = architectures[config.architecture];
    const has = (n: string) => file.records.has(n);
    const specs = checkTensorsAgainstConfig(config, upgLookup(file));
    const totalBytes = specs.reduce((a, s) => a + file.storedBytes(s.name), 0);
    const matrices = new Map<string, WeightTensor>();
    const vectors = new Map<string, Float32Array>();
    const tensors: TensorSummary[] = [];
    const { progress, aborted } = tensorLoading(options, totalBytes, path);
    for (const spec of specs) {
      aborted();
      const rec = file.record(spec.name);
      const bytes = file.storedBytes(spec.name);
      if (spec.kind === 'vector') {
        vectors.set(spec.name, await file.readVector(spec.name));
        progress(spec.name, bytes);
      } else if (options.lazy) {
        const read = async () => {
          aborted();
          const m = await file.readMatrix(spec.name);
          progress(spec.name, bytes);
          return m;
        };
        matrices.set(spec.name, new LazyTensor(spec.name, rec.encoding, rec.shape[0]!, rec.shape[1]!, bytes, read));
      } else {
        matrices.set(spec.name, await file.readMatrix(spec.name));
        progress(spec.name, bytes);
      }
      const params = Object.entries(rec.params).map(([k, v]) => `${k}=${v}`).join(',');
      tensors.push({
        name: spec.name,
        encoding: rec.encoding,
        dtype: rec.encoding === 'dense' ? String(rec.params.dtype) : params,
        shape: rec.shape,
        bytes,
        sparsity: rec.stats?.sparsity,
        relError: rec.stats?.rel_error,
      });
    }
    const weights = arch.assemble(config, (n) => matrices.get(n)!, (n) => vectors.get(n)!, has);
    if (options.lazy) return { path, config, weights, tokenizer, generationConfig, tensors, close: () => file.close() };
    await file.close();
    return { path, config, weights, tokenizer, generationConfig, tensors };
  } catch (e) {
    await file.close();
    throw e;
  }
}
