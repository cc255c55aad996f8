/**
 * `pdvm serve` end to end with the official `openai` client on loopback: chat and completions, whole
 * and streamed, greedy replies equal to `pdvm generate`, every error case with its status code,
 * client disconnects, one log line per request, SIGTERM.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { cliGenerate, spawnServe, startTestServer, waitFor, type TestServer } from './util.js';

const MODEL = 'brown-llama-12m';
let t: TestServer;

before(async () => {
  t = await startTestServer({ maxConcurrency: 4, maxQueued: 8 });
});
after(async () => {
  await t.stop();
});

/** The API error a call ends with (the test fails if it succeeds). */
async function apiError(call: () => Promise<unknown>): Promise<InstanceType<typeof OpenAI.APIError>> {
  try {
    await call();
  } catch (e) {
    assert.ok(e instanceof OpenAI.APIError, `an APIError expected, got ${e}`);
    return e;
  }
  assert.fail('the call should have failed');
}

test('GET /v1/models lists the served model; /health answers without a key', async () => {
  const list = await t.client.models.list();
  assert.deepEqual(list.data.map((m) => m.id), [MODEL]);
  assert.equal((await t.client.models.retrieve(MODEL)).id, MODEL);
  const health = await (await fetch(`${t.server.url}/health`)).json();
  assert.equal(health.status, 'ok');
  assert.equal(health.model, MODEL);
});

test('greedy /v1/completions equals `pdvm generate --temperature 0` for the same prompt, with usage', async () => {
  for (const prompt of ['The jury said', 'In the morning the']) {
    const ref = await cliGenerate(['--prompt', prompt, '--temperature', '0', '-n', '20']);
    const r = await t.client.completions.create({ model: MODEL, prompt, max_tokens: 20, temperature: 0 });
    assert.equal(r.object, 'text_completion');
    assert.equal(r.model, MODEL);
    assert.equal(r.choices.length, 1);
    assert.equal(r.choices[0]!.text, ref.text);
    assert.equal(r.choices[0]!.finish_reason, ref.finish_reason);
    assert.deepEqual(r.usage, {
      prompt_tokens: ref.prompt_tokens, completion_tokens: ref.token_ids.length, total_tokens: ref.prompt_tokens + ref.token_ids.length,
      prompt_tokens_details: { cached_tokens: 0 },
    });
  }
});

test('greedy /v1/chat/completions equals `pdvm generate --chat --temperature 0`, ending at the end-of-turn token', async () => {
  const ref = await cliGenerate(['--prompt', 'Hello', '--chat', '--system', 'You are terse.', '--temperature', '0', '-n', '24']);
  const r = await t.client.chat.completions.create({
    model: MODEL,
    messages: [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Hello' }],
    max_tokens: 24,
    temperature: 0,
  });
  // both stop at the template's end-of-turn token (<|end|>) or EOS
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0]!.message.role, 'assistant');
  assert.equal(r.choices[0]!.message.content, ref.text);
  assert.equal(r.choices[0]!.finish_reason, ref.finish_reason);
  assert.equal(r.usage!.prompt_tokens, ref.prompt_tokens);
  assert.equal(r.usage!.completion_tokens, ref.token_ids.length);
});

test('streamed chat (with include_usage) adds up to the same reply as the whole one', async () => {
  const request = { model: MODEL, messages: [{ role: 'user' as const, content: 'What did the jury say?' }], max_tokens: 20, temperature: 0.8, seed: 9 };
  const whole = await t.client.chat.completions.create(request);
  const stream = await t.client.chat.completions.create({ ...request, stream: true, stream_options: { include_usage: true } });
  let text = '';
  let role: string | undefined;
  let finish: string | null = null;
  let usage: OpenAI.CompletionUsage | null | undefined;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    assert.equal(chunk.object, 'chat.completion.chunk');
    if (chunk.choices.length === 0) {
      usage = chunk.usage;
      continue;
    }
    role ??= chunk.choices[0]!.delta.role;
    text += chunk.choices[0]!.delta.content ?? '';
    finish = chunk.choices[0]!.finish_reason ?? finish;
  }
  assert.ok(chunks > 5, `streamed in ${chunks} chunks`);
  assert.equal(role, 'assistant');
  assert.equal(text, whole.choices[0]!.message.content);
  assert.equal(finish, whole.choices[0]!.finish_reason);
  // the second request found the first one's KV cache kept: all of its prompt but the last token reused
  const cached = whole.usage!.prompt_tokens - 1;
  assert.deepEqual(usage, { ...whole.usage, prompt_tokens_details: { cached_tokens: cached } });
});

test('streamed completions add up to the whole reply; stop strings cut the text', async () => {
  const whole = await t.client.completions.create({ model: MODEL, prompt: 'The jury said that', max_tokens: 24, temperature: 0 });
  const stream = await t.client.completions.create({ model: MODEL, prompt: 'The jury said that', max_tokens: 24, temperature: 0, stream: true });
  let text = '';
  for await (const chunk of stream) text += chunk.choices[0]?.text ?? '';
  assert.equal(text, whole.choices[0]!.text);
  // stop at the first word of the greedy text after its start
  const word = whole.choices[0]!.text.trim().split(/\s+/)[2]!;
  const at = whole.choices[0]!.text.indexOf(word);
  const stopped = await t.client.completions.create({ model: MODEL, prompt: 'The jury said that', max_tokens: 24, temperature: 0, stop: ['@@', word] });
  assert.equal(stopped.choices[0]!.text, whole.choices[0]!.text.slice(0, at));
  assert.equal(stopped.choices[0]!.finish_reason, 'stop');
  // extensions (top_k, min_p, repetition_penalty) are accepted; token-id prompts too
  const ids = t.model.promptIds('The jury said that');
  const extended = await t.client.completions.create({ model: MODEL, prompt: ids, max_tokens: 24, temperature: 0, ...{ top_k: 5, min_p: 0.1, repetition_penalty: 1 } });
  assert.equal(extended.choices[0]!.text, whole.choices[0]!.text);
});

test('errors come in OpenAI\'s shape with the right status: 400 JSON/types/context, 404 model/URL, 405, 413', async () => {
  const bad = await fetch(`${t.server.url}/v1/chat/completions`, { method: 'POST', body: '{"model": "x", ', headers: { 'Content-Type': 'application/json' } });
  assert.equal(bad.status, 400);
  const body = await bad.json();
  assert.equal(body.error.type, 'invalid_request_error');
  assert.match(body.error.message, /not valid JSON/);

  let e = await apiError(() => t.client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], temperature: 'hot' as unknown as number }));
  assert.equal(e.status, 400);
  assert.equal(e.param, 'temperature');

  e = await apiError(() => t.client.completions.create({ model: MODEL, prompt: 'hi', n: 2 }));
  assert.equal(e.status, 400);
  assert.equal(e.param, 'n');

  e = await apiError(() => t.client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] }));
  assert.equal(e.status, 404);
  assert.equal(e.code, 'model_not_found');

  // 4 prompt tokens + 1021 new > 1024
  e = await apiError(() => t.client.completions.create({ model: MODEL, prompt: 'The jury said', max_tokens: 1021 }));
  assert.equal(e.status, 400);
  assert.equal(e.code, 'context_length_exceeded');
  assert.equal(e.param, 'max_tokens');
  assert.match(e.message, /\b4 tokens\b/);
  assert.match(e.message, /\b1021\b/);
  assert.match(e.message, /\b1024\b/);
  // a prompt alone past the context
  const long = 'the '.repeat(1100);
  e = await apiError(() => t.client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: long }] }));
  assert.equal(e.status, 400);
  assert.equal(e.param, 'messages');
  e = await apiError(() => t.client.completions.create({ model: MODEL, prompt: long, max_tokens: 1 }));
  assert.equal(e.status, 400);
  assert.equal(e.param, 'prompt');

  e = await apiError(() => t.client.completions.create({ model: MODEL, prompt: 'x'.repeat(1100 * 1024), max_tokens: 1 }));
  assert.equal(e.status, 413);

  const unknown = await fetch(`${t.server.url}/v1/embeddings`, { method: 'POST', body: '{}' });
  assert.equal(unknown.status, 404);
  assert.equal((await unknown.json()).error.code, 'unknown_url');
  const wrongMethod = await fetch(`${t.server.url}/v1/chat/completions`);
  assert.equal(wrongMethod.status, 405);
  assert.deepEqual(t.model.activity, { active: 0, queued: 0 });
});

test('a client that disconnects mid-stream cancels its generation and frees its slot; the log says so', async () => {
  const controller = new AbortController();
  const stream = await t.client.completions.create(
    { model: MODEL, prompt: 'The jury said', max_tokens: 600, temperature: 0, stream: true },
    { signal: controller.signal },
  );
  let chunks = 0;
  try {
    for await (const _ of stream) if (++chunks === 3) controller.abort();
  } catch (e) {
    // the client may end the loop quietly or with its abort error
    assert.ok(e instanceof OpenAI.APIUserAbortError, String(e));
  }
  assert.equal(chunks, 3);
  await waitFor(() => t.model.activity.active === 0, 10_000, 'the aborted generation to leave its slot');
  await waitFor(() => t.logs.some((l) => / 499 .*client disconnected/.test(l)), 10_000, 'the 499 log line');
  const line = t.logs.find((l) => / 499 /.test(l))!;
  const out = Number(/out=(\d+)/.exec(line)![1]);
  assert.ok(out >= 3 && out < 300, `generated ${out} of 600 tokens before stopping: ${line}`);
});

test('one log line per request: id, status, tokens in and out, time to first token, tok/s', async () => {
  const before = t.logs.length;
  const r = await t.client.completions.create({ model: MODEL, prompt: 'The jury said', max_tokens: 12, temperature: 0 });
  await waitFor(() => t.logs.length > before, 5000, 'the log line');
  assert.equal(t.logs.length, before + 1);
  const line = t.logs.at(-1)!;
  assert.ok(line.includes(r.id), line);
  assert.match(line, /POST \/v1\/completions 200 in=4( cached=3)? out=12 ttft=\d+ms \d+(\.\d)? tok\/s total=\d+ms$/);
});

test('with --api-key: 401 without it or with a wrong one; /health stays open', async () => {
  const s = await startTestServer({}, { apiKey: 'sesame' });
  try {
    const noKey = await fetch(`${s.server.url}/v1/models`);
    assert.equal(noKey.status, 401);
    assert.equal((await noKey.json()).error.type, 'authentication_error');
    const wrong = new OpenAI({ baseURL: `${s.server.url}/v1`, apiKey: 'open', maxRetries: 0 });
    const e = await apiError(() => wrong.completions.create({ model: MODEL, prompt: 'hi', max_tokens: 2 }));
    assert.equal(e.status, 401);
    const r = await s.client.completions.create({ model: MODEL, prompt: 'hi', max_tokens: 2 });
    assert.equal(r.usage!.completion_tokens, 2);
    assert.equal((await fetch(`${s.server.url}/health`)).status, 200);
  } finally {
    await s.stop();
  }
});

test('past the queue the server answers 429; the admitted requests still complete', async () => {
  const s = await startTestServer({ maxConcurrency: 1, maxQueued: 1 });
  try {
    const request = { model: MODEL, prompt: 'The jury said', max_tokens: 30, temperature: 0 };
    const first = s.client.completions.create(request);
    const second = s.client.completions.create(request);
    await waitFor(() => s.model.activity.queued === 1, 5000, 'one running and one queued');
    const e = await apiError(() => s.client.completions.create(request));
    assert.equal(e.status, 429);
    const [a, b] = await Promise.all([first, second]);
    assert.equal(a.choices[0]!.text, b.choices[0]!.text);
    assert.equal(a.usage!.completion_tokens, 30);
  } finally {
    await s.stop();
  }
});

test('SIGTERM: stops accepting, lets a stream in flight finish, exits 0', async () => {
  const { child, url, exited, stderr } = await spawnServe(['--grace', '20']);
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'x', maxRetries: 0 });
  const stream = await client.completions.create({ model: MODEL, prompt: 'The jury said', max_tokens: 40, temperature: 0, stream: true, stream_options: { include_usage: true } });
  let text = '';
  let usage: OpenAI.CompletionUsage | null | undefined;
  let probe: number | string | undefined;
  for await (const chunk of stream) {
    if (!text && chunk.choices[0]?.text) {
      child.kill('SIGTERM');
      await waitFor(() => /SIGTERM: finishing 1 request/.test(stderr()), 10_000, 'the server to start draining');
      // a new connection while draining is refused (or, on a reused connection, answered 503)
      probe = await fetch(`${url}/health`).then((r) => r.status, () => 'refused');
    }
    text += chunk.choices[0]?.text ?? '';
    usage = chunk.usage ?? usage;
  }
  assert.ok(probe === 'refused' || probe === 503, `a request while draining got ${probe}`);
  assert.equal(usage?.completion_tokens, 40, 'the stream in flight ran to its end');
  assert.equal(text, (await cliGenerate(['--prompt', 'The jury said', '--temperature', '0', '-n', '40'])).text);
  assert.equal(await exited, 0, stderr());
  await assert.rejects(fetch(`${url}/health`), 'nothing listens after exit');
});

test('SIGTERM with a short grace period cancels what is left, the stream ends with an error event, and the process exits 0', async () => {
  const { child, url, exited, stderr } = await spawnServe(['--grace', '0.3']);
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'x', maxRetries: 0 });
  const stream = await client.completions.create({ model: MODEL, prompt: 'The jury said', max_tokens: 900, temperature: 0, stream: true });
  const started = Date.now();
  const e = await apiError(async () => {
    for await (const chunk of stream) if (chunk.choices[0]?.text && child.signalCode === null) child.kill('SIGTERM');
  });
  assert.match(e.message, /shutting down/);
  assert.equal(await exited, 0, stderr());
  assert.ok(Date.now() - started < 10_000, 'it exits soon after the grace period');
  assert.match(stderr(), /POST \/v1\/completions 503 .*shutting down/);
});
