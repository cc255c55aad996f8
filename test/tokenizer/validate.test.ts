/** tokenizer.json and chat templates: each malformed part is named (file and key), and a broken template fails chats only. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChatTemplateError, InvalidInputError, ModelFormatError } from '../../src/errors.js';
import { TextTokenizer } from '../../src/tokenizer/tokenizer.js';

const GOOD = {
  added_tokens: [{ id: 0, content: '<s>', special: true }],
  normalizer: null,
  pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
  post_processor: null,
  decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
  model: { type: 'BPE', vocab: { '<s>': 0, a: 1, b: 2, ab: 3 }, merges: ['a b'] },
};

function tokenizer(edit: (j: any) => void, chatTemplate: string | null = null): TextTokenizer {
  const json = structuredClone(GOOD) as any;
  edit(json);
  return new TextTokenizer({ tokenizerJson: json, tokenizerConfig: {}, chatTemplate, sources: { tokenizer: 'm/tokenizer.json', chatTemplate: 'm/chat_template.jinja' } });
}

test('tokenizer.json: each malformed part gives a ModelFormatError naming the file and key', () => {
  const cases: [(j: any) => void, RegExp][] = [
    [(j) => delete j.model, /has no "model" object/],
    [(j) => (j.model.type = 'WordPieceX'), /"model\.type" is the string "WordPieceX"; supported: BPE, WordPiece, Unigram/],
    [(j) => (j.model.vocab = {}), /"model\.vocab" is empty/],
    [(j) => (j.model.vocab = []), /"model\.vocab" is empty|"model\.vocab" must be/],
    [(j) => (j.model.vocab.a = -1), /"model\.vocab" maps "a" to number -1/],
    [(j) => (j.model.merges = 'a b'), /"model\.merges" must be a list/],
    [(j) => (j.model.merges = [['a']]), /"model\.merges\[0\]" must be "a b" or \["a", "b"\]/],
    [(j) => (j.added_tokens = 'x'), /"added_tokens" must be a list/],
    [(j) => (j.added_tokens = [{ id: 'x', content: 1 }]), /"added_tokens\[0\]" must be/],
    [(j) => (j.pre_tokenizer = { type: 'Gpt5Magic' }), /"pre_tokenizer\.type" is the string "Gpt5Magic", which this tokenizer does not implement/],
    [(j) => (j.normalizer = { type: 'Sequence', normalizers: [{ type: 'Nope' }] }), /"normalizer\.normalizers\[0\]\.type"/],
    [(j) => (j.decoder = 'ByteLevel'), /"decoder" must be an object or null/],
    [(j) => (j.model.unk_token = 5), /"model\.unk_token" must be a string or null/],
  ];
  for (const [edit, message] of cases) {
    assert.throws(() => tokenizer(edit), (e: unknown) => {
      assert.ok(e instanceof ModelFormatError, String(e));
      assert.match(e.message, /^m\/tokenizer\.json: /);
      assert.match(e.message, message);
      return true;
    });
  }
  // absent optional sections are fine
  const tok = tokenizer((j) => {
    delete j.normalizer;
    delete j.post_processor;
  });
  assert.deepEqual(tok.encode('ab', false), [3]);
  assert.throws(() => tok.decode([1.5]), InvalidInputError);
});

test('chat template: parsed on the first chat; syntax errors and undefined functions name the file; raise_exception is the messages\' fault', () => {
  const broken = tokenizer(() => {}, '{% for m in messages %}{{ m.content }');
  assert.equal(broken.hasChatTemplate, true);
  assert.deepEqual(broken.encode('ab', false), [3], 'plain text still works');
  assert.throws(() => broken.applyChatTemplate([{ role: 'user', content: 'x' }]), (e: unknown) => e instanceof ChatTemplateError && /^m\/chat_template\.jinja: does not parse/.test(e.message));
  assert.ok(broken.chatTemplateProblem() instanceof ChatTemplateError);
  const undefinedFunction = tokenizer(() => {}, "{{ no_such_function('x') }}");
  assert.equal(undefinedFunction.chatTemplateProblem(), null, 'it parses; it fails when rendered');
  assert.throws(() => undefinedFunction.applyChatTemplate([{ role: 'user', content: 'x' }]), (e: unknown) => e instanceof ChatTemplateError && /fails to render/.test(e.message));
  const strict = tokenizer(() => {}, "{% if messages[0]['role'] != 'user' %}{{ raise_exception('the first message must be the user\\'s') }}{% endif %}ok");
  assert.equal(strict.applyChatTemplate([{ role: 'user', content: 'x' }]), 'ok');
  assert.throws(() => strict.applyChatTemplate([{ role: 'assistant', content: 'x' }]), (e: unknown) => e instanceof InvalidInputError && !(e instanceof ModelFormatError) && /the chat template refused the messages: the first message must be the user's/.test(e.message));
});
