/**
 * A set of named files: a Hugging Face model folder on disk (io/node-files.ts), under a base URL, or
 * given one by one (a map of file names to sources). The loaders ask for files by name; optional ones
 * (generation_config.json, chat_template.jinja...) may be absent.
 */
import { ModelFormatError } from '../errors.js';
import { readText, type ByteSource } from './source.js';

export interface FileSet {
  /** The folder path or base URL, for messages. */
  readonly name: string;
  /** The file, or null where the set has no such file; other failures throw. */
  open(file: string): Promise<ByteSource | null>;
  /** Where a file of the set is (a path or URL), for messages. */
  locate(file: string): string;
}

/** A file set from a map of file names to sources opened on demand. */
export class MapFileSet implements FileSet {
  constructor(readonly name: string, private readonly files: Map<string, () => Promise<ByteSource>>) {}
  async open(file: string): Promise<ByteSource | null> {
    const opener = this.files.get(file);
    return opener ? opener() : null;
  }
  locate(file: string): string {
    return this.files.has(file) ? file : `${file} (not among the files given: ${[...this.files.keys()].join(', ')})`;
  }
}

/** The file's text, or null where it is absent. */
export async function readOptionalText(files: FileSet, file: string): Promise<string | null> {
  const source = await files.open(file);
  if (!source) return null;
  try {
    return await readText(source);
  } finally {
    await source.close();
  }
}

/** The file parsed as a JSON object, or null where it is absent. */
export async function readOptionalJson(files: FileSet, file: string): Promise<Record<string, unknown> | null> {
  const text = await readOptionalText(files, file);
  if (text === null) return null;
  try {
    const v = JSON.parse(text);
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not a JSON object');
    return v;
  } catch (e) {
    throw new ModelFormatError(files.locate(file), `is not valid JSON: ${(e as Error).message}`);
  }
}
