/** `pdvm compress` end to end: the report it prints is the one `pdvm inspect` shows for the artifact, which generate runs. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, MODELS } from '../helpers.js';

const run = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 120_000 });

test('compress prints the per-tensor report and totals; inspect shows the same; generate runs the artifact', () => {
  const dir = mkdtempSync(join(tmpdir(), 'pdvm-cli-'));
  try {
    const out = join(dir, 'phi3.upg');
    const c = run('compress', join(MODELS, 'arch', 'phi3'), '-o', out, '--sparsity', '0.5', '--attn-sparsity', '0.25', '--bits', '4', '--group', '32');
    assert.equal(c.status, 0, c.stderr);
    const report = c.stdout.trim().split('\n');
    const rowOf = (lines: string[], name: string) => lines.find((l) => l.startsWith(name + ' '));
    const qkv = rowOf(report, 'model.layers.0.self_attn.qkv_proj.weight')!;
    const gateUp = rowOf(report, 'model.layers.0.mlp.gate_up_proj.weight')!;
    assert.match(qkv, /bitmap tile=32,bits=4 +\[\d+,128\] +25\.\d%/);
    assert.match(gateUp, /bitmap tile=32,bits=4 +\[\d+,128\] +50\.\d%/);
    const total = report.at(-1)!;
    assert.match(total, /^total: .* bits\/weight; [\d.]+x smaller than bf16, [\d.]+x smaller than fp32$/);
    assert.ok(total.includes(`file ${(statSync(out).size / 1e3).toFixed(1)} kB`) || total.includes(`file ${(statSync(out).size / 1e6).toFixed(2)} MB`), total);

    const i = run('inspect', out);
    assert.equal(i.status, 0, i.stderr);
    const shown = i.stdout.trim().split('\n');
    for (const name of ['model.embed_tokens.weight', 'model.layers.0.self_attn.qkv_proj.weight', 'model.layers.2.mlp.down_proj.weight']) {
      assert.equal(rowOf(shown, name), rowOf(report, name), `inspect row for ${name}`);
    }
    assert.equal(shown.at(-1), total);

    const g = run('generate', out, '--prompt-ids', '1,2,3', '-n', '5', '--temperature', '0');
    assert.equal(g.status, 0, g.stderr);
    assert.match(g.stdout, /^\d+(,\d+){4}\n$/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
