/**
 * Bad input: each gets one clear line naming the file and the problem, exit code 1, no stack trace,
 * no hang. Each case corrupts a copy of fixtures/models/arch/llama in a temporary folder.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cp, mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ARCH_MODELS, CLI } from '../helpers.js';

const LLAMA = ARCH_MODELS[0]!;

async function copyModel(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'pdvm-bad-'));
  await cp(LLAMA, dir, { recursive: true });
  return dir;
}

/** Rewrites model.safetensors with an edited header and the same data region. */
async function editHeader(dir: string, edit: (h: Record<string, { dtype: string; shape: number[]; data_offsets: number[] }>) => void): Promise<void> {
  const path = join(dir, 'model.safetensors');
  const bytes = await readFile(path);
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8'));
  edit(header);
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  await writeFile(path, Buffer.concat([len, json, bytes.subarray(8 + n)]));
}

function runCli(args: string[]): { status: number | null; stderr: string; stdout: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60_000 });
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

test('truncated safetensors', async () => {
  const dir = await copyModel();
  try {
    const path = join(dir, 'model.safetensors');
    const size = (await readFile(path)).length;
    await truncate(path, Math.floor(size / 2));
    expectCleanError(runCli(GEN(dir)), 'model.safetensors', 'truncated');
  } finally {
    await rm(dir, { recursive: true });
  }
});

test('header length past the end of the file', async () => {
  const dir = await copyModel();
  try {
    const path = join(dir, 'model.safetensors');
    const bytes = await readFile(path);
    bytes.writeBigUInt64LE(BigInt(bytes.length * 4), 0);
    await writeFile(path, bytes);
    expectCleanError(runCli(GEN(dir)), 'model.safetensors', 'header length');
  } finally {
    await rm(dir, { recursive: true });
  }
});

test('tensor offsets out of range', async () => {
  const dir = await copyModel();
  try {
    await editHeader(dir, (h) => {
      const t = h['model.norm.weight']!;
      const len = t.data_offsets[1]! - t.data_offsets[0]!;
      t.data_offsets = [10_000_000, 10_000_000 + len];
    });
    expectCleanError(runCli(GEN(dir)), 'model.safetensors', 'model.norm.weight', 'truncated');
  } finally {
    await rm(dir, { recursive: true });
  }
});

test('overlapping tensors', async () => {
  const dir = await copyModel();
  try {
    await editHeader(dir, (h) => {
      const a = h['model.layers.0.input_layernorm.weight']!;
      const b = h['model.layers.1.input_layernorm.weight']!;
      b.data_offsets = [a.data_offsets[0]! + 4, a.data_offsets[1]! + 4];
    });
    expectCleanError(runCli(GEN(dir)), 'model.safetensors', 'overlap');
  } finally {
    await rm(dir, { recursive: true });
  }
});

test('dtype that does not fit the model', async () => {
  const dir = await copyModel();
  try {
    await editHeader(dir, (h) => {
      h['model.layers.0.mlp.up_proj.weight']!.dtype = 'I32';
    });
    expectCleanError(runCli(GEN(dir)), 'model.safetensors', 'model.layers.0.mlp.up_proj.weight', 'I32');
  } finally {
    await rm(dir, { recursive: true });
  }
});

test('shape that does not match the config', async () => {
  const dir = await copyModel();
  try {
    const config = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));
    config.intermediate_size = 200;
    await writeFile(join(dir, 'config.json'), JSON.stringify(config));
    expectCleanError(runCli(GEN(dir)), 'model.safetensors', 'mlp.gate_proj.weight', 'shape', '[200,128]');
  } finally {
    await rm(dir, { recursive: true });
  }
});

test('missing config key', async () => {
  const dir = await copyModel();
  try {
    const config = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));
    delete config.hidden_size;
    await writeFile(join(dir, 'config.json'), JSON.stringify(config));
    expectCleanError(runCli(GEN(dir)), 'config.json', 'hidden_size');
  } finally {
    await rm(dir, { recursive: true });
  }
});

test('unknown architecture names it and the supported list', async () => {
  const dir = await copyModel();
  try {
    const config = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));
    config.architectures = ['GPT2LMHeadModel'];
    await writeFile(join(dir, 'config.json'), JSON.stringify(config));
    expectCleanError(runCli(GEN(dir)), 'config.json', 'GPT2LMHeadModel', 'LlamaForCausalLM', 'Phi3ForCausalLM', 'Qwen2ForCausalLM', 'MistralForCausalLM');
  } finally {
    await rm(dir, { recursive: true });
  }
});

test('text prompt for a model without a tokenizer', () => {
  expectCleanError(runCli(['generate', LLAMA, '--prompt', 'hello']), 'tokenizer', '--prompt-ids');
});

test('missing model folder, bad flag values and a prompt past the context', () => {
  expectCleanError(runCli(['generate', '/nonexistent/model', '--prompt', 'x']), '/nonexistent/model');
  expectCleanError(runCli(['generate', LLAMA, '--prompt-ids', '1,x']), '--prompt-ids');
  expectCleanError(runCli(['generate', LLAMA, '--prompt-ids', '1,2', '--temperature', '-1']), 'temperature');
  const badChoice = runCli(['generate', LLAMA, '--prompt-ids', '1,2', '--prefill-int8', 'int4']); // commander's line, and where to read more
  assert.equal(badChoice.status, 1, badChoice.stderr);
  assert.match(badChoice.stderr, /--prefill-int8.*'int4' is invalid.*row, row-q4, off/);
  const long = Array.from({ length: 40 }, (_, i) => i + 3).join(',');
  expectCleanError(runCli(['generate', LLAMA, '--prompt-ids', long, '--context', '16']), '40 tokens', 'context');
});
