/**
 * The library API on the demo model: streamed and whole forms agree, concurrent generations each
 * equal the same generation run alone, cancellation frees the slot, bad input is refused up front.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { loadModel, AbortError, ContextLengthError, ModelDisposedError, QueueFullError, type GenerationChunk, type GenerationResult, type Model } from 'pdvm';
import { ROOT } from '../helpers.js';
import { join } from 'node:path';

const DEMO = join(ROOT, 'models', 'brown-llama-12m.upg');
let model: Model;

before(async () => {
  model = await loadModel(DEMO, { maxConcurrency: 4, maxQueued: 2 });
});
after(async () => {
  await model.dispose();
});

async function collect(stream: AsyncIterable<GenerationChunk>): Promise<{ text: string; ids: number[] }> {
  let text = '';
  const ids: number[] = [];
  for await (const c of stream) {
    text += c.text;
    ids.push(...c.tokenIds);
  }
  return { text, ids };
}

test("the package's own name resolves to the library entry point", async () => {
  const pkg = await import('pdvm');
  assert.equal(pkg.loadModel, loadModel);
  assert.equal(model.id, 'brown-llama-12m');
  assert.equal(model.backend, 'cpu');
  assert.equal(model.contextLength, 1024);
});

test('tokenize / detokenize round-trip, and a plain prompt gets the same ids generate() uses', () => {
  const text = 'The jury said it did find that many of the new laws were "ambiguous".';
  const ids = model.tokenize(text, { addSpecialTokens: false });
  assert.ok(ids.length > 5);
  assert.equal(model.detokenize(ids), text);
  assert.deepEqual(model.promptIds(text), model.tokenize(text));
});

test('the streamed chunks add up to the promise form, token for token', async () => {
  const options = { maxTokens: 16, temperature: 0 };
  const whole = await model.generate('The jury said', options);
  const stream = model.generate('The jury said', { ...options, stream: true });
  const streamed = await collect(stream);
  const result = await stream.result;
  assert.equal(whole.tokenIds.length, 16);
  assert.deepEqual(streamed.ids, whole.tokenIds);
  assert.equal(streamed.text, whole.text);
  assert.deepEqual(result.tokenIds, whole.tokenIds);
  assert.equal(whole.promptTokens, model.promptIds('The jury said').length);
});

test('token-id prompts and chat prompts', async () => {
  const ids = model.promptIds('He said that');
  const fromText = await model.generate('He said that', { maxTokens: 6, temperature: 0 });
  const fromIds = await model.generate(ids, { maxTokens: 6, temperature: 0 });
  assert.deepEqual(fromIds.tokenIds, fromText.tokenIds);
  const messages = [{ role: 'user', content: 'Hello' }];
  const chat = await model.chat(messages, { maxTokens: 6, temperature: 0 });
  const same = await model.generate(model.chatPromptIds(messages), { maxTokens: 6, temperature: 0, eosTokenIds: model.chatEndTokenIds });
  assert.deepEqual(chat.tokenIds, same.tokenIds);
  assert.equal(chat.promptTokens, model.chatPromptIds(messages).length);
});

test('concurrent generations (greedy and seeded sampling) each equal the same generation run alone', async () => {
  const requests = [
    { prompt: 'The jury said', options: { maxTokens: 12, temperature: 0 } },
    { prompt: 'In the morning', options: { maxTokens: 10, temperature: 0.9, seed: 11 } },
    { prompt: 'She asked him', options: { maxTokens: 14, temperature: 0.7, topK: 20, seed: 5, repetitionPenalty: 1.2 } },
    { prompt: 'It was', options: { maxTokens: 9, temperature: 0, stop: ['.'] } },
    { prompt: 'They went to', options: { maxTokens: 11, temperature: 1, topP: 0.8, seed: 3, presencePenalty: 0.5 } },
  ];
  const alone: GenerationResult[] = [];
  for (const r of requests) alone.push(await model.generate(r.prompt, r.options));
  // five at once on four slots: one waits in the queue
  const together = await Promise.all(requests.map((r) => collect(model.generate(r.prompt, { ...r.options, stream: true }))));
  together.forEach((t, i) => {
    assert.deepEqual(t.ids, alone[i]!.tokenIds, `request ${i} (${requests[i]!.prompt})`);
    assert.equal(t.text, alone[i]!.text);
  });
  assert.deepEqual(model.activity, { active: 0, queued: 0 });
});

test('an AbortSignal cancels a running generation promptly and frees its slot; others carry on', async () => {
  const controller = new AbortController();
  const victim = model.generate('The jury said', { maxTokens: 500, temperature: 0, ignoreEos: true, stream: true, signal: controller.signal });
  const other = model.generate('In the morning', { maxTokens: 20, temperature: 0 });
  let seen = 0;
  await assert.rejects(async () => {
    for await (const c of victim) {
      seen += c.tokenIds.length;
      if (seen === 3) controller.abort();
    }
  }, AbortError);
  assert.ok(seen >= 3 && seen <= 4, `stopped after ${seen} tokens`);
  await assert.rejects(victim.result, AbortError);
  assert.ok(model.activity.active <= 1);
  const alone = await model.generate('In the morning', { maxTokens: 20, temperature: 0 });
  assert.deepEqual((await other).tokenIds, alone.tokenIds);
  // aborted before it starts: rejected without running
  await assert.rejects(model.generate('x', { signal: AbortSignal.abort() }), AbortError);
});

test('breaking out of the loop cancels the generation', async () => {
  const stream = model.generate('The jury said', { maxTokens: 500, temperature: 0, ignoreEos: true, stream: true });
  for await (const c of stream) if (c.tokenIds.length) break;
  await assert.rejects(stream.result, AbortError);
  assert.deepEqual(model.activity, { active: 0, queued: 0 });
});

test('bad input is refused before anything runs: context overflow names both numbers; full queue; bad options', async () => {
  const err = await model.generate('The jury said', { maxTokens: 1022 }).catch((e: unknown) => e);
  assert.ok(err instanceof ContextLengthError);
  assert.equal(err.promptTokens, 4);
  assert.equal(err.maxTokens, 1022);
  assert.match(err.message, /4 tokens/);
  assert.match(err.message, /1022/);
  assert.match(err.message, /1024/);
  assert.throws(() => model.generate('The jury said', { temperature: -1, stream: true }), /temperature/);
  await assert.rejects(model.generate('The jury said', { topP: 0 }), /top-p/);
  await assert.rejects(model.generate([5000]), /token-id prompt/);

  // 4 slots + 2 queued are taken: the 7th is refused at once
  const controller = new AbortController();
  const busy = Array.from({ length: 6 }, () => model.generate('It was', { maxTokens: 400, ignoreEos: true, temperature: 0, signal: controller.signal }));
  assert.deepEqual(model.activity, { active: 4, queued: 2 });
  await assert.rejects(model.generate('It was', { maxTokens: 4 }), QueueFullError);
  controller.abort();
  for (const b of busy) await assert.rejects(b, AbortError);
  assert.deepEqual(model.activity, { active: 0, queued: 0 });
});

test('dispose() fails what is running and refuses new work', async () => {
  const other = await loadModel(DEMO, { maxConcurrency: 1 });
  const running = other.generate('The jury said', { maxTokens: 300, ignoreEos: true, stream: true });
  const queued = other.generate('It was', { maxTokens: 4 });
  for await (const c of running) if (c.tokenIds.length) break;
  await other.dispose();
  await assert.rejects(queued, ModelDisposedError);
  await assert.rejects(other.generate('It was'), ModelDisposedError);
});
