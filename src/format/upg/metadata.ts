/** The UPG keys of the safetensors `__metadata__` (docs/upg-format.md, section 2). */
import type { EncodingParams } from './encodings/common.js';

export const UPG_FORMAT = 'upg';
export const UPG_VERSION = '1';
/** Every buffer (and the data region) starts at a multiple of this many bytes. */
export const UPG_ALIGNMENT = 256;
export const PAD_PREFIX = '__upg_pad.';

export interface TensorRecord {
  name: string;
  shape: number[];
  encoding: string;
  params: EncodingParams;
  /** role -> safetensors entry name */
  buffers: Record<string, string>;
  crc32: string;
  stats?: { sparsity: number; rel_error: number };
}

/** The model files carried in the artifact (verbatim text), keyed as in the metadata. */
export interface UpgModelFiles {
  upg_config: string;
  upg_generation_config?: string;
  upg_tokenizer?: string;
  upg_tokenizer_config?: string;
  upg_chat_template?: string;
  upg_source?: string;
}

/** Entry name of a buffer: dense tensors keep their own name, other encodings get `<name>:<role>`. */
export function bufferEntryName(tensor: string, encoding: string, role: string): string {
  return encoding === 'dense' ? tensor : `${tensor}:${role}`;
}
