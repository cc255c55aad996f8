/** config.json and generation_config.json: each bad value is a ModelFormatError naming the file and key. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ModelFormatError, InvalidInputError } from '../../src/errors.js';
import { checkContextLength, parseConfig } from '../../src/model/config.js';
import { generationDefaults } from '../../src/runtime/defaults.js';
import { ARCH_MODELS } from '../helpers.js';

const BASE = JSON.parse(readFileSync(join(ARCH_MODELS[0]!, 'config.json'), 'utf8')) as Record<string, unknown>;

function refused(edit: Record<string, unknown>, message: RegExp): void {
  assert.throws(() => parseConfig({ ...BASE, ...edit }, 'config.json'), (e: unknown) => {
    assert.ok(e instanceof ModelFormatError, String(e));
    assert.match(e.message, /^config\.json: /);
    assert.match(e.message, message);
    return true;
  });
}

test('config.json: every bad value names its key', () => {
  refused({ num_attention_heads: 3, head_dim: undefined }, /hidden_size 128 is not a multiple of num_attention_heads 3, and there is no "head_dim"/);
  refused({ rope_scaling: 'linear' }, /"rope_scaling" must be an object/);
  refused({ rope_scaling: [1] }, /"rope_scaling" must be an object/);
  refused({ rope_parameters: 5 }, /"rope_parameters" must be an object/);
  refused({ rope_scaling: { type: 'yarn', factor: 2 } }, /rope scaling type "yarn" is not supported/);
  refused({ rope_scaling: { type: 'linear', factor: 0 } }, /rope scaling "factor" must be positive/);
  refused({ rope_theta: -1 }, /"rope_theta" must be positive/);
  refused({ partial_rotary_factor: 1.5 }, /"partial_rotary_factor" must be in \(0, 1\]/);
  refused({ partial_rotary_factor: 0.03 }, /rotates 1 dimensions; RoPE needs an even, nonzero number/);
  refused({ architectures: [] }, /has no "architectures" entry/);
  refused({ vocab_size: 0 }, /"vocab_size" must be a positive integer/);
  assert.throws(() => parseConfig(null as never, 'config.json'), /config\.json: must be a JSON object, got null/);
  // tie_word_embeddings: only an explicit false asks for an lm_head of its own
  assert.equal(parseConfig({ ...BASE, tie_word_embeddings: false }).untiedDeclared, true);
  assert.equal(parseConfig({ ...BASE, tie_word_embeddings: undefined }).untiedDeclared, false);
});

test('context length: past the maximum names it; past the memory says how much it would need', () => {
  const c = parseConfig(BASE);
  assert.equal(checkContextLength(c, 256, '--context'), 256);
  assert.throws(() => checkContextLength(c, 257, '--context'), (e: unknown) => e instanceof InvalidInputError && /--context 257 is more than the model's maximum of 256 positions/.test(e.message));
  assert.throws(() => checkContextLength(c, 1, '--context'), /--context must be a whole number >= 2, got 1/);
  // 3 layers x 2 KV heads x 32 x 2 (K, V) x 4 bytes = 1536 bytes a position: 256 positions need 393216 bytes
  assert.throws(() => checkContextLength(c, 256, '--context', 100_000), /--context 256 needs 0\.4 MB of KV cache .* more than this machine's 0\.1 MB/);
});

test('generation_config.json: a bad value names the file and key, not a flag', () => {
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ top_p: 1.5 }, /"top_p" must be in \(0, 1\], got 1\.5/],
    [{ temperature: -1 }, /"temperature" must be >= 0, got -1/],
    [{ top_k: 2.5 }, /"top_k" must be a whole number >= 0/],
    [{ min_p: 1 }, /"min_p" must be in \[0, 1\)/],
    [{ repetition_penalty: 0 }, /"repetition_penalty" must be > 0/],
    [{ temperature: '0.7' }, /"temperature" must be >= 0, got "0\.7"/],
    [{ do_sample: 'yes' }, /"do_sample" must be true or false/],
  ];
  for (const [gen, message] of bad) {
    assert.throws(() => generationDefaults(gen, 'm/generation_config.json'), (e: unknown) => {
      assert.ok(e instanceof ModelFormatError);
      assert.match(e.message, /^m\/generation_config\.json: /);
      assert.match(e.message, message);
      assert.doesNotMatch(e.message, /--top-p|--temperature/);
      return true;
    });
  }
  assert.deepEqual(generationDefaults({ temperature: 0.7, top_p: 0.9, do_sample: true }), { temperature: 0.7, topP: 0.9 });
  assert.deepEqual(generationDefaults({ temperature: 0.7, do_sample: false }), { temperature: 0 });
});
