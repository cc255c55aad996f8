/**
 * Property-based fuzzing (fast-check) of every parser that reads untrusted bytes: the safetensors
 * header, UPG metadata (and all of `pdvm verify`), the shard index, config.json, generation_config.json,
 * tokenizer.json, chat templates, and HTTP request bodies. The property: any input either parses or
 * throws the project's typed error (PdvmError; the server's ApiError for HTTP), never anything else
 * (no TypeError, RangeError, stack overflow...).
 *
 * CI runs a fixed seed and a bounded number of cases per parser; the long run (docs/API.md, "Fuzzing")
 * sets them through the environment:
 *   PDVM_FUZZ_RUNS=100000 PDVM_FUZZ_SEED=20261204 node --test dist/test/fuzz/   (npm run fuzz)
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import type { IncomingMessage } from 'node:http';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { compressModel } from '../../src/compress/compress.js';
import { PdvmError } from '../../src/errors.js';
import { CheckpointTensors } from '../../src/format/hf.js';
import { SafetensorsFile, encodeSafetensorsHeader, type DType } from '../../src/format/safetensors.js';
import { UpgFile } from '../../src/format/upg/reader.js';
import { sealHeader } from '../../src/format/upg/metadata.js';
import { verifyUpg } from '../../src/format/upg/verify.js';
import { MapFileSet } from '../../src/io/files.js';
import { MemorySource, type ByteSource } from '../../src/io/source.js';
import { checkTensorsAgainstConfig } from '../../src/model/check.js';
import { parseConfig } from '../../src/model/config.js';
import { generationDefaults } from '../../src/runtime/defaults.js';
import { ApiError } from '../../src/server/errors.js';
import { readJsonBody } from '../../src/server/http.js';
import { parseChatCompletionRequest, parseCompletionRequest } from '../../src/server/validate.js';
import { TextTokenizer } from '../../src/tokenizer/tokenizer.js';
import { ARCH_MODELS } from '../helpers.js';
import { writeSyntheticModel } from '../../bench/synthetic-model.js';

const RUNS = Number(process.env.PDVM_FUZZ_RUNS ?? 150);
const SEED = Number(process.env.PDVM_FUZZ_SEED ?? 20261204);
const options = { numRuns: RUNS, seed: SEED, endOnFailure: true };

/** Runs `fn`; a typed error is an answer, anything else fails the property. */
async function typedOnly(fn: () => unknown, typed: (e: unknown) => boolean = (e) => e instanceof PdvmError): Promise<void> {
  try {
    await fn();
  } catch (e) {
    if (!typed(e)) throw new Error(`untyped failure: ${(e as Error)?.stack ?? String(e)}`);
  }
}

/** Sets `value` at a path of keys/indices in a deep copy of `base` (the path stops where it cannot go on). */
function setAt(base: unknown, path: (string | number)[], value: unknown): unknown {
  const copy = structuredClone(base);
  if (path.length === 0) return value;
  let node = copy as Record<string | number, unknown>;
  for (let i = 0; i < path.length - 1; i++) {
    const next = node[path[i]!];
    if (typeof next !== 'object' || next === null) break;
    node = next as Record<string | number, unknown>;
  }
  node[path[Math.min(path.length - 1, path.length - 1)]!] = value;
  return copy;
}

/** A mutation: a path into the object (known keys or anything) and the value put there. */
const mutation = (keys: string[]) =>
  fc.record({
    path: fc.array(fc.oneof(fc.constantFrom(...keys), fc.string({ maxLength: 6 }), fc.nat(8)), { minLength: 1, maxLength: 4 }),
    value: fc.oneof(fc.jsonValue({ maxDepth: 3 }), fc.constantFrom(0, -1, 1e9, 2 ** 40, 1.5, NaN, null, '', [], {}, true)),
  });

// ---- inputs shared by several parsers ----

let dir: string;
let upgBytes: Uint8Array;
let llamaConfig: Record<string, unknown>;
const smallTensors = (() => {
  const entries = [
    { name: 'a', dtype: 'F32' as DType, shape: [2, 3], byteLength: 24 },
    { name: 'b', dtype: 'BF16' as DType, shape: [4], byteLength: 8 },
  ];
  const { header } = encodeSafetensorsHeader(entries, { note: 'x' });
  const out = new Uint8Array(header.length + 32);
  out.set(header, 0);
  return out;
})();

/** A small BPE tokenizer.json with every section the library reads. */
const TOKENIZER = {
  version: '1.0',
  added_tokens: [{ id: 0, content: '<s>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }],
  normalizer: { type: 'Sequence', normalizers: [{ type: 'NFC' }] },
  pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
  post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
  decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
  model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab: { '<s>': 0, a: 1, b: 2, ab: 3, 'Ġ': 4, c: 5 }, merges: ['a b'] },
};

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pdvm-fuzz-'));
  // a tiny model (2 layers of 64) so each case reads and checksums a few kilobytes
  const model = join(dir, 'tiny');
  await writeSyntheticModel(model, { architecture: 'LlamaForCausalLM', hidden: 64, intermediate: 64, layers: 2, heads: 2, kvHeads: 1, vocab: 32 });
  const out = join(dir, 'tiny.upg');
  await compressModel({ method: 'magnitude', sparsity: 0, pattern: 'unstructured', bits: 4, group: 64, skip: [], calibTokens: 64, input: model, output: out });
  upgBytes = new Uint8Array(await readFile(out));
  llamaConfig = JSON.parse(await readFile(join(ARCH_MODELS[0]!, 'config.json'), 'utf8'));
});
after(() => rm(dir, { recursive: true, force: true }));

/** The base bytes with a patch over [at, at + patch.length), read without copying the whole file. */
class PatchedSource implements ByteSource {
  readonly size: number;
  constructor(readonly name: string, private readonly base: Uint8Array, private readonly at: number, private readonly patch: Uint8Array, size?: number) {
    this.size = size ?? base.length;
  }
  async read(offset: number, length: number): Promise<Uint8Array> {
    if (offset + length > this.size) throw new PdvmError(`${this.name}: read past the end`);
    const out = this.base.slice(offset, offset + length);
    for (let i = 0; i < this.patch.length; i++) {
      const p = this.at + i - offset;
      if (p >= 0 && p < out.length) out[p] = this.patch[i]!;
    }
    return out;
  }
  async close(): Promise<void> {}
}

function headerOf(bytes: Uint8Array): { length: number; json: Record<string, any> } {
  const length = Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true));
  return { length, json: JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + length))) };
}

// ---- safetensors header ----

const dtypes = fc.constantFrom('F32', 'F16', 'BF16', 'I8', 'U8', 'U32', 'I64', 'F8', '', 'f32');
const entry = fc.oneof(
  fc.record({
    dtype: fc.oneof(dtypes, fc.jsonValue({ maxDepth: 1 })),
    shape: fc.oneof(fc.array(fc.oneof(fc.integer({ min: -2, max: 64 }), fc.constantFrom(2 ** 40, 1e300, 0.5)), { maxLength: 4 }), fc.jsonValue({ maxDepth: 1 })),
    data_offsets: fc.oneof(fc.tuple(fc.integer({ min: -8, max: 600 }), fc.integer({ min: -8, max: 600 })), fc.jsonValue({ maxDepth: 1 })),
  }, { requiredKeys: [] }),
  fc.jsonValue({ maxDepth: 2 }),
);

test('safetensors header: random bytes, random headers and flipped bytes of a real one give typed errors only', async () => {
  await fc.assert(fc.asyncProperty(fc.uint8Array({ maxLength: 300 }), async (bytes) => {
    await typedOnly(() => SafetensorsFile.open(new MemorySource('x.safetensors', bytes)));
  }), options);
  await fc.assert(fc.asyncProperty(
    fc.dictionary(fc.oneof(fc.constantFrom('__metadata__', 'a', 'b'), fc.string({ maxLength: 8 })), entry, { maxKeys: 6 }),
    fc.nat(600), fc.option(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n })),
    async (header, dataLength, declared) => {
      const json = new TextEncoder().encode(JSON.stringify(header));
      const bytes = new Uint8Array(8 + json.length + dataLength);
      new DataView(bytes.buffer).setBigUint64(0, declared ?? BigInt(json.length), true);
      bytes.set(json, 8);
      await typedOnly(() => SafetensorsFile.open(new MemorySource('x.safetensors', bytes)));
    },
  ), options);
  await fc.assert(fc.asyncProperty(fc.nat(smallTensors.length - 1), fc.uint8Array({ minLength: 1, maxLength: 4 }), async (at, patch) => {
    await typedOnly(() => SafetensorsFile.open(new PatchedSource('x.safetensors', smallTensors, at, patch)));
  }), options);
});

// ---- UPG metadata and pdvm verify ----

test('UPG metadata: flipped header bytes, and metadata values or tensor records replaced (header resealed), give typed errors only through open and verify', async () => {
  const { length, json } = headerOf(upgBytes);
  await fc.assert(fc.asyncProperty(fc.nat(8 + length - 1), fc.uint8Array({ minLength: 1, maxLength: 3 }), async (at, patch) => {
    await typedOnly(() => UpgFile.open(new PatchedSource('x.upg', upgBytes, at, patch)).then((f) => f.close()));
  }), options);
  const records = JSON.parse(json.__metadata__.upg_tensors) as unknown[];
  const metaKeys = Object.keys(json.__metadata__);
  const recordKeys = ['name', 'shape', 'encoding', 'params', 'buffers', 'crc32', 'stats', 'group', 'dtype', 'tile', 'bits', 'n', 'm', 'qweight', 'values'];
  const edit = fc.oneof(
    fc.record({ kind: fc.constant('meta' as const), key: fc.constantFrom(...metaKeys), value: fc.oneof(fc.string({ maxLength: 40 }), fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v))) }),
    fc.record({ kind: fc.constant('record' as const), index: fc.nat(records.length - 1), m: mutation(recordKeys) }),
    fc.record({ kind: fc.constant('config' as const), m: mutation(Object.keys(llamaConfig)) }),
  );
  await fc.assert(fc.asyncProperty(edit, async (e) => {
    const h = structuredClone(json);
    if (e.kind === 'meta') h.__metadata__[e.key] = e.value;
    else if (e.kind === 'record') {
      const list = structuredClone(records) as unknown[];
      list[e.index] = setAt(list[e.index], e.m.path, e.m.value);
      h.__metadata__.upg_tensors = JSON.stringify(list);
    } else {
      h.__metadata__.upg_config = JSON.stringify(setAt(JSON.parse(h.__metadata__.upg_config), e.m.path, e.m.value));
    }
    const text = new TextEncoder().encode(JSON.stringify(h));
    if (text.length > length) return; // the edit must fit the reserved header
    const head = new Uint8Array(8 + length).fill(0x20);
    head.set(upgBytes.subarray(0, 8), 0);
    head.set(text, 8);
    sealHeader(head);
    await typedOnly(() => verifyUpg(async () => new PatchedSource('x.upg', upgBytes, 0, head)));
  }), options);
});

// ---- shard index ----

test('shard index: random weight_map values and index texts give typed errors only', async () => {
  const shard = () => Promise.resolve(new MemorySource('model-1.safetensors', smallTensors));
  await fc.assert(fc.asyncProperty(
    fc.oneof(
      fc.record({ weight_map: fc.oneof(fc.dictionary(fc.constantFrom('a', 'b', 'c', 'model.norm.weight'), fc.oneof(fc.constantFrom('model-1.safetensors', 'model-2.safetensors', '../x', '/etc/passwd', ''), fc.jsonValue({ maxDepth: 1 }))), fc.jsonValue({ maxDepth: 2 })) }, { requiredKeys: [] }).map((v) => JSON.stringify(v)),
      fc.string({ maxLength: 60 }),
    ),
    async (index) => {
      const files = new Map<string, () => Promise<ByteSource>>([
        ['model.safetensors.index.json', () => Promise.resolve(new MemorySource('model.safetensors.index.json', new TextEncoder().encode(index)))],
        ['model-1.safetensors', shard],
      ]);
      await typedOnly(() => CheckpointTensors.open(new MapFileSet('m', files)).then((c) => c.close()));
    },
  ), options);
});

// ---- config.json and generation_config.json ----

test('config.json: mutated configs and random objects parse or give typed errors; parsed ones are checked against the tensors without blowing up', async () => {
  const shapes = new Map<string, number[]>([['model.embed_tokens.weight', [512, 128]], ['model.layers.0.input_layernorm.weight', [128]], ['model.layers.2.mlp.up_proj.weight', [256, 128]]]);
  const lookup = { shape: (n: string) => shapes.get(n), names: () => shapes.keys(), fileOf: () => 'model.safetensors', configName: 'config.json' };
  await fc.assert(fc.asyncProperty(fc.oneof(mutation(Object.keys(llamaConfig)).map((m) => setAt(llamaConfig, m.path, m.value)), fc.jsonValue({ maxDepth: 3 })), async (json) => {
    await typedOnly(() => {
      const config = parseConfig(json as Record<string, unknown>, 'config.json');
      checkTensorsAgainstConfig(config, lookup);
    });
  }), options);
});

test('generation_config.json: random values give defaults or typed errors', async () => {
  const keys = ['temperature', 'top_k', 'top_p', 'min_p', 'repetition_penalty', 'do_sample', 'eos_token_id'];
  await fc.assert(fc.asyncProperty(fc.dictionary(fc.oneof(fc.constantFrom(...keys), fc.string({ maxLength: 5 })), fc.oneof(fc.jsonValue({ maxDepth: 1 }), fc.double())), async (gen) => {
    await typedOnly(() => generationDefaults(gen));
  }), options);
});

// ---- tokenizer.json and chat templates ----

test('tokenizer.json: mutated tokenizers give typed errors, or tokenizers that encode and decode random text', async () => {
  const keys = ['model', 'vocab', 'merges', 'type', 'added_tokens', 'normalizer', 'normalizers', 'pre_tokenizer', 'pretokenizers', 'post_processor', 'decoder', 'decoders', 'content', 'id', 'unk_token', 'a', 'ab'];
  await fc.assert(fc.asyncProperty(mutation(keys), fc.string({ maxLength: 20 }), async (m, text) => {
    await typedOnly(() => {
      const tok = new TextTokenizer({ tokenizerJson: setAt(TOKENIZER, m.path, m.value) as Record<string, unknown>, tokenizerConfig: {}, chatTemplate: null });
      tok.decode(tok.encode(text, true));
    });
  }), options);
  await fc.assert(fc.asyncProperty(fc.jsonValue({ maxDepth: 3 }), fc.jsonValue({ maxDepth: 2 }), async (json, config) => {
    await typedOnly(() => new TextTokenizer({ tokenizerJson: json as Record<string, unknown>, tokenizerConfig: (config ?? {}) as Record<string, unknown>, chatTemplate: null }));
  }), options);
});

const jinjaPieces = ['{%', '%}', '{{', '}}', ' for ', ' m ', ' in ', ' messages', ' if ', ' else ', ' endif ', ' endfor ', 'm.content', "m['role']", ' + ', ' ~ ', ' | trim', ' | length', "'x'", '"y"', '(', ')', '[', ']', '0', ' not ', ' and ', ' set ', ' = ', 'loop.index', 'raise_exception', 'add_generation_prompt', 'bos_token', 'foo', '.', ',', 'text', '{#', '#}'];

test('chat templates: random templates and messages render or give typed errors (ChatTemplateError naming the file, InvalidInputError)', async () => {
  const template = fc.oneof(fc.array(fc.constantFrom(...jinjaPieces), { maxLength: 24 }).map((p) => p.join('')), fc.string({ maxLength: 40 }));
  const messages = fc.array(fc.record({ role: fc.oneof(fc.constantFrom('user', 'assistant', 'system', 'tool'), fc.string({ maxLength: 5 })), content: fc.string({ maxLength: 12 }) }), { maxLength: 3 });
  await fc.assert(fc.asyncProperty(template, messages, async (t, msgs) => {
    await typedOnly(() => {
      const tok = new TextTokenizer({ tokenizerJson: TOKENIZER, tokenizerConfig: {}, chatTemplate: t, sources: { chatTemplate: 'chat_template.jinja' } });
      tok.applyChatTemplate(msgs);
    });
  }), options);
});

// ---- HTTP bodies ----

test('HTTP bodies: random bytes and random JSON requests give ApiErrors (4xx) only', async () => {
  const isClientError = (e: unknown) => e instanceof ApiError && e.status >= 400 && e.status < 500;
  await fc.assert(fc.asyncProperty(fc.array(fc.uint8Array({ maxLength: 64 }), { maxLength: 4 }), fc.option(fc.oneof(fc.nat(1000).map(String), fc.string({ maxLength: 6 }))), async (chunks, contentLength) => {
    const req = Readable.from(chunks.map((c) => Buffer.from(c))) as unknown as IncomingMessage;
    (req as { headers: Record<string, string> }).headers = contentLength === null ? {} : { 'content-length': contentLength };
    await typedOnly(() => readJsonBody(req, 128), isClientError);
  }), options);
  const field = fc.oneof(fc.jsonValue({ maxDepth: 2 }), fc.constantFrom(0, -1, 1e308, 0.5, 2, null, 'x', [], {}));
  const keys = ['model', 'messages', 'prompt', 'max_tokens', 'max_completion_tokens', 'temperature', 'top_p', 'top_k', 'min_p', 'seed', 'stop', 'n', 'stream', 'stream_options', 'presence_penalty', 'frequency_penalty', 'repetition_penalty', 'logprobs', 'tools', 'tool_choice', 'response_format', 'logit_bias', 'echo', 'best_of', 'suffix', 'user'];
  const body = fc.oneof(
    fc.dictionary(fc.constantFrom(...keys), field),
    fc.record({ model: fc.constant('m'), messages: fc.array(fc.dictionary(fc.constantFrom('role', 'content', 'name', 'tool_calls'), field), { maxLength: 3 }) }),
    fc.anything({ maxDepth: 2 }),
  );
  await fc.assert(fc.asyncProperty(body, async (b) => {
    await typedOnly(() => parseChatCompletionRequest(b), isClientError);
    await typedOnly(() => parseCompletionRequest(b), isClientError);
  }), options);
});

test('the fuzz settings are what the docs say', () => {
  assert.ok(RUNS >= 1 && Number.isInteger(SEED));
  console.log(`fuzz: ${RUNS} cases per property, seed ${SEED}`);
});
