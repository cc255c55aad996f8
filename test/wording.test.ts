/**
 * Messages speak to their caller: the engine names library options (`backend: 'cpu'`, contextLength),
 * the CLI prints its flags instead, a page plain words.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { forCli, inPlainWords } from '../src/wording.js';

const library = "model weights take 25.2 MB and a KV cache of 4096 positions 1.2 GB; use a smaller contextLength or a smaller model, or backend: 'cpu'";

test('a library message in CLI flags and in plain words', () => {
  assert.equal(forCli(library), 'model weights take 25.2 MB and a KV cache of 4096 positions 1.2 GB; use a smaller --context or a smaller model, or --backend cpu');
  assert.equal(inPlainWords(library), 'model weights take 25.2 MB and a KV cache of 4096 positions 1.2 GB; use a smaller context length or a smaller model, or the CPU backend');
  assert.equal(forCli("slower than the CPU; asking for backend: 'webgpu' uses it anyway"), 'slower than the CPU; asking for --backend webgpu uses it anyway');
  assert.equal(inPlainWords("slower than the CPU; asking for backend: 'webgpu' uses it anyway"), 'slower than the CPU; asking for the WebGPU backend uses it anyway');
  assert.equal(forCli("decoding through the forward pass; decode: 'unfused' asks for it"), 'decoding through the forward pass; --decode unfused asks for it');
  assert.equal(forCli('a message with no option in it'), 'a message with no option in it');
  const batch = "4 KV caches of 4096 positions 2.1 GB; use a smaller maxConcurrency, prefixCacheBytes or contextLength";
  assert.equal(forCli(batch), '4 KV caches of 4096 positions 2.1 GB; use a smaller --max-concurrency, --prefix-cache-mb or --context');
  assert.equal(inPlainWords(batch), '4 KV caches of 4096 positions 2.1 GB; use a smaller number of generations at once, prefix cache budget or context length');
});
