/**
 * Checks a tokenizer.json's structure before @huggingface/tokenizers reads it, so a malformed file gets
 * a ModelFormatError naming the file and the key (`model.merges[3] must be ...`) instead of the
 * library's `x.split is not a function`. Only what the library would trip over is checked; the values
 * of a well-formed table are its business.
 */
import { ModelFormatError } from '../errors.js';

type Json = Record<string, unknown>;

const MODELS = ['BPE', 'WordPiece', 'Unigram'];
/** The component types @huggingface/tokenizers implements, by section (and the key of a Sequence's list). */
const COMPONENTS: Record<string, { types: string[]; list: string }> = {
  normalizer: { types: ['BertNormalizer', 'Precompiled', 'Sequence', 'Replace', 'NFC', 'NFD', 'NFKC', 'NFKD', 'Strip', 'StripAccents', 'Lowercase', 'Prepend'], list: 'normalizers' },
  pre_tokenizer: { types: ['BertPreTokenizer', 'Sequence', 'Whitespace', 'WhitespaceSplit', 'Metaspace', 'ByteLevel', 'Split', 'Punctuation', 'Digits', 'Replace', 'FixedLength'], list: 'pretokenizers' },
  post_processor: { types: ['TemplateProcessing', 'ByteLevel', 'BertProcessing', 'RobertaProcessing', 'Sequence'], list: 'processors' },
  decoder: { types: ['ByteLevel', 'WordPiece', 'Metaspace', 'BPEDecoder', 'CTC', 'Sequence', 'Replace', 'Fuse', 'Strip', 'ByteFallback'], list: 'decoders' },
};
const FIX = 're-download it or export it again with transformers (tokenizer.save_pretrained)';

function describe(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'null';
  if (Array.isArray(v)) return `an array of ${v.length}`;
  if (typeof v === 'object') return 'an object';
  const s = JSON.stringify(v) ?? String(v);
  return `${typeof v === 'string' ? 'the string' : typeof v} ${s.length > 40 ? s.slice(0, 40) + '...' : s}`;
}

const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Returns the tokenizer.json with absent optional sections set to null (as the library needs), or throws. */
export function validateTokenizerJson(json: unknown, file: string): Json {
  const fail = (problem: string): never => {
    throw new ModelFormatError(file, `${problem}; ${FIX}`);
  };
  if (!isObject(json)) return fail(`must be a JSON object, got ${describe(json)}`);
  const model = json.model;
  if (!isObject(model)) return fail(`has no "model" object (got ${describe(model)}), so it holds no vocabulary; is this a Hugging Face tokenizer.json?`);
  const type = model.type;
  if (type !== undefined && (typeof type !== 'string' || !MODELS.includes(type))) {
    fail(`"model.type" is ${describe(type)}; supported: ${MODELS.join(', ')}`);
  }
  const vocab = model.vocab;
  if (type === 'Unigram' || (type === undefined && Array.isArray(vocab))) {
    if (!Array.isArray(vocab)) fail(`"model.vocab" of a Unigram model must be a list of [piece, score], got ${describe(vocab)}`);
    const list = vocab as unknown[];
    if (list.length === 0) fail('"model.vocab" is empty: a tokenizer needs at least one token');
    const bad = list.findIndex((e) => !Array.isArray(e) || typeof e[0] !== 'string' || typeof e[1] !== 'number');
    if (bad >= 0) fail(`"model.vocab[${bad}]" must be [piece, score], got ${describe(list[bad])}`);
  } else {
    if (!isObject(vocab)) return fail(`"model.vocab" must be an object of token -> id, got ${describe(vocab)}`);
    const entries = Object.entries(vocab);
    if (entries.length === 0) fail('"model.vocab" is empty: a tokenizer needs at least one token');
    const bad = entries.find(([, id]) => !Number.isSafeInteger(id) || (id as number) < 0);
    if (bad) fail(`"model.vocab" maps ${JSON.stringify(bad[0]).slice(0, 40)} to ${describe(bad[1])}; ids must be whole numbers >= 0`);
  }
  if (type === 'BPE' || model.merges !== undefined) {
    const merges = model.merges ?? [];
    if (!Array.isArray(merges)) fail(`"model.merges" must be a list of merges ("a b" or ["a", "b"]), got ${describe(merges)}`);
    const bad = (merges as unknown[]).findIndex((m) =>
      typeof m === 'string' ? !m.includes(' ') : !(Array.isArray(m) && m.length === 2 && typeof m[0] === 'string' && typeof m[1] === 'string'));
    if (bad >= 0) fail(`"model.merges[${bad}]" must be "a b" or ["a", "b"], got ${describe((merges as unknown[])[bad])}`);
  }
  for (const key of ['unk_token', 'continuing_subword_prefix', 'end_of_word_suffix'] as const) {
    const v = model[key];
    if (v !== undefined && v !== null && typeof v !== 'string') fail(`"model.${key}" must be a string or null, got ${describe(v)}`);
  }
  const added = json.added_tokens ?? [];
  if (!Array.isArray(added)) fail(`"added_tokens" must be a list of {id, content}, got ${describe(added)}`);
  (added as unknown[]).forEach((t, i) => {
    if (!isObject(t) || !Number.isSafeInteger(t.id) || (t.id as number) < 0 || typeof t.content !== 'string') {
      fail(`"added_tokens[${i}]" must be {"id": whole number >= 0, "content": string, ...}, got ${describe(t)}`);
    }
  });
  const out: Json = { ...json, added_tokens: added };
  for (const [section, { types, list }] of Object.entries(COMPONENTS)) {
    const v = json[section] ?? null;
    checkComponent(v, section, types, list, fail);
    out[section] = v;
  }
  return out;
}

function checkComponent(v: unknown, at: string, types: string[], list: string, fail: (problem: string) => never): void {
  if (v === null) return;
  if (!isObject(v)) fail(`"${at}" must be an object or null, got ${describe(v)}`);
  const c = v as Json;
  if (typeof c.type !== 'string' || !types.includes(c.type)) {
    fail(`"${at}.type" is ${describe(c.type)}, which this tokenizer does not implement (it knows ${types.join(', ')})`);
  }
  if (c.type === 'Sequence') {
    const items = c[list];
    if (!Array.isArray(items)) fail(`"${at}.${list}" must be a list, got ${describe(items)}`);
    (items as unknown[]).forEach((item, i) => {
      if (item === null) fail(`"${at}.${list}[${i}]" must be an object, got null`);
      checkComponent(item, `${at}.${list}[${i}]`, types, list, fail);
    });
  }
}
