/**
 * A compress run stopped midway leaves nothing under the output name: killed outright (SIGKILL: only its
 * hidden temporary file remains) or interrupted (SIGTERM: the temporary file is removed too).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { writeSyntheticModel } from '../../bench/synthetic-model.js';
import { CLI } from '../helpers.js';

let dir: string;
let model: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pdvm-kill-'));
  model = join(dir, 'synthetic');
  // ~25 M parameters: long enough to catch the run between its first and last tensor
  await writeSyntheticModel(model, { architecture: 'LlamaForCausalLM', hidden: 512, intermediate: 2048, layers: 6, heads: 8, kvHeads: 8, vocab: 1024 });
});
after(() => rm(dir, { recursive: true, force: true }));

/** Starts compress, waits until its temporary file exists, sends `signal`, and waits for the exit. */
async function interrupt(output: string, signal: NodeJS.Signals): Promise<{ code: number | null; signal: string | null; partials: string[] }> {
  const child = spawn(process.execPath, [CLI, 'compress', model, '-o', output, '--sparsity', '0.5', '--bits', '4', '-q'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) => child.on('exit', (code, sig) => resolve({ code, signal: sig })));
  // this output's temporary file (another test's may be there too)
  const partial = () => readdirSync(dir).filter((f) => f.startsWith(`.${basename(output)}.partial-`));
  const t0 = Date.now();
  while (partial().length === 0) {
    if (child.exitCode !== null) assert.fail(`compress finished before it could be interrupted: ${stderr}`);
    if (Date.now() - t0 > 60_000) assert.fail('compress never started writing');
    await new Promise((r) => setTimeout(r, 5));
  }
  await new Promise((r) => setTimeout(r, 100)); // let it write a few tensors
  child.kill(signal);
  const r = await exited;
  return { ...r, partials: partial() };
}

test('compress killed with SIGKILL midway leaves no output file', async () => {
  const output = join(dir, 'killed.upg');
  const r = await interrupt(output, 'SIGKILL');
  assert.equal(r.signal, 'SIGKILL');
  assert.equal(existsSync(output), false, 'no artifact under the output name');
  assert.equal(r.partials.length, 1, 'it was stopped while writing its temporary file');
});

test('compress interrupted with SIGTERM exits 1 and removes its temporary file', async () => {
  const output = join(dir, 'stopped.upg');
  const r = await interrupt(output, 'SIGTERM');
  assert.equal(r.code, 1);
  assert.equal(existsSync(output), false);
  assert.deepEqual(r.partials, []);
});

test('the same run left alone produces the artifact, and removes the temporary file the killed run left', async () => {
  const output = join(dir, 'killed.upg');
  assert.equal(readdirSync(dir).filter((f) => f.startsWith('.killed.upg.partial-')).length, 1, 'the SIGKILL test left its temporary file');
  const child = spawn(process.execPath, [CLI, 'compress', model, '-o', output, '--sparsity', '0.5', '--bits', '4', '-q'], { stdio: 'ignore' });
  const code = await new Promise((resolve) => child.on('exit', resolve));
  assert.equal(code, 0);
  assert.ok(existsSync(output));
  assert.deepEqual(readdirSync(dir).filter((f) => f.includes('.partial-')), [], 'no temporary file is left');
});
