/** The UPG keys of the safetensors `__metadata__` (docs/upg-format.md, section 2). */
import type { EncodingParams } from './encodings/common.js';
import { crc32, crc32Hex } from './checksum.js';

export const UPG_FORMAT = 'upg';
/** The version this pdvm writes. Version 2 added the header checksum; version 1 files still load. */
export const UPG_VERSION = '2';
export const UPG_READABLE_VERSIONS: readonly string[] = ['1', '2'];

/**
 * Version 2: the header (length word, JSON, padding spaces) carries its own CRC-32 as the first value
 * of `__metadata__`, so it sits at a fixed offset; the CRC is computed with those 8 hex digits read as
 * "00000000" (docs/upg-format.md, section 2).
 */
export const HEADER_CRC_KEY = 'upg_header_crc32';
export const HEADER_CRC_PREFIX = `{"__metadata__":{"${HEADER_CRC_KEY}":"`;
export const HEADER_CRC_OFFSET = 8 + HEADER_CRC_PREFIX.length;
const ZERO_HEX = new TextEncoder().encode('00000000');

/** True when `head` (the file's first bytes) starts the way a version 2 header does. */
export function hasHeaderCrc(head: Uint8Array): boolean {
  if (head.length < HEADER_CRC_OFFSET + 8) return false;
  for (let i = 0; i < HEADER_CRC_PREFIX.length; i++) if (head[8 + i] !== HEADER_CRC_PREFIX.charCodeAt(i)) return false;
  return true;
}

/** The CRC-32 of the whole header region (8 + N bytes), its own hex digits taken as zeros. */
export function headerCrc(head: Uint8Array): string {
  let crc = crc32(head.subarray(0, HEADER_CRC_OFFSET));
  crc = crc32(ZERO_HEX, crc);
  crc = crc32(head.subarray(HEADER_CRC_OFFSET + 8), crc);
  return crc32Hex(crc);
}

/** The stored hex digits (not checked to be hex). */
export function storedHeaderCrc(head: Uint8Array): string {
  return new TextDecoder().decode(head.subarray(HEADER_CRC_OFFSET, HEADER_CRC_OFFSET + 8));
}

/** Writes the header's CRC into its place (the writer, and tests that edit a header on purpose). */
export function sealHeader(head: Uint8Array): void {
  head.set(new TextEncoder().encode(headerCrc(head)), HEADER_CRC_OFFSET);
}
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
