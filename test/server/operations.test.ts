/**
 * `pdvm serve` operations: /metrics (Prometheus text, behind the key unless public), CORS preflight and
 * headers, served model names and --accept-any-model, 429 with Retry-After past the queue, a prompt that
 * cannot fit refused before it takes a slot, SIGTERM finishing every stream of a batch.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { spawnServe, spawnServeOn, startTestServer, waitFor } from './util.js';

const MODEL = 'brown-llama-12m';

/** The value of a metric line `name{labels} value` in Prometheus text, or undefined. */
function metric(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(series + ' '));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

test('GET /metrics: Prometheus text with requests, tokens, queue, batch, KV cache and latency histograms; behind the API key', async () => {
  const t = await startTestServer({ maxConcurrency: 4 }, { apiKey: 'k' });
  try {
    assert.equal((await fetch(`${t.server.url}/metrics`)).status, 401);
    const auth = { headers: { Authorization: 'Bearer k' } };
    await t.client.completions.create({ model: MODEL, prompt: 'The jury said', max_tokens: 5, temperature: 0, stream: false });
    const stream = await t.client.completions.create({ model: MODEL, prompt: 'The jury said', max_tokens: 5, temperature: 0, stream: true });
    for await (const _ of stream);
    await waitFor(() => t.logs.length >= 2, 5000, 'both requests logged');
    const res = await fetch(`${t.server.url}/metrics`, auth);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type')!, /^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    console.log(text.split('\n').filter((l) => l.startsWith('pdvm_') && !l.includes('_bucket')).map((l) => `# ${l}`).join('\n'));
    assert.equal(metric(text, 'pdvm_requests_total{endpoint="/v1/completions",status="200"}'), 2);
    assert.equal(metric(text, 'pdvm_generation_tokens_total'), 10);
    const promptTokens = t.model.promptIds('The jury said').length;
    assert.equal(metric(text, 'pdvm_prompt_tokens_total'), 2 * promptTokens);
    assert.equal(metric(text, 'pdvm_prompt_tokens_cached_total'), promptTokens - 1, 'the second request reused the first one\'s cache');
    assert.equal(metric(text, 'pdvm_time_to_first_token_seconds_count'), 2);
    assert.equal(metric(text, 'pdvm_time_per_output_token_seconds_count'), 8, 'four gaps between five tokens, twice');
    assert.equal(metric(text, 'pdvm_queue_depth'), 0);
    assert.equal(metric(text, 'pdvm_running_requests'), 0);
    assert.equal(metric(text, 'pdvm_max_concurrency'), 4);
    assert.ok(metric(text, 'pdvm_batch_size') !== undefined);
    // decode-only steps: at least one a token after the first, a row or more each
    assert.ok(metric(text, 'pdvm_batch_decode_steps')! >= 4 && metric(text, 'pdvm_batch_decode_step_seconds')! > 0);
    assert.ok(metric(text, 'pdvm_batch_decode_step_rows')! >= metric(text, 'pdvm_batch_decode_steps')!);
    assert.ok(metric(text, 'pdvm_batch_between_step_seconds')! >= 0);
    // the second request copied the prompt out of the first one's kept cache: both are kept now
    assert.equal(metric(text, 'pdvm_kv_caches{state="kept"}'), 2);
    assert.equal(metric(text, 'pdvm_kv_cache_bytes{state="kept"}'), 2 * 6 * 2 * 1024 * 128 * 4);
    assert.equal(metric(text, 'pdvm_requests_total{endpoint="/metrics",status="401"}'), 1);
  } finally {
    await t.stop();
  }
  const open = await startTestServer({}, { apiKey: 'k', metricsPublic: true });
  try {
    assert.equal((await fetch(`${open.server.url}/metrics`)).status, 200, '--metrics-public');
    assert.equal((await fetch(`${open.server.url}/v1/models`)).status, 401, 'the API stays behind the key');
  } finally {
    await open.stop();
  }
});

test('--cors: preflight answered without the API key, replies carry the allowed origin; other origins get nothing', async () => {
  const t = await startTestServer({}, { apiKey: 'k', cors: ['https://app.example'] });
  try {
    const preflight = await fetch(`${t.server.url}/v1/chat/completions`, {
      method: 'OPTIONS',
      headers: { Origin: 'https://app.example', 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'authorization,content-type' },
    });
    assert.equal(preflight.status, 204);
    assert.equal(preflight.headers.get('access-control-allow-origin'), 'https://app.example');
    assert.match(preflight.headers.get('access-control-allow-methods')!, /POST/);
    assert.equal(preflight.headers.get('access-control-allow-headers'), 'authorization,content-type');
    const reply = await fetch(`${t.server.url}/v1/models`, { headers: { Origin: 'https://app.example', Authorization: 'Bearer k' } });
    assert.equal(reply.status, 200);
    assert.equal(reply.headers.get('access-control-allow-origin'), 'https://app.example');
    const denied = await fetch(`${t.server.url}/v1/models`, { headers: { Origin: 'https://evil.example' } });
    assert.equal(denied.status, 401);
    assert.equal(denied.headers.get('access-control-allow-origin'), null);
    const deniedPreflight = await fetch(`${t.server.url}/v1/models`, { method: 'OPTIONS', headers: { Origin: 'https://evil.example', 'Access-Control-Request-Method': 'GET' } });
    assert.notEqual(deniedPreflight.status, 204);
    assert.equal(deniedPreflight.headers.get('access-control-allow-origin'), null);
  } finally {
    await t.stop();
  }
  const any = await startTestServer({}, { cors: ['*'] });
  try {
    const r = await fetch(`${any.server.url}/health`, { headers: { Origin: 'https://anywhere.example' } });
    assert.equal(r.headers.get('access-control-allow-origin'), '*');
  } finally {
    await any.stop();
  }
});

test('--served-model-name names the model (repeatable); unknown names get 404, or the served model with --accept-any-model', async () => {
  const t = await startTestServer({}, { servedModelNames: ['gpt-4o-mini', 'demo'] });
  try {
    const list = await t.client.models.list();
    assert.deepEqual(list.data.map((m) => m.id), ['gpt-4o-mini', 'demo']);
    const r = await t.client.completions.create({ model: 'demo', prompt: 'The jury said', max_tokens: 2, temperature: 0 });
    assert.equal(r.model, 'demo');
    const e = await t.client.completions.create({ model: MODEL, prompt: 'The jury said', max_tokens: 2 }).catch((x: unknown) => x);
    assert.ok(e instanceof OpenAI.APIError && e.status === 404, `got ${e}`);
    assert.match(e.message, /"gpt-4o-mini", "demo"/);
  } finally {
    await t.stop();
  }
  const any = await startTestServer({}, { servedModelNames: ['gpt-4o-mini'], acceptAnyModel: true });
  try {
    const r = await any.client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2, temperature: 0 });
    assert.equal(r.model, 'gpt-4o-mini');
    assert.equal(r.choices[0]!.message.role, 'assistant');
  } finally {
    await any.stop();
  }
});

test('a burst past --max-queue gets 429 with Retry-After; a prompt that cannot fit gets its 400 without waiting for a slot', async () => {
  const t = await startTestServer({ maxConcurrency: 1, maxQueued: 1 });
  try {
    const post = (body: object) => fetch(`${t.server.url}/v1/completions`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
    const long = { model: MODEL, prompt: 'The jury said', max_tokens: 60, temperature: 0 };
    const running = post(long);
    await waitFor(() => t.model.activity.active === 1, 5000, 'one running');
    const queued = post(long);
    await waitFor(() => t.model.activity.queued === 1, 5000, 'one queued');
    const burst = await Promise.all([post(long), post(long), post(long)]);
    for (const r of burst) {
      assert.equal(r.status, 429);
      assert.equal(r.headers.get('retry-after'), '1');
      assert.equal(((await r.json()) as { error: { type: string } }).error.type, 'rate_limit_error');
    }
    // too long for the context: 400 at once, while the slot and the queue are still taken
    const tooLong = await post({ model: MODEL, prompt: 'The jury said', max_tokens: 5000 });
    assert.equal(tooLong.status, 400);
    assert.equal(((await tooLong.json()) as { error: { code: string } }).error.code, 'context_length_exceeded');
    assert.equal(t.model.activity.active, 1, 'the running request still holds the slot');
    assert.equal((await running).status, 200);
    assert.equal((await queued).status, 200);
  } finally {
    await t.stop();
  }
});

test('SIGTERM finishes every stream of a running batch, then exits 0', async () => {
  const { child, url, exited, stderr } = await spawnServe(['--grace', '30', '--max-concurrency', '4']);
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'x', maxRetries: 0 });
  const prompts = ['The jury said', 'In the morning the', 'He had never', 'The city of'];
  let started = 0;
  const runs = prompts.map(async (prompt) => {
    const stream = await client.completions.create({ model: MODEL, prompt, max_tokens: 16, temperature: 0, stream: true, stream_options: { include_usage: true } });
    let usage: OpenAI.CompletionUsage | null | undefined, first = true;
    for await (const chunk of stream) {
      if (first && chunk.choices[0]?.text) {
        first = false;
        if (++started === prompts.length) child.kill('SIGTERM');
      }
      usage = chunk.usage ?? usage;
    }
    return usage?.completion_tokens;
  });
  assert.deepEqual(await Promise.all(runs), [16, 16, 16, 16], 'each stream of the batch ran to its end');
  assert.equal(await exited, 0, stderr());
  assert.match(stderr(), /SIGTERM: finishing 4 request/);
});

test('pdvm serve --synthetic SHAPE: random q4 weights of a bench shape, token-id prompts, every stream to max_tokens, a chunk per token', async () => {
  const { child, url, exited } = await spawnServeOn(null, ['--synthetic', 'brown-llama', '--context', '64']);
  try {
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'x', maxRetries: 0 });
    assert.deepEqual((await client.models.list()).data.map((m) => m.id), ['synthetic-brown-llama-q4']);
    const stream = await client.completions.create({ model: 'synthetic-brown-llama-q4', prompt: [5, 6, 7, 8], max_tokens: 5, temperature: 0, stream: true, stream_options: { include_usage: true } });
    let chunks = 0, usage: OpenAI.CompletionUsage | null | undefined;
    for await (const chunk of stream) {
      if (chunk.choices.length && chunk.choices[0]!.finish_reason === null) chunks++;
      usage = chunk.usage ?? usage;
    }
    assert.equal(usage?.completion_tokens, 5, 'no EOS: the stream runs to max_tokens');
    assert.equal(chunks, 5, 'one chunk per token (no tokenizer, so no text)');
    const e = await client.completions.create({ model: 'synthetic-brown-llama-q4', prompt: 'text', max_tokens: 2 }).catch((x: unknown) => x);
    assert.ok(e instanceof OpenAI.APIError && e.status === 400, `a text prompt is refused: ${e}`);
  } finally {
    child.kill('SIGTERM');
    await exited;
  }
});
