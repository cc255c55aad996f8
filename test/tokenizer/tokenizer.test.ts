/** Tokenizer: the fixture prompts encode to transformers' ids; decode(encode(s)) == s; SentencePiece-style BPE with byte fallback; chat template. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { readTokenizerFiles } from '../../src/format/hf.js';
import { TextTokenizer } from '../../src/tokenizer/tokenizer.js';
import { BROWN, VALIDATION_TEXT } from '../helpers.js';

async function brownTokenizer(): Promise<TextTokenizer> {
  return new TextTokenizer((await readTokenizerFiles(BROWN))!);
}

test('byte-level BPE encodes the reference prompts and greedy texts to the reference ids', async () => {
  const tok = await brownTokenizer();
  const ref = JSON.parse(await readFile(join(BROWN, 'reference.json'), 'utf8')) as {
    generations: { prompt: string; prompt_ids: number[]; greedy_ids: number[]; greedy_text: string }[];
  };
  assert.ok(ref.generations.length >= 3);
  for (const g of ref.generations) {
    assert.deepEqual(tok.encode(g.prompt, true), g.prompt_ids, `encode(${JSON.stringify(g.prompt)})`);
    assert.equal(tok.decode(g.greedy_ids), g.greedy_text);
  }
});

test('decode(encode(s)) == s on the whole validation text, and the perplexity stream starts as the fixture says', async () => {
  const tok = await brownTokenizer();
  const text = await readFile(VALIDATION_TEXT, 'utf8');
  const ids = tok.encode(text, false);
  const back = tok.decode(ids);
  if (back !== text) {
    let i = 0;
    while (i < text.length && back[i] === text[i]) i++;
    assert.fail(`round trip differs at char ${i}: ${JSON.stringify(text.slice(i, i + 30))} vs ${JSON.stringify(back.slice(i, i + 30))}`);
  }
  const firstDoc = tok.encode(text.split('\n\n')[0]!, false);
  assert.deepEqual([0, ...firstDoc.slice(0, 15)], [0, 36, 385, 1768, 419, 279, 2234, 345, 17, 402, 73, 2088, 4016, 1315, 1146, 20]);
});

test('chat template renders messages with the generation prompt', async () => {
  const tok = await brownTokenizer();
  const s = tok.applyChatTemplate([{ role: 'user', content: 'Hello there' }]);
  assert.equal(s, '<|user|>Hello there<|end|><|assistant|>');
  // special tokens in the rendered template map to their single ids
  assert.deepEqual(tok.encode(s, false).slice(0, 1), [tok.idOf('<|user|>')]);
  assert.equal(tok.encode(s, false).at(-1), tok.idOf('<|assistant|>'));
});

/**
 * A Llama-2/Mistral-style tokenizer.json: SentencePiece BPE over "▁"-marked words with byte fallback
 * (<0xNN> tokens) for characters outside the vocabulary, and a BOS added by the post-processor.
 */
function sentencePieceStyleTokenizer(): TextTokenizer {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
  const pieces = ['▁', 'h', 'e', 'l', 'o', 'w', 'r', 'd', 'he', 'll', 'hell', 'hello', '▁hello', 'wo', 'wor', 'worl', 'world', '▁world'];
  for (const p of pieces) vocab[p] = Object.keys(vocab).length;
  const merges = ['h e', 'l l', 'he ll', 'hell o', '▁ hello', 'w o', 'wo r', 'wor l', 'worl d', '▁ world'];
  const tokenizerJson = {
    version: '1.0',
    added_tokens: [
      { id: 0, content: '<unk>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
      { id: 1, content: '<s>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
      { id: 2, content: '</s>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
    ],
    normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '▁' }, { type: 'Replace', pattern: { String: ' ' }, content: '▁' }] },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
    model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, vocab, merges },
  };
  return new TextTokenizer({ tokenizerJson, tokenizerConfig: { bos_token: '<s>', eos_token: '</s>', add_bos_token: true }, chatTemplate: null });
}

test('SentencePiece-style BPE with byte fallback: BOS, merges, bytes for unknown characters, exact round trip', () => {
  const tok = sentencePieceStyleTokenizer();
  const ids = tok.encode('hello world', true);
  assert.equal(ids[0], 1, 'BOS first');
  assert.deepEqual(ids.slice(1), [tok.idOf('▁hello'), tok.idOf('▁world')]);
  // "é" is not in the vocabulary: its two UTF-8 bytes 0xC3 0xA9 become <0xC3> <0xA9>
  const withByte = tok.encode('hello é', false);
  assert.deepEqual(withByte.slice(-2), [tok.idOf('<0xC3>'), tok.idOf('<0xA9>')]);
  for (const s of ['hello world', 'hello é world', 'world hello', 'ñandú 🙂 hello']) {
    assert.equal(tok.decode(tok.encode(s, false)), s, `round trip of ${JSON.stringify(s)}`);
  }
});
