/**
 * Reads a Hugging Face model folder through a FileSet (a local folder, a base URL, or files given by
 * name): config.json, generation_config.json, model.safetensors or shards listed in
 * model.safetensors.index.json, tokenizer.json + tokenizer_config.json, and the chat template.
 */
import { ModelFormatError } from '../errors.js';
import { readOptionalJson, readOptionalText, type FileSet } from '../io/files.js';
import { nodePlatform } from '../io/platform.js';
import { SafetensorsFile, type TensorInfo } from './safetensors.js';
import type { TokenizerFiles } from '../tokenizer/tokenizer.js';

/** A file set as given, or a local folder's (Node). */
export async function fileSetOf(folder: FileSet | string): Promise<FileSet> {
  return typeof folder === 'string' ? (await nodePlatform(folder)).openFolder(folder) : folder;
}

/** A shard name must be a file of the same folder: no absolute path, no "..". */
function isPlainFileName(shard: unknown): shard is string {
  return typeof shard === 'string' && shard.length > 0 && !/^([\\/]|[a-z]:[\\/])/i.test(shard) && !shard.split(/[\\/]/).includes('..');
}

/** The tensors of one checkpoint, possibly spread over several safetensors shards. */
export class CheckpointTensors {
  private constructor(private readonly byName: Map<string, SafetensorsFile>, readonly files: SafetensorsFile[]) {}

  static async open(folder: FileSet | string): Promise<CheckpointTensors> {
    const set = await fileSetOf(folder);
    const byName = new Map<string, SafetensorsFile>();
    const files: SafetensorsFile[] = [];
    try {
      const single = await set.open('model.safetensors');
      if (single) {
        const f = await SafetensorsFile.open(single);
        files.push(f);
        for (const name of f.tensors.keys()) byName.set(name, f);
      } else {
        const index = set.locate('model.safetensors.index.json');
        const json = await readOptionalJson(set, 'model.safetensors.index.json');
        if (!json) throw new ModelFormatError(set.name, 'has neither model.safetensors nor model.safetensors.index.json');
        const map = json.weight_map as Record<string, string> | undefined;
        if (!map || typeof map !== 'object' || Array.isArray(map)) {
          throw new ModelFormatError(index, `needs a "weight_map" object of tensor name -> shard file, got ${Array.isArray(map) ? 'an array' : JSON.stringify(map) ?? 'nothing'}; re-download the index`);
        }
        for (const [name, shard] of Object.entries(map)) {
          if (!isPlainFileName(shard)) {
            throw new ModelFormatError(index, `"weight_map" maps ${JSON.stringify(name)} to ${JSON.stringify(shard)}; each value must be a shard file name in the same folder`);
          }
        }
        const shards = new Map<string, SafetensorsFile>();
        for (const shard of new Set(Object.values(map))) {
          const source = await set.open(shard);
          if (!source) throw new ModelFormatError(index, `lists shard ${shard}, which is missing from ${set.name}`);
          const f = await SafetensorsFile.open(source);
          shards.set(shard, f);
          files.push(f);
        }
        for (const [name, shard] of Object.entries(map)) {
          const f = shards.get(shard)!;
          if (!f.tensors.has(name)) throw new ModelFormatError(f.name, `has no tensor ${name}, though ${index} places it there`);
          byName.set(name, f);
        }
      }
    } catch (e) {
      await Promise.all(files.map((f) => f.close()));
      throw e;
    }
    return new CheckpointTensors(byName, files);
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  info(name: string): TensorInfo & { file: string } {
    const f = this.byName.get(name);
    if (!f) throw new ModelFormatError(this.files.map((x) => x.name).join(', '), `has no tensor named ${name}`);
    return { ...f.tensors.get(name)!, file: f.name };
  }

  names(): string[] {
    return [...this.byName.keys()];
  }

  readF32(name: string): Promise<Float32Array> {
    this.info(name);
    return this.byName.get(name)!.readF32(name);
  }

  async close(): Promise<void> {
    await Promise.all(this.files.map((f) => f.close()));
  }
}

/** Tokenizer files of a model folder, or null when it has no tokenizer.json (token ids only). */
export async function readTokenizerFiles(folder: FileSet | string): Promise<TokenizerFiles | null> {
  const set = await fileSetOf(folder);
  const tokenizerJson = await readOptionalJson(set, 'tokenizer.json');
  if (!tokenizerJson) return null;
  const tcPath = set.locate('tokenizer_config.json');
  const tokenizerConfig = (await readOptionalJson(set, 'tokenizer_config.json')) ?? {};
  let templateSource = `${tcPath} (chat_template)`;
  let chatTemplate = await readOptionalText(set, 'chat_template.jinja');
  if (chatTemplate !== null) templateSource = set.locate('chat_template.jinja');
  else if (typeof tokenizerConfig.chat_template === 'string') chatTemplate = tokenizerConfig.chat_template;
  else if (Array.isArray(tokenizerConfig.chat_template)) {
    // a list of named templates: take "default"
    const named = tokenizerConfig.chat_template as { name: string; template: string }[];
    const chosen = named.find((t) => t?.name === 'default') ?? named[0];
    if (typeof chosen?.template !== 'string') throw new ModelFormatError(tcPath, '"chat_template" is a list but not of {"name", "template"} strings; fix or remove it');
    chatTemplate = chosen.template;
  } else if (tokenizerConfig.chat_template !== undefined && tokenizerConfig.chat_template !== null) {
    throw new ModelFormatError(tcPath, `"chat_template" must be a string or a list of {"name", "template"}, got ${typeof tokenizerConfig.chat_template}; fix or remove it`);
  }
  return { tokenizerJson, tokenizerConfig, chatTemplate, sources: { tokenizer: set.locate('tokenizer.json'), chatTemplate: templateSource } };
}
