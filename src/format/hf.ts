/**
 * Loads a Hugging Face model folder: config.json, generation_config.json, model.safetensors or shards
 * listed in model.safetensors.index.json, tokenizer.json + tokenizer_config.json, and the chat template.
 */
import { readFile, stat } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import { ModelFormatError } from '../errors.js';
import { FileSource } from '../io/node-file.js';
import { SafetensorsFile, type TensorInfo } from './safetensors.js';
import type { TokenizerFiles } from '../tokenizer/tokenizer.js';

export async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

export async function readJsonFile(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new ModelFormatError(path, `cannot be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  try {
    const v = JSON.parse(text);
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not a JSON object');
    return v;
  } catch (e) {
    throw new ModelFormatError(path, `is not valid JSON: ${(e as Error).message}`);
  }
}

/** A folder where a file belongs gets a message naming it, not a raw EISDIR later. */
async function mustBeFile(path: string): Promise<void> {
  if (!(await stat(path)).isFile()) throw new ModelFormatError(path, 'is a folder, not a file; put the safetensors file itself there');
}

/** The tensors of one checkpoint, possibly spread over several safetensors shards. */
export class CheckpointTensors {
  private constructor(private readonly byName: Map<string, SafetensorsFile>, readonly files: SafetensorsFile[]) {}

  static async open(dir: string): Promise<CheckpointTensors> {
    const single = join(dir, 'model.safetensors');
    const index = join(dir, 'model.safetensors.index.json');
    const byName = new Map<string, SafetensorsFile>();
    const files: SafetensorsFile[] = [];
    try {
      if (await exists(single)) {
        await mustBeFile(single);
        const f = await SafetensorsFile.open(await FileSource.open(single));
        files.push(f);
        for (const name of f.tensors.keys()) byName.set(name, f);
      } else if (await exists(index)) {
        const map = (await readJsonFile(index)).weight_map as Record<string, string> | undefined;
        if (!map || typeof map !== 'object' || Array.isArray(map)) {
          throw new ModelFormatError(index, `needs a "weight_map" object of tensor name -> shard file, got ${Array.isArray(map) ? 'an array' : JSON.stringify(map) ?? 'nothing'}; re-download the index`);
        }
        for (const [name, shard] of Object.entries(map)) {
          if (typeof shard !== 'string' || shard.length === 0 || isAbsolute(shard) || shard.split(/[\\/]/).includes('..')) {
            throw new ModelFormatError(index, `"weight_map" maps ${JSON.stringify(name)} to ${JSON.stringify(shard)}; each value must be a shard file name in the same folder`);
          }
        }
        const shards = new Map<string, SafetensorsFile>();
        for (const shard of new Set(Object.values(map))) {
          const path = join(dir, shard);
          if (!(await exists(path))) throw new ModelFormatError(index, `lists shard ${shard}, which is missing from ${dir}`);
          await mustBeFile(path);
          const f = await SafetensorsFile.open(await FileSource.open(path));
          shards.set(shard, f);
          files.push(f);
        }
        for (const [name, shard] of Object.entries(map)) {
          const f = shards.get(shard)!;
          if (!f.tensors.has(name)) throw new ModelFormatError(f.name, `has no tensor ${name}, though ${index} places it there`);
          byName.set(name, f);
        }
      } else {
        throw new ModelFormatError(dir, 'has neither model.safetensors nor model.safetensors.index.json');
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
export async function readTokenizerFiles(dir: string): Promise<TokenizerFiles | null> {
  const tj = join(dir, 'tokenizer.json');
  if (!(await exists(tj))) return null;
  const tokenizerJson = await readJsonFile(tj);
  const tcPath = join(dir, 'tokenizer_config.json');
  const tokenizerConfig = (await exists(tcPath)) ? await readJsonFile(tcPath) : {};
  let chatTemplate: string | null = null;
  let templateSource = `${tcPath} (chat_template)`;
  const jinja = join(dir, 'chat_template.jinja');
  if (await exists(jinja)) {
    try {
      chatTemplate = await readFile(jinja, 'utf8');
    } catch (e) {
      throw new ModelFormatError(jinja, `cannot be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
    templateSource = jinja;
  } else if (typeof tokenizerConfig.chat_template === 'string') chatTemplate = tokenizerConfig.chat_template;
  else if (Array.isArray(tokenizerConfig.chat_template)) {
    // a list of named templates: take "default"
    const named = tokenizerConfig.chat_template as { name: string; template: string }[];
    const chosen = named.find((t) => t?.name === 'default') ?? named[0];
    if (typeof chosen?.template !== 'string') throw new ModelFormatError(tcPath, '"chat_template" is a list but not of {"name", "template"} strings; fix or remove it');
    chatTemplate = chosen.template;
  } else if (tokenizerConfig.chat_template !== undefined && tokenizerConfig.chat_template !== null) {
    throw new ModelFormatError(tcPath, `"chat_template" must be a string or a list of {"name", "template"}, got ${typeof tokenizerConfig.chat_template}; fix or remove it`);
  }
  return { tokenizerJson, tokenizerConfig, chatTemplate, sources: { tokenizer: tj, chatTemplate: templateSource } };
}
