/**
 * `pdvm verify`: everything loading checks, plus every checksum, without building the model. Each check
 * is named, and a failure says which one failed:
 *   header      the safetensors container, the UPG header checksum (version 2) and every tensor record
 *   config      upg_config and upg_generation_config parse and make sense
 *   tensors     every tensor the architecture needs is there with the shape the config implies
 *   tokenizer   upg_tokenizer (and its config) can be read by the tokenizer
 *   template    upg_chat_template parses
 *   checksums   every tensor's CRC-32
 */
import { ModelFormatError, PdvmError } from '../../errors.js';
import type { ByteSource } from '../../io/source.js';
import { checkTensorsAgainstConfig, type TensorLookup } from '../../model/check.js';
import { parseConfig } from '../../model/config.js';
import { generationDefaults } from '../../runtime/defaults.js';
import { TextTokenizer } from '../../tokenizer/tokenizer.js';
import { UpgFile } from './reader.js';

export const VERIFY_CHECKS = ['header', 'config', 'tensors', 'tokenizer', 'template', 'checksums'] as const;
export type VerifyCheck = (typeof VERIFY_CHECKS)[number];

/** A check of `pdvm verify` failed; the message names the check, then the problem (file and key or tensor). */
export class VerifyError extends PdvmError {
  constructor(readonly check: VerifyCheck, readonly reason: unknown) {
    super(`${check} check failed: ${reason instanceof Error ? reason.message : String(reason)}`);
  }
}

export interface VerifyReport {
  tensors: number;
  /** Version 2 files: the header checksum matched. Version 1 files carry none. */
  metadataChecksummed: boolean;
  version: string;
  checks: VerifyCheck[];
}

/** The lookup over a UPG artifact's tensor records. */
export function upgLookup(file: UpgFile): TensorLookup {
  return {
    shape: (n) => file.records.get(n)?.shape,
    names: () => file.records.keys(),
    fileOf: () => file.name,
    configName: `${file.name} (upg_config)`,
  };
}

/** Parses a JSON object stored as a metadata string, naming the key when it is not one. */
export function metadataJson(file: string, key: string, text: string | undefined): Record<string, unknown> | null {
  if (text === undefined) return null;
  try {
    const v = JSON.parse(text);
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not a JSON object');
    return v;
  } catch (e) {
    throw new ModelFormatError(file, `metadata ${key} is not valid JSON (${(e as Error).message}); the file is corrupt`);
  }
}

export async function verifyUpg(source: () => Promise<ByteSource>, onTensor?: (name: string, done: number, total: number) => void): Promise<VerifyReport> {
  const run = async <T>(check: VerifyCheck, fn: () => T | Promise<T>): Promise<T> => {
    try {
      return await fn();
    } catch (e) {
      if (e instanceof PdvmError) throw new VerifyError(check, e);
      throw e;
    }
  };
  const file = await run('header', async () => UpgFile.open(await source()));
  try {
    const name = file.name;
    const f = file.files;
    const config = await run('config', () => {
      const gen = metadataJson(name, 'upg_generation_config', f.upg_generation_config) ?? {};
      generationDefaults(gen, `${name} (upg_generation_config)`);
      return parseConfig(metadataJson(name, 'upg_config', f.upg_config)!, `${name} (upg_config)`, gen);
    });
    await run('tensors', () => {
      for (const spec of checkTensorsAgainstConfig(config, upgLookup(file))) {
        const rec = file.record(spec.name);
        if (spec.kind === 'vector' && rec.encoding !== 'dense') throw new ModelFormatError(name, `vector ${spec.name} is stored as ${rec.encoding}; vectors must be dense`);
      }
    });
    const tokenizer = await run('tokenizer', () => {
      const tokenizerJson = metadataJson(name, 'upg_tokenizer', f.upg_tokenizer);
      if (!tokenizerJson) return null;
      return new TextTokenizer({
        tokenizerJson,
        tokenizerConfig: metadataJson(name, 'upg_tokenizer_config', f.upg_tokenizer_config) ?? {},
        chatTemplate: f.upg_chat_template ?? null,
        sources: { tokenizer: `${name} (upg_tokenizer)`, chatTemplate: `${name} (upg_chat_template)` },
      });
    });
    await run('template', () => {
      const problem = tokenizer?.chatTemplateProblem();
      if (problem) throw problem;
    });
    await run('checksums', () => file.verifyAll(onTensor));
    return {
      tensors: file.records.size,
      metadataChecksummed: file.metadataChecksummed,
      version: String((file.files as unknown as Record<string, unknown>).upg_version ?? ''),
      checks: [...VERIFY_CHECKS],
    };
  } finally {
    await file.close();
  }
}
