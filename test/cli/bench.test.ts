/**
 * `pdvm bench` end to end on the CPU Vulkan driver: a tiny brown-llama-shaped synthetic model, both
 * paths, one JSON object (the fused run, the unfused one under compared_with) with the keys the issue
 * names, and the fused/unfused check passing.
 * Figures on lavapipe mean nothing; only their presence and consistency are checked.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { CLI } from '../helpers.js';
import { SKIP_GPU } from '../backends/webgpu/gpu.js';

const KEYS = [
  'decode_tokens_per_second', 'prefill_tokens_per_second', 'dispatches_per_token', 'weight_bytes_per_token', 'achieved_gbps',
  'measured_read_gbps', 'bandwidth_fraction', 'peak_gpu_bytes', 'shape', 'encoding', 'context', 'path',
];

for (const encoding of ['q4', 'q8', 'bitmap']) {
  test(`pdvm bench --json (brown-llama, ${encoding}, both paths)`, { skip: SKIP_GPU }, () => {
    const args = ['bench', '--shape', 'brown-llama', '--encoding', encoding, '--context', '8', '--tokens', '4', '--probe-mib', '4', '--check', '4', '--path', 'both', '--json'];
    const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 300_000 });
    assert.equal(r.status, 0, `pdvm ${args.join(' ')} failed:\n${r.stderr}`);
    const lines = r.stdout.split('\n').filter((l) => l.trim() !== '');
    assert.equal(lines.length, 1, `one JSON object expected on stdout, got:\n${r.stdout}`);
    const top = JSON.parse(lines[0]!) as Record<string, unknown> & { compared_with: Record<string, unknown>[] };
    const { compared_with: others, ...fused } = top;
    const rows = [fused, ...others];
    assert.deepEqual(rows.map((o) => o.path), ['fused', 'unfused']);
    for (const o of rows) {
      for (const k of KEYS) assert.ok(k in o, `missing ${k} in ${JSON.stringify(o)}`);
      assert.equal(o.shape, 'brown-llama');
      if (encoding === 'q8') assert.equal(o.encoding, 'q8');
      assert.equal(o.context, 8);
      assert.ok((o.decode_tokens_per_second as number) > 0 && (o.measured_read_gbps as number) > 0);
      const fraction = (o.achieved_gbps as number) / (o.measured_read_gbps as number);
      assert.ok(Math.abs(fraction - (o.bandwidth_fraction as number)) < 1e-9);
      assert.equal(o.check_greedy_identical, true);
      assert.ok((o.check_max_rel_diff as number) < 1e-5, `fused vs unfused ${o.check_max_rel_diff}`);
    }
    // 6 layers: 5 dispatches a layer fused, 9 unfused, plus embedding, head and argmax (on the fused
    // path with subgroups lm_head's argmax partials replace the argmax dispatch: argmax 'fused')
    assert.equal(rows[0]!.dispatches_per_token, 1 + 6 * 5 + 1 + (rows[0]!.subgroups ? 0 : 1));
    assert.equal(rows[1]!.dispatches_per_token, 1 + 6 * 9 + 2 + 1);
  });
}

test('pdvm bench --prefill N --json (brown-llama q4): prompt_tokens_per_second, the path and the features', { skip: SKIP_GPU }, () => {
  const args = ['bench', '--shape', 'brown-llama', '--encoding', 'q4', '--prefill', '20', '--runs', '1', '--json'];
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 300_000 });
  assert.equal(r.status, 0, `pdvm ${args.join(' ')} failed:\n${r.stderr}`);
  const o = JSON.parse(r.stdout.trim()) as Record<string, unknown> & { features: Record<string, unknown> };
  for (const k of ['prompt_tokens', 'prompt_tokens_per_second', 'prompt_ms', 'prefill_chunk', 'prefill_kernel', 'prefill_path', 'features']) assert.ok(k in o, `missing ${k} in ${r.stdout}`);
  assert.equal(o.prompt_tokens, 20);
  assert.ok((o.prompt_tokens_per_second as number) > 0);
  assert.ok(Math.abs((o.prompt_tokens_per_second as number) - 20 / ((o.prompt_ms as number) / 1000)) < 1e-6);
  for (const k of ['subgroups', 'shaderF16', 'packed4x8IntegerDotProduct', 'subgroupMatrixConfigs', 'subgroupMatrixF16', 'dawnToggles', 'selfTests']) assert.ok(k in o.features, `missing features.${k}`);
  assert.equal(o.prefill_kernel, o.features.subgroupMatrixF16 ? 'subgroup-matrix-f16' : 'f32');
});
