/**
 * The tensor-core prompt attention (kernels/attention-tensor-core.ts) run where no device has subgroup
 * matrices (lavapipe, CI): every subgroup-matrix load, product and store rewritten into arithmetic that
 * each invocation does on its own whole 16 x 16 copy (the same values on every lane of a subgroup), so
 * the kernel's addressing, masks, online softmax, lazy rescaling and output scaling run with its own
 * barriers and workgroup memory. Compared with an f64 reference by the device self-test's own check
 * (self-test.ts: 70 rows over 80 keys, 2 heads on 1 KV head, causal, keys growing so that rows' maxes
 * keep moving; 1e-2 of the largest output, q, k, v and P being f16). Checked to fail with the rescale
 * of O left out, or its factor halved. On a device with subgroup matrices, device.ts runs the same check on the
 * real kernel and kernels.test.ts compares it with the reference attention.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { selfTestPromptAttention } from '../../../src/backends/webgpu/self-test.js';
import { attentionRowsFit, attentionSplitFor, attentionTensorCoreBytes, attentionTensorCoreWgsl, parseAttentionKvBuffers, parseAttentionPasses, parseAttentionRows, parseAttentionSplits, type AttentionTensorCoreOptions } from '../../../src/backends/webgpu/kernels/attention-tensor-core.js';
import type { KvStorage } from '../../../src/backends/webgpu/kernels/kv.js';
import { SKIP_GPU, testGpu } from './gpu.js';

/** The kernel with each subgroup matrix an array<f32, 256> of every invocation (row-major). */
export function withEmulatedMatrices(code: string): string {
  // the workgroup arrays the kernel's matrices are loaded from and stored to, by the pointee type
  const pointee = new Map<string, string>();
  for (const m of code.matchAll(/var<workgroup> (\w+): array<array<(f16|f32), (\d+)>, \d+>;/g)) pointee.set(m[1]!, `array<${m[2]}, ${m[3]}>`);
  for (const m of code.matchAll(/var<workgroup> (\w+): array<(f16|f32), (\d+)>;/g)) pointee.set(m[1]!, `array<${m[2]}, ${m[3]}>`);
  const helpers: string[] = [
    'alias Mat = array<f32, 256>;',
    `fn em_mma(l: Mat, r: Mat, a: Mat) -> Mat {
  var o = a;
  for (var i = 0u; i < 16u; i++) { for (var n = 0u; n < 16u; n++) { var s = o[i * 16u + n]; for (var k = 0u; k < 16u; k++) { s += l[i * 16u + k] * r[k * 16u + n]; } o[i * 16u + n] = s; } }
  return o;
}`,
  ];
  const made = new Set<string>();
  const loadFn = (name: string, major: string): string => {
    const fn = `em_load_${name}_${major}`;
    if (!made.has(fn)) {
      made.add(fn);
      const at = major === 'row' ? 'off + r * stride + c' : 'off + c * stride + r';
      helpers.push(`fn ${fn}(p: ptr<workgroup, ${pointee.get(name)}>, off: u32, stride: u32) -> Mat { var m: Mat; for (var r = 0u; r < 16u; r++) { for (var c = 0u; c < 16u; c++) { m[r * 16u + c] = f32((*p)[${at}]); } } return m; }`);
    }
    return fn;
  };
  const storeFn = (name: string): string => {
    const fn = `em_store_${name}`;
    if (!made.has(fn)) {
      made.add(fn);
      const element = pointee.get(name)!.slice(6, 9);
      helpers.push(`fn ${fn}(p: ptr<workgroup, ${pointee.get(name)}>, off: u32, v: Mat, stride: u32) { for (var r = 0u; r < 16u; r++) { for (var c = 0u; c < 16u; c++) { (*p)[off + r * stride + c] = ${element}(v[r * 16u + c]); } } }`);
    }
    return fn;
  };
  const body = code
    .replace('enable chromium_experimental_subgroup_matrix;\n', '')
    .replace(/subgroup_matrix_result<f32, 16, 16>\(\)/g, 'Mat()')
    .replace(/subgroupMatrixLoad<subgroup_matrix_\w+<f(?:16|32), 16, 16>, (row|col)_major>\(&(\w+)/g, (_, major: string, name: string) => {
      if (!pointee.has(name)) throw new Error(`emulation: a load from ${name}, not workgroup memory`);
      return `${loadFn(name, major)}(&${name}`;
    })
    .replace(/subgroupMatrixStore<row_major>\(&(\w+)/g, (_, name: string) => {
      if (!pointee.has(name)) throw new Error(`emulation: a store to ${name}, not workgroup memory`);
      return `${storeFn(name)}(&${name}`;
    })
    .replace(/subgroupMatrixMultiplyAccumulate\(/g, 'em_mma(');
  if (/subgroupMatrix|subgroup_matrix/.test(body)) throw new Error('emulation: a subgroup-matrix call left over');
  return body.replace(/\n@compute/, `\n${helpers.join('\n')}\n@compute`);
}

test('the tensor-core prompt attention with emulated subgroup matrices matches the reference: one pass, lazy and eager rescaling, whole and split over keys', { skip: SKIP_GPU }, async (t) => {
  const gpu = await testGpu();
  if (!gpu.device.features.has('shader-f16') || !gpu.subgroups) {
    t.skip('needs shader-f16 and subgroups (lavapipe has both)');
    return;
  }
  // (the two-pass kernel stores O straight to the output buffer, which this emulation leaves out)
  const variants: [string, AttentionTensorCoreOptions, boolean, KvStorage][] = [
    ['one pass, rescaled past 8', { passes: 1 }, false, 'f32'],
    ['one pass, rescaled whenever a max grows', { passes: 1, rescaleAbove: 0 }, false, 'f32'],
    ['one pass, rescaled past 8, split over keys', { passes: 1 }, true, 'f32'],
    ['one pass, rescaled whenever a max grows, split over keys', { passes: 1, rescaleAbove: 0 }, true, 'f32'],
    ['one pass, f16 cache', { passes: 1 }, false, 'f16'],
    ['one pass, packed f16 cache, split over keys', { passes: 1 }, true, 'f16-packed'],
    ['one pass, K and V in two buffers, rescaled whenever a max grows, f16 cache, split over keys', { passes: 1, kvBuffers: 2, rescaleAbove: 0 }, true, 'f16'],
    // (128 rows a workgroup are not here: at the self-test's HD 96 they need 42 KiB of workgroup memory,
    // past lavapipe's 32; the device's self-test and kernels.test run them where 48 KiB are granted)
  ];
  const failures: string[] = [];
  for (const [name, variant, split, cache] of variants) {
    const r = await selfTestPromptAttention(gpu.device, 32, 'invocation-index', 'template', split, variant, withEmulatedMatrices, undefined, cache);
    console.log(`${name}: ${r}`);
    if (r !== 'passed') failures.push(`${name}: ${r}`);
  }
  assert.deepEqual(failures, []);
});

test('PDVM_ATTENTION_PASSES: one by default (self-tested on the H100), two by name, anything else an error naming the choices', () => {
  assert.equal(parseAttentionPasses(undefined), 1);
  assert.equal(parseAttentionPasses(''), 1);
  assert.equal(parseAttentionPasses('2'), 2);
  assert.equal(parseAttentionPasses('1'), 1);
  assert.throws(() => parseAttentionPasses('one'), /PDVM_ATTENTION_PASSES must be 1 or 2, not 'one'/);
});

test('PDVM_ATTENTION_KV_BUFFERS: one by default, two by name, anything else an error naming the choices', () => {
  assert.equal(parseAttentionKvBuffers(undefined), 1);
  assert.equal(parseAttentionKvBuffers(''), 1);
  assert.equal(parseAttentionKvBuffers('1'), 1);
  assert.equal(parseAttentionKvBuffers('2'), 2);
  assert.throws(() => parseAttentionKvBuffers('two'), /PDVM_ATTENTION_KV_BUFFERS must be 1 or 2, not 'two'/);
});

test('PDVM_ATTENTION_ROWS: 128 by default (measured on the H100), 64 by name, anything else an error naming the choices', () => {
  assert.equal(parseAttentionRows(undefined), 128);
  assert.equal(parseAttentionRows(''), 128);
  assert.equal(parseAttentionRows('64'), 64);
  assert.equal(parseAttentionRows('128'), 128);
  assert.throws(() => parseAttentionRows('256'), /PDVM_ATTENTION_ROWS must be 64 or 128, not '256'/);
});

test('PDVM_ATTENTION_SPLITS: 8 by default, a whole number from 2 to 256 by name, that many splits of whole key tiles asked of attentionSplitFor', () => {
  assert.equal(parseAttentionSplits(undefined), 8);
  assert.equal(parseAttentionSplits(''), 8);
  assert.equal(parseAttentionSplits('8'), 8);
  for (const bad of ['1', '300', '8.5', 'eight']) assert.throws(() => parseAttentionSplits(bad), new RegExp(`PDVM_ATTENTION_SPLITS must be a whole number from 2 to 256, not '${bad}'`));
  const s = { numHeads: 40, numKvHeads: 10, headDim: 128, slidingWindow: null, rotaryDim: 128 };
  for (const [target, want] of [[16, { keys: 1056, splits: 16 }], [8, { keys: 2080, splits: 8 }], [32, { keys: 544, splits: 31 }]] as const) {
    const got = attentionSplitFor(s, 16385, 512, 2 ** 31, target);
    assert.deepEqual(got, want, `target ${target}`);
    assert.equal(got!.keys % 32, 0);
    assert.ok(got!.keys * got!.splits >= 16385 && (got!.splits - 1) * got!.keys < 16385);
  }
});

test('workgroup memory: what attentionTensorCoreBytes counts is what each variant declares; the two-buffer one has no Q or shared K/V buffer and needs less', () => {
  const sizes: Record<string, number> = { f16: 2, f32: 4, u32: 4, 'vec4<u32>': 16 };
  // bytes of the kernel's var<workgroup> declarations: array<T, N> or array<array<T, N>, M>
  const declared = (code: string) => [...code.matchAll(/var<workgroup> \w+: array<(?:array<([\w<>0-9]+), (\d+)>, (\d+)|([\w<>0-9]+), (\d+))>;/g)]
    .reduce((sum, m) => sum + (m[1] ? sizes[m[1]]! * Number(m[2]) * Number(m[3]) : sizes[m[4]!]! * Number(m[5])), 0);
  const s = { numHeads: 40, numKvHeads: 10, headDim: 128, slidingWindow: null, rotaryDim: 128 };
  const kv = { storage: 'f16' as const, contextLength: 4096, rowsAt: 520, kvBuffer: -1 };
  for (const [passes, kvBuffers, rows] of [[2, 1, 64], [1, 1, 64], [1, 2, 64], [1, 2, 128]] as const) {
    const code = attentionTensorCoreWgsl(s, kv, 32, 'subgroup-id', 'template', null, { passes, kvBuffers, rows });
    assert.equal(declared(code), attentionTensorCoreBytes(s, passes, kvBuffers, rows), `passes ${passes}, kvBuffers ${kvBuffers}, rows ${rows}`);
  }
  // 128 rows fit the H100's and H200's 48 KiB at HD 128, and only with two K/V buffers and HD a multiple of 32
  assert.ok(attentionTensorCoreBytes(s, 1, 2, 128) <= 48 * 1024, `${attentionTensorCoreBytes(s, 1, 2, 128)} bytes`);
  assert.equal(attentionRowsFit(s, { passes: 1, kvBuffers: 1, rows: 128 }), false);
  assert.equal(attentionRowsFit({ ...s, headDim: 80 }, { passes: 1, kvBuffers: 2, rows: 128 }), false);
  assert.equal(attentionRowsFit({ ...s, headDim: 64 }, { passes: 1, kvBuffers: 2, rows: 128 }), true);
  assert.throws(() => attentionTensorCoreWgsl(s, kv, 32, 'subgroup-id', 'template', null, { passes: 2, rows: 128 }), /128 rows a workgroup need one pass/);
  const two = attentionTensorCoreWgsl(s, kv, 32, 'subgroup-id', 'template', null, { passes: 1, kvBuffers: 2 });
  assert.match(two, /var<workgroup> kv2: /);
  assert.doesNotMatch(two, /var<workgroup> (qs|kvs): /);
  assert.ok(attentionTensorCoreBytes(s, 1, 2) < attentionTensorCoreBytes(s, 1, 1));
});
