/**
 * Bad input, issue 12's classes: tokenizer and chat template files, values accepted silently before,
 * huge sizes, paths, messages that pointed at the wrong thing, and stdout closing early. Each ends in
 * one line naming the file (and key or tensor), exit code 1, no stack trace; a closed stdout ends
 * quietly with exit 0.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readFile, rm, symlink, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ARCH_MODELS, BROWN, CLI, ROOT } from '../helpers.js';

const LLAMA = ARCH_MODELS[0]!;
const DEMO = join(ROOT, 'models', 'brown-llama-12m.upg');
let tmp: string;
before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'pdvm-badfiles-'));
});
after(() => rm(tmp, { recursive: true, force: true }));

let n = 0;
/** A copy of a fixture folder; big safetensors files are linked, not copied. */
async function copyModel(from = LLAMA): Promise<string> {
  const dir = join(tmp, `m${n++}`);
  await mkdir(dir);
  for (const f of readdirSync(from)) {
    if (f.startsWith('reference')) continue;
    if (f.endsWith('.safetensors')) await symlink(join(from, f), join(dir, f));
    else await cp(join(from, f), join(dir, f));
  }
  return dir;
}

async function editJson(path: string, edit: (j: Record<string, any>) => void): Promise<void> {
  const j = JSON.parse(await readFile(path, 'utf8'));
  edit(j);
  await writeFile(path, JSON.stringify(j));
}

function runCli(args: string[]): { status: number | null; stderr: string; stdout: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 120_000 });
  return { status: r.status, stderr: r.stderr, stdout: r.stdout };
}

function expectCleanError(r: { status: number | null; stderr: string }, ...mustContain: (string | RegExp)[]): void {
  assert.equal(r.status, 1, `exit code 1 expected, got ${r.status}; stderr: ${r.stderr}`);
  assert.doesNotMatch(r.stderr, /\n\s+at /, `no stack trace expected:\n${r.stderr}`);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `one line expected:\n${r.stderr}`);
  for (const m of mustContain) {
    if (typeof m === 'string') assert.ok(r.stderr.includes(m), `stderr should mention ${JSON.stringify(m)}: ${r.stderr}`);
    else assert.match(r.stderr, m);
  }
}

const GEN = (dir: string) => ['generate', dir, '--prompt-ids', '1,2,3', '-n', '2', '--temperature', '0'];

// ---- tokenizer and chat template ----

test('tokenizer.json: no model, unknown pre-tokenizer, wrong-typed merges and added_tokens, empty vocab: the file and key are named', async () => {
  const dir = await copyModel(BROWN);
  const tj = join(dir, 'tokenizer.json');
  const original = await readFile(tj, 'utf8');
  const cases: [(j: Record<string, any>) => void, ...string[]][] = [
    [(j) => delete j.model, 'tokenizer.json', 'no "model" object'],
    [(j) => (j.pre_tokenizer = { type: 'Gpt5Magic' }), 'tokenizer.json', '"pre_tokenizer.type"', 'Gpt5Magic'],
    [(j) => (j.model.merges = 42), 'tokenizer.json', '"model.merges"', 'number 42'],
    [(j) => (j.model.merges[3] = 7), 'tokenizer.json', '"model.merges[3]"'],
    [(j) => (j.added_tokens = { a: 1 }), 'tokenizer.json', '"added_tokens"'],
    [(j) => (j.added_tokens[0] = 'x'), 'tokenizer.json', '"added_tokens[0]"'],
    [(j) => (j.model.vocab = {}), 'tokenizer.json', '"model.vocab" is empty'],
  ];
  for (const [edit, ...expect] of cases) {
    const j = JSON.parse(original);
    edit(j);
    await writeFile(tj, JSON.stringify(j));
    expectCleanError(runCli(['generate', dir, '--prompt', 'The jury', '-n', '1']), ...expect);
  }
});

test('a chat template that does not parse, or calls an undefined function, fails --chat naming the file; plain prompts still work', async () => {
  const dir = await copyModel(BROWN);
  for (const [template, expect] of [
    ['{% for m in messages %}{{ m.content }', /does not parse/],
    ["{{ no_such_function('x') }}", /fails to render/],
  ] as const) {
    await writeFile(join(dir, 'chat_template.jinja'), template);
    expectCleanError(runCli(['generate', dir, '--prompt', 'Hello', '--chat', '-n', '1']), 'chat_template.jinja', expect);
    const plain = runCli(['generate', dir, '--prompt', 'The jury said', '-n', '2', '--temperature', '0']);
    assert.equal(plain.status, 0, plain.stderr);
  }
});

test('a broken chat template inside a .upg is named by its metadata key', async () => {
  // the demo artifact (version 1: no header checksum) with its template replaced in place
  const bytes = await readFile(DEMO);
  const length = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + length).toString('utf8'));
  header.__metadata__.upg_chat_template = '{% if %}';
  const text = Buffer.from(JSON.stringify(header));
  assert.ok(text.length <= length);
  bytes.fill(0x20, 8, 8 + length);
  text.copy(bytes, 8);
  const path = join(tmp, 'template.upg');
  await writeFile(path, bytes);
  expectCleanError(runCli(['generate', path, '--prompt', 'Hi', '--chat', '-n', '1']), 'template.upg (upg_chat_template)', 'does not parse');
  assert.equal(runCli(['generate', path, '--prompt', 'Hi', '-n', '1']).status, 0);
  expectCleanError(runCli(['verify', path]), 'template check failed', 'upg_chat_template');
});

// ---- values accepted silently before ----

test('config.json: heads not dividing hidden_size, rope_scaling not an object, lm_head missing while tie_word_embeddings is false', async () => {
  const dir = await copyModel();
  const config = join(dir, 'config.json');
  const original = await readFile(config, 'utf8');
  await editJson(config, (c) => {
    c.num_attention_heads = 3;
    delete c.head_dim;
  });
  expectCleanError(runCli(GEN(dir)), 'config.json', 'hidden_size 128 is not a multiple of num_attention_heads 3');
  await writeFile(config, original);
  await editJson(config, (c) => (c.rope_scaling = 'linear'));
  expectCleanError(runCli(GEN(dir)), 'config.json', '"rope_scaling" must be an object');

  // lm_head.weight gone from the header: refused where tie_word_embeddings is false, tied where it is absent
  await writeFile(config, original);
  const st = join(dir, 'model.safetensors');
  const bytes = await readFile(st);
  await unlink(st);
  const len = Number(bytes.readBigUInt64LE(0));
  const h = JSON.parse(bytes.subarray(8, 8 + len).toString('utf8'));
  delete h['lm_head.weight'];
  const text = Buffer.from(JSON.stringify(h).padEnd(len, ' '));
  await writeFile(st, Buffer.concat([bytes.subarray(0, 8), text, bytes.subarray(8 + len)]));
  expectCleanError(runCli(GEN(dir)), 'model.safetensors', 'no lm_head.weight', '"tie_word_embeddings": false');
  await editJson(config, (c) => delete c.tie_word_embeddings);
  assert.equal(runCli(GEN(dir)).status, 0);
});

test('generation_config.json: a bad top_p or a negative temperature is named as that file\'s key, not as a flag', async () => {
  const dir = await copyModel();
  const gen = join(dir, 'generation_config.json');
  await editJson(gen, (g) => (g.top_p = 1.5));
  let r = runCli(['generate', dir, '--prompt-ids', '1,2', '-n', '1']);
  expectCleanError(r, 'generation_config.json', '"top_p" must be in (0, 1]');
  assert.doesNotMatch(r.stderr, /--top-p/);
  await editJson(gen, (g) => {
    delete g.top_p;
    g.temperature = -1;
  });
  r = runCli(['generate', dir, '--prompt-ids', '1,2', '-n', '1']);
  expectCleanError(r, 'generation_config.json', '"temperature" must be >= 0');
});

test('compress refuses a tensor whose shape contradicts the config, as generate does', async () => {
  const dir = await copyModel();
  await editJson(join(dir, 'config.json'), (c) => (c.intermediate_size = 200));
  const out = join(tmp, 'shape.upg');
  expectCleanError(runCli(['compress', dir, '-o', out, '-q']), 'model.safetensors', 'mlp.gate_proj.weight', '[200,128]');
  assert.equal(existsSync(out), false);
});

// ---- huge sizes ----

test('huge sizes: --context / --ctx 10^9 name the maximum; num_hidden_layers 10^9 and vocab_size 2^40 are checked against the tensors at once', async () => {
  const t0 = Date.now();
  expectCleanError(runCli([...GEN(LLAMA), '--context', '1000000000']), '--context 1000000000', 'maximum of 256');
  expectCleanError(runCli(['perplexity', DEMO, '--text', join(ROOT, 'README.md'), '--ctx', '1000000000']), '--ctx 1000000000', 'maximum of 1024');
  const dir = await copyModel();
  const config = join(dir, 'config.json');
  const original = await readFile(config, 'utf8');
  await editJson(config, (c) => (c.num_hidden_layers = 1e9));
  expectCleanError(runCli(GEN(dir)), 'config.json', 'num_hidden_layers is 1000000000', 'holds tensors for 3 layers');
  await writeFile(config, original);
  await editJson(config, (c) => (c.vocab_size = 2 ** 40));
  expectCleanError(runCli(['compress', dir, '-o', join(tmp, 'vocab.upg'), '-q']), 'model.embed_tokens.weight', '[1099511627776,128]');
  await editJson(config, (c) => {
    c.vocab_size = 512;
    c.max_position_embeddings = 2 ** 40;
  });
  // within the model's maximum but past this machine's memory: the estimate is in the message
  expectCleanError(runCli([...GEN(dir), '--context', String(2 ** 40)]), /needs [\d.]+ TB of KV cache/);
  assert.ok(Date.now() - t0 < 60_000, 'all refused quickly');
});

// ---- paths ----

test('paths: verify on a folder, model.safetensors that is a folder, a shard index whose weight_map is an array or maps to a number', async () => {
  expectCleanError(runCli(['verify', LLAMA]), LLAMA, 'is a folder');
  expectCleanError(runCli(['verify', join(tmp, 'nothing.upg')]), 'nothing.upg: no such file');
  const dir = await copyModel();
  await unlink(join(dir, 'model.safetensors'));
  await mkdir(join(dir, 'model.safetensors'));
  expectCleanError(runCli(GEN(dir)), 'model.safetensors', 'is a folder');
  await rm(join(dir, 'model.safetensors'), { recursive: true });
  const index = join(dir, 'model.safetensors.index.json');
  await writeFile(index, JSON.stringify({ weight_map: ['model-00001.safetensors'] }));
  expectCleanError(runCli(GEN(dir)), 'model.safetensors.index.json', '"weight_map" object', 'an array');
  await writeFile(index, JSON.stringify({ weight_map: { 'model.norm.weight': 3 } }));
  expectCleanError(runCli(GEN(dir)), 'model.safetensors.index.json', 'maps "model.norm.weight" to 3');
});

test('compress -o: an existing folder or a missing folder fails before any work, leaving nothing behind', async () => {
  const existing = join(tmp, 'out.upg');
  await mkdir(existing);
  const t0 = Date.now();
  expectCleanError(runCli(['compress', LLAMA, '-o', existing, '-q']), `-o ${existing}`, 'is a folder');
  expectCleanError(runCli(['compress', LLAMA, '-o', join(tmp, 'missing', 'x.upg'), '-q']), 'missing', 'does not exist');
  expectCleanError(runCli(['compress', LLAMA, '-o', join(tmp, 'x.bin'), '-q']), 'must end in .upg');
  assert.ok(Date.now() - t0 < 30_000);
  assert.deepEqual(readdirSync(tmp).filter((f) => f.includes('.partial-')), []);
  assert.deepEqual(readdirSync(existing), []);
});

// ---- streams ----

test('`pdvm generate ... | head -c 20`: stdout closing early ends the program quietly with exit 0', async () => {
  const child = spawn(process.execPath, [CLI, 'generate', DEMO, '--prompt', 'The jury said', '-n', '400', '--temperature', '0', '--ignore-eos'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  let got = '';
  const t0 = Date.now();
  await new Promise<void>((resolve) => {
    child.stdout.on('data', (d: Buffer) => {
      got += d.toString();
      if (got.length >= 20) {
        child.stdout.destroy(); // what head does once it has its 20 bytes
        resolve();
      }
    });
  });
  const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  assert.equal(code, 0, stderr);
  assert.doesNotMatch(stderr, /EPIPE|\n\s+at /);
  assert.ok(Date.now() - t0 < 30_000, 'it stopped early rather than generating 400 tokens into a closed pipe');
});
