/**
 * The server's side of issue 12: a malformed percent-encoding in the model id is the client's fault
 * (400); a broken chat template is the operator's (500 naming the file, a warning at start-up), and
 * plain completions keep working; a request without `model` or with `messages: []` says exactly that.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, symlink, writeFile, cp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel, startServer, type Model, type PdvmServer } from 'pdvm';
import { BROWN } from '../helpers.js';
import { spawnServeOn } from './util.js';

let dir: string;
let model: Model;
let server: PdvmServer;

before(async () => {
  // the demo model's Hugging Face folder with a chat template that does not parse
  dir = await mkdtemp(join(tmpdir(), 'pdvm-server-bad-'));
  for (const f of await readdir(BROWN)) {
    if (f.startsWith('reference')) continue;
    if (f.endsWith('.safetensors')) await symlink(join(BROWN, f), join(dir, f));
    else await cp(join(BROWN, f), join(dir, f));
  }
  await writeFile(join(dir, 'chat_template.jinja'), '{% for m in messages %}{{ m.content }');
  model = await loadModel(dir);
  server = await startServer(model, { port: 0, log: () => {} });
});

after(async () => {
  await server?.close(1000);
  await model?.dispose();
  await rm(dir, { recursive: true, force: true });
});

async function call(method: string, path: string, body?: unknown): Promise<{ status: number; error: { message: string; type: string; param: string | null; code: string | null } }> {
  const r = await fetch(server.url + path, { method, headers: { 'Content-Type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) });
  const json = (await r.json()) as { error: { message: string; type: string; param: string | null; code: string | null } };
  return { status: r.status, error: json.error };
}

test('GET /v1/models/%E0%A4%A is a 400 (bad percent-encoding), not a 500', async () => {
  const r = await call('GET', '/v1/models/%E0%A4%A');
  assert.equal(r.status, 400, r.error.message);
  assert.match(r.error.message, /percent-encoding/);
  assert.deepEqual(Object.keys(r.error), ['message', 'type', 'param', 'code']);
});

test('no model, or messages: [], get messages that say exactly that', async () => {
  let r = await call('POST', '/v1/chat/completions', { messages: [{ role: 'user', content: 'hi' }] });
  assert.equal(r.status, 400);
  assert.equal(r.error.param, 'model');
  assert.match(r.error.message, /^model is required/);
  assert.doesNotMatch(r.error.message, /undefined/);
  r = await call('POST', '/v1/chat/completions', { model: model.id, messages: [] });
  assert.equal(r.status, 400);
  assert.equal(r.error.param, 'messages');
  assert.match(r.error.message, /empty list; send at least one message/);
});

test('a broken chat template: chat requests get a 500 naming the file; completions still work', async () => {
  const r = await call('POST', '/v1/chat/completions', { model: model.id, messages: [{ role: 'user', content: 'Hello' }], max_tokens: 2 });
  assert.equal(r.status, 500);
  assert.equal(r.error.code, 'chat_template_error');
  assert.match(r.error.message, /chat_template\.jinja: does not parse/);
  const ok = await fetch(server.url + '/v1/completions', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ model: model.id, prompt: 'The jury said', max_tokens: 2, temperature: 0 }),
  });
  assert.equal(ok.status, 200);
  const body = (await ok.json()) as { choices: { text: string }[] };
  assert.equal(typeof body.choices[0]!.text, 'string');
});

test('pdvm serve warns at start-up about a chat template that does not parse', async () => {
  const s = await spawnServeOn(dir, []);
  try {
    assert.match(s.stderr(), /warning: .*chat_template\.jinja: does not parse.*will answer 500/);
  } finally {
    s.child.kill('SIGTERM');
    assert.equal(await s.exited, 0);
  }
});
