/**
 * Device creation (device.ts): the features reported match what the adapter offers and the options
 * allow, the Dawn toggles are asked for by default in Node and not when turned off, and every fast
 * path that is on passed its self-test (self-test.ts) on this device.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Gpu, parsePrefillInt8 } from '../../../src/backends/webgpu/device.js';
import { selfTestShaderF16 } from '../../../src/backends/webgpu/self-test.js';
import { SKIP_GPU } from './gpu.js';

test('device features: reported, self-tested, and switched off by the options', { skip: SKIP_GPU }, async () => {
  const g = await Gpu.acquire({ subgroupMatrix: true });
  try {
    const f = g.features;
    console.log(`features: ${g.featureSummary}`);
    assert.deepEqual(f.dawnToggles, process.env.PDVM_DAWN_TOGGLES === '0' ? [] : ['allow_unsafe_apis', 'vulkan_enable_f16_on_nvidia']);
    assert.equal(g.subgroups, f.subgroups);
    // a fast path is on only after its self-test passed
    if (f.shaderF16) assert.equal(f.selfTests['shader-f16'], 'passed');
    if (f.subgroupMatrixF16) assert.equal(f.selfTests['subgroup-matrix f16'], 'passed');
    if (f.subgroupMatrixF16) assert.equal(f.selfTests[`prefill kernel (subgroup matrix, ${f.subgroupMatrixIndexing})`], 'passed');
    if (f.subgroupMatrixF16) assert.ok(f.shaderF16 && f.subgroupMatrixConfigs.some((c) => c.componentType === 'f16'));
    // the int8 products scaled by row are the default where offered and self-tested
    if (f.subgroupMatrixI8) assert.equal(f.selfTests[`prefill int8 ${f.int8Scaling} (${f.int8Syntax} majorness, offsets in ${f.int8Units})`], 'passed');
    if (process.env.PDVM_PREFILL_I8 === undefined) assert.equal(f.int8Scaling, 'row');
    assert.match(g.featureSummary, /subgroups (on|off), shader-f16 (on|off), dot4I8Packed (on|off), subgroup matrix f16 (on|off)/);
    if (f.shaderF16) assert.equal(await selfTestShaderF16(g.device), 'passed');
  } finally {
    g.destroy();
  }
  const plain = await Gpu.acquire({ dawnToggles: false, disableShaderF16: true, subgroupMatrix: false, disableSubgroups: true });
  try {
    const f = plain.features;
    assert.deepEqual(f.dawnToggles, []);
    assert.equal(f.shaderF16, false);
    assert.equal(f.subgroups, false);
    assert.equal(f.subgroupMatrixF16, false);
    assert.deepEqual(f.subgroupMatrixConfigs, []);
    assert.ok(!plain.device.features.has('shader-f16'), 'shader-f16 was not to be requested');
  } finally {
    plain.destroy();
  }
});

test('PDVM_PREFILL_I8: row by default, the other scalings and f16 by name, anything else an error naming the choices', () => {
  assert.equal(parsePrefillInt8(undefined), 'row');
  assert.equal(parsePrefillInt8('row'), 'row');
  assert.equal(parsePrefillInt8('row-q4'), 'row-q4');
  for (const v of ['1', 'group']) assert.equal(parsePrefillInt8(v), true);
  for (const v of ['0', 'f16', 'off']) assert.equal(parsePrefillInt8(v), false);
  assert.throws(() => parsePrefillInt8('rows'), /PDVM_PREFILL_I8='rows' is not one of row \(the default\), row-q4, group/);
});
