/**
 * The tensor-core prefill kernels' WGSL (kernels/matmul-tiled.ts, kernels/attention-tensor-core.ts)
 * where no device has subgroup matrices (lavapipe, CI): each layout and tile, each weight encoding,
 * bias and residual epilogues, each KV cache storage, head dims and windows, both ways of finding the
 * subgroup, with the subgroup-matrix builtins rewritten into scalar stand-ins of the same arguments,
 * must pass Tint's checks. Catches WGSL errors outside the builtins before a
 * device with tensor cores runs the kernel (there, matmul-tiled.test.ts compares it with the CPU).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { convertF16Wgsl, dequantF16Wgsl, matmulTensorCoreWgsl, paddedCols, TENSOR_CORE_TILES, tensorCoreTileName, tensorCoreTileSize, type TensorCoreTile, type TiledMatmulShape } from '../../../src/backends/webgpu/kernels/matmul-tiled.js';
import { f16ToF32, f32ToF16 } from '../../../src/format/dtype.js';
import { assertClose, rng } from '../../helpers.js';
import { attentionMergeWgsl, attentionSplitFor, attentionTensorCoreWgsl } from '../../../src/backends/webgpu/kernels/attention-tensor-core.js';
import type { KvStorage } from '../../../src/backends/webgpu/kernels/kv.js';
import { batchedTensorCoreWgsl } from '../../../src/backends/webgpu/kernels/batched-tensor-core.js';
import { INT8_TILES, int8TileFits, int8TileName, matmulInt8DirectWgsl, matmulInt8Wgsl, parseInt8Tile } from '../../../src/backends/webgpu/kernels/matmul-int8.js';
import { read, run, SKIP_GPU, stepBuffer, storage, testGpu, withScalarStandIns } from './gpu.js';
import { q4Matrix } from './q4-matrix.js';

const shapes: TiledMatmulShape[] = [
  { weight: { encoding: 'q4', wordsPerRow: 256, group: 64, groups: 32 }, rows: 3072, cols: 2048, yStride: 3072, yOffset: 0, bias: false, residual: false },
  { weight: { encoding: 'q4', wordsPerRow: 9, group: 8, groups: 9 }, rows: 130, cols: 72, yStride: 133, yOffset: 2, bias: true, residual: true },
  { weight: { encoding: 'q8', wordsPerRow: 18 }, rows: 130, cols: 72, yStride: 133, yOffset: 2, bias: false, residual: true },
  { weight: { encoding: 'dense', dtype: 'f32', rowChunks: 18 }, rows: 130, cols: 72, yStride: 133, yOffset: 2, bias: false, residual: true },
  { weight: { encoding: 'dense', dtype: 'bf16', rowChunks: 9 }, rows: 130, cols: 72, yStride: 133, yOffset: 2, bias: true, residual: false },
];
const tiles: TensorCoreTile[] = [
  ...TENSOR_CORE_TILES, { am: 4, an: 4, gm: 2, gn: 2, kind: 'hybrid', ks: 64 }, { am: 4, an: 4, gm: 2, gn: 2, kind: 'direct', ks: 32 },
  ...TENSOR_CORE_TILES.map((tile) => ({ ...tile, f16Dequant: false })), { am: 4, an: 4, gm: 2, gn: 4, kind: 'staged', ks: 32, f16Dequant: true },
  { am: 2, an: 4, gm: 4, gn: 2, kind: 'staged', ks: 64, f16Dequant: true },
];

test('the tensor-core prefill kernel\'s WGSL passes Tint\'s checks outside the subgroup-matrix builtins', { skip: SKIP_GPU }, async () => {
  const gpu = await testGpu();
  const failures: string[] = [];
  const check = async (what: string, code: string) => {
    const info = await gpu.device.createShaderModule({ code }).getCompilationInfo();
    const errors = info.messages.filter((m) => m.type === 'error');
    if (errors.length) failures.push(`${what}: ${errors.map((e) => `line ${e.lineNum}: ${e.message}`).join('; ')}`);
  };
  let n = 0;
  for (const s of shapes) {
    await check(`convert_f16 ${s.cols}`, convertF16Wgsl(s.cols));
    await check(`dequant_f16 ${s.weight.encoding}`, dequantF16Wgsl(s.weight, s.rows, s.cols, Math.ceil(s.rows / 128) * 128));
    for (const tile of tiles) {
      for (const indexing of ['subgroup-id', 'invocation-index'] as const) {
        await check(`${s.weight.encoding} ${tensorCoreTileName(tile)} ${indexing}`, withScalarStandIns(matmulTensorCoreWgsl(s, 32, indexing, tile)));
        n++;
      }
    }
  }
  const attentions: [number, number, number, number | null, KvStorage][] = [[32, 8, 64, null, 'f16'], [40, 10, 128, null, 'f16-packed'], [6, 6, 96, 21, 'f32'], [4, 1, 64, 100, 'f16']];
  if (gpu.subgroups) {
    for (const [numHeads, numKvHeads, headDim, slidingWindow, storage] of attentions) {
      for (const indexing of ['subgroup-id', 'invocation-index'] as const) {
        const s = { numHeads, numKvHeads, headDim, slidingWindow, rotaryDim: headDim };
        const kv = { storage, contextLength: 4096, rowsAt: 520, kvBuffer: -1 };
        const split = attentionSplitFor(s, kv.contextLength, 512, 2 ** 31);
        assert.ok(split && split.splits > 1);
        for (const passes of [1, 2] as const) {
          await check(`attention ${passes} pass(es) ${numHeads}/${numKvHeads}x${headDim} window ${slidingWindow} ${storage} ${indexing}`, withScalarStandIns(attentionTensorCoreWgsl(s, kv, 32, indexing, 'template', null, { passes })));
          await check(`attention ${passes} pass(es) split ${JSON.stringify(split)} ${numHeads}/${numKvHeads}x${headDim} window ${slidingWindow} ${storage} ${indexing}`, withScalarStandIns(attentionTensorCoreWgsl(s, kv, 32, indexing, 'template', split, { passes })));
          n += 2;
        }
        if (headDim % 32 === 0) {
          await check(`attention one pass, two K/V buffers, 128 rows, split ${numHeads}/${numKvHeads}x${headDim} window ${slidingWindow} ${storage} ${indexing}`, withScalarStandIns(attentionTensorCoreWgsl(s, kv, 32, indexing, 'template', split, { passes: 1, kvBuffers: 2, rows: 128 })));
          n += 1;
        }
        if (indexing === 'subgroup-id') await check(`attention merge ${numHeads}/${numKvHeads}x${headDim} window ${slidingWindow}`, attentionMergeWgsl(s, kv, split));
        n += indexing === 'subgroup-id' ? 1 : 0;
      }
    }
  }
  console.log(`${n} kernels checked, ${failures.length} failed`);
  assert.deepEqual(failures, []);
});

/**
 * Every subgroup-matrix load and store that reaches workgroup memory does so at a constant offset and
 * stride (through a block of the array: `&ws[b]`, or a pointer made once). Tint's robustness transform
 * clamps any other such call by a select on its offset and stride before it, in the hot loop, and the
 * driver then sees a runtime stride: with the clamps (Dawn's default) the f16 prefill ran 1.6x slower
 * than without on the H100 (docs/PERFORMANCE.md). Storage-buffer operands are left out unless
 * `storage` is set (the batched product reads x from whole 16 x 16 tiles of a storage buffer, at
 * offset 0 and stride 16, and the direct int8 kernel in its 'tiles' layout both operands; the direct
 * kernels in rows read at computed offsets).
 */
function workgroupMatrixCalls(code: string, storage = false): { call: string; constant: boolean }[] {
  const arrays = new Set([...code.matchAll(/var<workgroup> (\w+):/g)].map((m) => m[1]!));
  const pointers = new Map([...code.matchAll(/let (\w+) = &(\w+)\[/g)].map((m) => [m[1]!, m[2]!] as const));
  const out: { call: string; constant: boolean }[] = [];
  for (const m of code.matchAll(/subgroupMatrix(Load|Store)<[^(]*>\(/g)) {
    // the call's arguments, split at top-level commas
    let depth = 0, i = m.index! + m[0].length, arg = '';
    const args: string[] = [];
    for (; i < code.length; i++) {
      const c = code[i]!;
      if (c === '(' || c === '[') depth++;
      if ((c === ')' || c === ']') && depth-- === 0) break;
      if (c === ',' && depth === 0) { args.push(arg.trim()); arg = ''; } else arg += c;
    }
    args.push(arg.trim());
    const root = /^&?(\w+)/.exec(args[0]!)![1]!;
    if (!storage && !arrays.has(pointers.get(root) ?? root)) continue; // a storage buffer
    const constant = /^\d+u$/.test(args[1]!) && /^\d+u$/.test(args[args.length - 1]!);
    out.push({ call: code.slice(m.index!, i + 1), constant });
  }
  return out;
}

test('every subgroup-matrix load and store from workgroup memory has a constant offset and stride (no robustness clamp in the hot loops)', () => {
  const q4 = shapes[0]!;
  const kernels: [string, string][] = [];
  for (const tile of tiles.filter((t) => t.kind !== 'direct')) kernels.push([`matmul ${tensorCoreTileName(tile)}`, matmulTensorCoreWgsl(q4, 32, 'subgroup-id', tile)]);
  kernels.push(['matmul partial tiles and bias', matmulTensorCoreWgsl(shapes[1]!, 32, 'invocation-index', TENSOR_CORE_TILES[1]!)]);
  const s = { numHeads: 32, numKvHeads: 8, headDim: 128, slidingWindow: null, rotaryDim: 128 };
  const kv = { storage: 'f16' as const, contextLength: 4096, rowsAt: 520, kvBuffer: -1 };
  for (const passes of [1, 2] as const) {
    kernels.push([`attention, ${passes} pass(es)`, attentionTensorCoreWgsl(s, kv, 32, 'subgroup-id', 'template', null, { passes })]);
    kernels.push([`attention split, ${passes} pass(es)`, attentionTensorCoreWgsl(s, kv, 32, 'subgroup-id', 'template', attentionSplitFor(s, kv.contextLength, 512, 2 ** 31), { passes })]);
  }
  kernels.push(['attention, one pass, K and V in two buffers', attentionTensorCoreWgsl(s, kv, 32, 'subgroup-id', 'template', attentionSplitFor(s, kv.contextLength, 512, 2 ** 31), { passes: 1, kvBuffers: 2 })]);
  kernels.push(['attention, one pass, K and V in two buffers, 128 rows', attentionTensorCoreWgsl(s, kv, 32, 'subgroup-id', 'template', attentionSplitFor(s, kv.contextLength, 512, 2 ** 31), { passes: 1, kvBuffers: 2, rows: 128 })]);
  for (const [ks, nsg, depth] of [[64, 8, 1], [128, 4, 2], [256, 2, 1]] as const) {
    kernels.push([`batched ${ks}/${nsg}/${depth}`, batchedTensorCoreWgsl({ rows: 4096, cols: 14336, units: 448, group: 64, yStride: 4096, yOffset: 0, bias: true, residual: true, ks, nsg, depth }, 32, 'subgroup-id', 'template')]);
  }
  const int8Shape = { weight: { encoding: 'q4' as const, wordsPerRow: 512, group: 64, groups: 64 }, rows: 14336, cols: 4096, yStride: 14340, yOffset: 2, bias: true, residual: true };
  for (const tile of [...INT8_TILES, parseInt8Tile('2422s')!]) {
    for (const scaling of ['group', 'row', 'row-q4'] as const) {
      if ((scaling !== 'group' && tile.epilogue === 'stage') || (tile.double && scaling === 'group') || !int8TileFits(tile, scaling)) continue;
      for (const units of ['words', 'bytes'] as const) kernels.push([`int8 ${int8TileName(tile)} ${scaling} ${units}`, matmulInt8Wgsl(int8Shape, 'subgroup-id', tile, 'template', units, undefined, scaling)]);
    }
  }
  kernels.push(['int8 direct', matmulInt8DirectWgsl({ ...int8Shape, rows: 4096 }, 'template', 'words', 2)]);
  kernels.push(['int8 direct tiles', matmulInt8DirectWgsl({ ...int8Shape, rows: 4096 }, 'template', 'words', 2, 'subgroup-id', 'tiles')]);
  const clamped: string[] = [];
  let calls = 0;
  for (const [name, code] of kernels) {
    const found = workgroupMatrixCalls(code);
    assert.ok(found.length > 0, `${name}: no subgroup-matrix call into workgroup memory found (the parser missed them)`);
    calls += found.length;
    for (const f of found) if (!f.constant) clamped.push(`${name}: ${f.call}`);
  }
  console.log(`${kernels.length} kernels, ${calls} subgroup-matrix calls into workgroup memory, ${clamped.length} with a computed offset or stride`);
  assert.deepEqual(clamped, []);
  // the batched product's x loads from the storage buffer too, and the direct int8 kernel's in tiles
  for (const [name, code] of kernels.filter(([n]) => n.startsWith('batched') || n === 'int8 direct tiles')) {
    const all = workgroupMatrixCalls(code, true);
    assert.ok(all.length > workgroupMatrixCalls(code).length, `${name}: no load from a storage buffer found`);
    assert.deepEqual(all.filter((f) => !f.constant).map((f) => f.call), [], `${name}: storage loads at a computed offset or stride`);
  }
  // the parser does flag a computed offset
  assert.equal(workgroupMatrixCalls('var<workgroup> ws: array<f16, 64>;\nlet a = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&ws, g * 16u, 16u);')[0]?.constant, false);
});

/**
 * The staged tensor-core kernel with each subgroup matrix emulated by lane 0 of its subgroup (16 x 16
 * f32 arrays: f16 operands read from the kernel's own workgroup blocks through the pointers it passes,
 * results loaded from and stored to y or its partial-tile blocks element by element; the other lanes
 * do nothing): runs on lavapipe with the kernel's own staging and addressing.
 */
function withEmulatedF16Matrices(code: string): string {
  const n = /var<workgroup> ws: array<array<f16, (\d+)>/.exec(code)![1];
  const helpers = `
alias Mat = array<f32, 256>;
var<private> emu_active: bool;
fn sm_ld_h(col: bool, p: ptr<workgroup, array<f16, ${n}>>, off: u32, stride: u32) -> Mat {
  var m: Mat; if (!emu_active) { return m; }
  for (var i = 0u; i < 16u; i++) { for (var j = 0u; j < 16u; j++) { m[i * 16u + j] = f32(select((*p)[off + i * stride + j], (*p)[off + j * stride + i], col)); } }
  return m;
}
fn sm_ld_y(off: u32, stride: u32) -> Mat { var m: Mat; if (!emu_active) { return m; } for (var i = 0u; i < 16u; i++) { for (var j = 0u; j < 16u; j++) { m[i * 16u + j] = y[off + i * stride + j]; } } return m; }
fn sm_mma(l: Mat, r: Mat, a: Mat) -> Mat {
  var o = a; if (!emu_active) { return o; }
  for (var i = 0u; i < 16u; i++) { for (var j = 0u; j < 16u; j++) { var s = o[i * 16u + j]; for (var k = 0u; k < 16u; k++) { s += l[i * 16u + k] * r[k * 16u + j]; } o[i * 16u + j] = s; } }
  return o;
}
fn sm_st_y(off: u32, v: Mat, stride: u32) { if (!emu_active) { return; } for (var i = 0u; i < 16u; i++) { for (var j = 0u; j < 16u; j++) { y[off + i * stride + j] = v[i * 16u + j]; } } }
fn sm_st_cs(p: ptr<workgroup, array<f32, 256>>, off: u32, v: Mat, stride: u32) { if (!emu_active) { return; } for (var i = 0u; i < 16u; i++) { for (var j = 0u; j < 16u; j++) { (*p)[off + i * stride + j] = v[i * 16u + j]; } } }
`;
  return code
    .replace('enable chromium_experimental_subgroup_matrix;\n', '')
    .replace(/\n@compute/, `${helpers}\n@compute`)
    .replace(/(let lane = lid % 32u;)/, '$1\n  emu_active = lane == 0u;')
    .replace(/subgroup_matrix_result<f32, 16, 16>\(\)/g, 'Mat()')
    .replace(/subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>\(/g, 'sm_ld_h(false, ')
    .replace(/subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>\(/g, 'sm_ld_h(true, ')
    .replace(/subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>\(&y, /g, 'sm_ld_y(')
    .replace(/subgroupMatrixMultiplyAccumulate\(/g, 'sm_mma(')
    .replace(/subgroupMatrixStore<row_major>\(&y, /g, 'sm_st_y(')
    .replace(/subgroupMatrixStore<row_major>\(&cs/g, 'sm_st_cs(&cs');
}

test('the staged tensor-core product with emulated subgroup matrices equals the CPU (q4 staging in f16, workgroup blocks, whole and partial tiles, bias, residual)', { skip: SKIP_GPU }, async () => {
  const gpu = await testGpu();
  // a tile of one 16 x 16 result a subgroup (2 x 2 subgroups, blocks of 16 rows reached as the default
  // tiles reach theirs): lavapipe compiles the emulation of the default tiles' 8-16 products a k step too
  // slowly for CI; the device runs those (matmul-tiled.test)
  const tile: TensorCoreTile = { am: 1, an: 1, gm: 2, gn: 2, kind: 'staged', ks: 64, f16Dequant: true };
  const r = rng(17), cols = 128, KP = paddedCols(cols);
  for (const [T, rows, bias] of [[21, 40, true], [64, 64, false]] as const) {
    const yStride = rows + 3, yOffset = 2, m = q4Matrix(rows, cols, rows);
    // x as the product reads it: f16 rows of KP columns (zeros past cols)
    const x16 = new Uint16Array(T * KP), xs = new Float64Array(T * cols);
    for (let t = 0; t < T; t++) for (let c = 0; c < cols; c++) { x16[t * KP + c] = f32ToF16((r() - 0.5) * 4); xs[t * cols + c] = f16ToF32(x16[t * KP + c]!); }
    const biasValues = Float32Array.from({ length: yStride }, () => r() - 0.5), y0 = Float32Array.from({ length: T * yStride }, () => r());
    const want = Float64Array.from(y0);
    for (let t = 0; t < T; t++) for (let i = 0; i < rows; i++) {
      let acc = 0;
      for (let c = 0; c < cols; c++) {
        const g = i * m.groups + (c >> 6);
        acc += (m.nibble(i, c) * m.scale[g]! + m.min[g]!) * xs[t * cols + c]!;
      }
      want[t * yStride + yOffset + i] += acc + (bias ? biasValues[yOffset + i]! : 0);
    }
    const shape: TiledMatmulShape = { weight: { encoding: 'q4', wordsPerRow: m.wordsPerRow, group: 64, groups: m.groups }, rows, cols, yStride, yOffset, bias, residual: true };
    const code = withEmulatedF16Matrices(matmulTensorCoreWgsl(shape, 32, 'invocation-index', tile));
    const module = gpu.device.createShaderModule({ code });
    const errors = (await module.getCompilationInfo()).messages.filter((e) => e.type === 'error');
    assert.deepEqual(errors.map((e) => `line ${e.lineNum}: ${e.message}`), [], `${tensorCoreTileName(tile)} compiles`);
    const pipeline = gpu.device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
    const y = storage(gpu, y0), size = tensorCoreTileSize(tile);
    const buffers = [storage(gpu, m.words), storage(gpu, m.sm), storage(gpu, new Uint32Array(x16.buffer)), y, stepBuffer(gpu, T, 0), ...(bias ? [storage(gpu, biasValues)] : [])];
    await run(gpu, [{ label: 'emulated tensor cores', pipeline, bindGroup: gpu.bindGroup('emulated', pipeline, buffers), workgroups: (n: number) => [Math.ceil(n / size.tokens), Math.ceil(rows / size.rows), 1] }], T);
    // q4 values made in f16 arithmetic (scale x q + min, rounded once to f16): 1e-3 of the f64 product
    assertClose(await read(gpu, y, T * yStride), want, 2e-3, `${tensorCoreTileName(tile)}, ${T} tokens x ${rows} rows${bias ? ', bias' : ''}`);
  }
});
