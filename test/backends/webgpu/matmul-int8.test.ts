/**
 * The q4 prefill product on the int8 tensor cores (kernels/matmul-int8.ts):
 *  - quantize_blocks against the CPU (int8 values, block scales and sums), on any device;
 *  - the product with its subgroup matrices emulated by every invocation (i8 loads from the i32
 *    workgroup arrays in either way of counting offsets, i32 products, stores), against the CPU doing
 *    the kernel's arithmetic: its addressing, column permutation, per-group scaling and epilogue
 *    (bias, residual, partial tiles) on lavapipe;
 *  - scaling 'row': q4_to_int8_rows and quantize_tokens against the CPU, and the product (emulated
 *    as above) against the CPU doing its arithmetic (one i32 sum a row and token, scaled once);
 *  - scaling 'row-q4': the same, the product rounding the q4 words as it stages them from the rows'
 *    (scale, 127 / max) that q4_to_int8_rows makes alone;
 *  - where the device has self-tested the path (PDVM_PREFILL_I8 asked; the H200): the real kernel
 *    through matmulOp against the same CPU arithmetic (tight) and against the f32 product (the
 *    documented tolerance of x rounded to int8).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { INT8_FEW_TILE, INT8_TILES, matmulInt8DirectWgsl, int8InputBytes, int8SplitCombineWgsl, int8TileName, int8TileFits, int8TilesFor, int8WorkgroupBytes, parseInt8Tile, int8TileSize, matmulInt8Wgsl, q4ToInt8RowsGrid, q4ToInt8RowsWgsl, quantizeBlocksGrid, quantizeBlocksWgsl, quantizeTokensGrid, quantizeTokensWgsl, type Int8Split, type Int8Tile, type Int8Units } from '../../../src/backends/webgpu/kernels/matmul-int8.js';
import { matmulOp } from '../../../src/backends/webgpu/ops.js';
import type { GpuMatrix } from '../../../src/backends/webgpu/weights.js';
import type { Gpu } from '../../../src/backends/webgpu/device.js';
import { f16ToF32, f32ToF16 } from '../../../src/format/dtype.js';
import { assertClose, compare, rng } from '../../helpers.js';
import { f32Literal } from '../../../src/backends/webgpu/kernels/prelude.js';
import { read, readU32, run, SKIP_GPU, stepBuffer, storage, testGpu, zeros } from './gpu.js';
import { q4Matrix } from './q4-matrix.js';

/** The kernel's arithmetic on the CPU: x per (token, block) to int8 (round half away from zero), sums exact. */
function quantizeCpu(x: Float32Array, T: number, cols: number) {
  const q = new Int8Array(T * cols), s = new Float64Array((T * cols) / 64), sum = new Float64Array((T * cols) / 64);
  for (let b = 0; b < (T * cols) / 64; b++) {
    let amax = 0, acc = 0;
    for (let c = 0; c < 64; c++) {
      amax = Math.max(amax, Math.abs(x[b * 64 + c]!));
      acc += x[b * 64 + c]!;
    }
    const inv = amax > 0 ? Math.fround(127 / amax) : 0;
    for (let c = 0; c < 64; c++) {
      const v = Math.fround(x[b * 64 + c]! * inv);
      q[b * 64 + c] = roundEven(v);
    }
    s[b] = Math.fround(amax / 127);
    sum[b] = acc;
  }
  return { q, s, sum };
}

function productCpu(m: ReturnType<typeof q4Matrix>, x: Float32Array, T: number, rows: number, cols: number, quantized: boolean): Float64Array {
  const xq = quantizeCpu(x, T, cols), y = new Float64Array(T * rows);
  for (let t = 0; t < T; t++) for (let r = 0; r < rows; r++) {
    let acc = 0;
    for (let g = 0; g < m.groups; g++) {
      const b = t * m.groups + g, sc = m.scale[r * m.groups + g]!, mn = m.min[r * m.groups + g]!;
      if (quantized) {
        let i = 0;
        for (let c = g * 64; c < g * 64 + 64; c++) i += m.nibble(r, c) * xq.q[t * cols + c]!;
        acc += i * sc * xq.s[b]! + mn * xq.sum[b]!;
      } else {
        for (let c = g * 64; c < g * 64 + 64; c++) acc += (m.nibble(r, c) * sc + mn) * x[t * cols + c]!;
      }
    }
    y[t * rows + r] = acc;
  }
  return y;
}

/**
 * Round half to even, as WGSL's round() does (the device's products agree with these references to
 * 1e-5 only if a tie rounds the same way: half away from zero put a value of the 512 x 1024 x 4096
 * 'group' case 1 apart on the H100, 1.5e-5).
 */
function roundEven(v: number): number {
  const f = Math.floor(v), d = v - f;
  return d > 0.5 ? f + 1 : d < 0.5 ? f : f % 2 === 0 ? f : f + 1;
}

/** Scaling 'row' on the CPU: values (n per row) to int8 with one scale a row: the integers and the scales. */
function int8PerRow(values: Float32Array | Float64Array, n: number) {
  const rowsOf = values.length / n, q = new Int8Array(values.length), s = new Float64Array(rowsOf);
  for (let r = 0; r < rowsOf; r++) {
    let amax = 0;
    for (let c = 0; c < n; c++) amax = Math.max(amax, Math.abs(values[r * n + c]!));
    const inv = amax > 0 ? Math.fround(127 / amax) : 0;
    for (let c = 0; c < n; c++) q[r * n + c] = roundEven(Math.fround(values[r * n + c]! * inv));
    s[r] = Math.fround(amax / 127);
  }
  return { q, s };
}

/** The q4 matrix decoded as the kernels decode it (u scale + min in f32). */
function decodedQ4(m: ReturnType<typeof q4Matrix>, rows: number, cols: number): Float32Array {
  const w = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) w[r * cols + c] = Math.fround(Math.fround(m.nibble(r, c) * m.scale[r * m.groups + (c >> 6)]!) + m.min[r * m.groups + (c >> 6)]!);
  return w;
}

/** The 'row' product on the CPU: S_r s_t sum w8 xq. */
function productRowsCpu(m: ReturnType<typeof q4Matrix>, x: Float32Array, T: number, rows: number, cols: number): Float64Array {
  const w = int8PerRow(decodedQ4(m, rows, cols), cols), xq = int8PerRow(x, cols), y = new Float64Array(T * rows);
  for (let t = 0; t < T; t++) for (let r = 0; r < rows; r++) {
    let acc = 0;
    for (let c = 0; c < cols; c++) acc += w.q[r * cols + c]! * xq.q[t * cols + c]!;
    y[t * rows + r] = acc * Math.fround(xq.s[t]! * w.s[r]!);
  }
  return y;
}

/** Largest difference between the int8 values in `words` (4 a word) and `want`. */
function worstByte(words: Uint32Array, want: Int8Array): number {
  let worst = 0;
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(((words[i >> 2]! << (24 - 8 * (i & 3))) >> 24) - want[i]!));
  return worst;
}

/**
 * The 'row' product from int8 bytes made on the device (quantize_tokens and q4_to_int8_rows run alone
 * on the same inputs, read back): S_r s_t sum w8 xq on the CPU. The device divides 127 / max to within
 * a few ULP (WGSL's precision), so a value at a rounding boundary may land one step from the CPU's
 * own rounding (1% outliers at 20 times the rest made one such step 1.4e-1 of an output of 11.7 on the
 * H100, 2.0e-4 relative): this reference takes the device's bytes, so only the product's arithmetic is
 * compared.
 */
async function productRowsFromDevice(gpu: Gpu, m: ReturnType<typeof q4Matrix>, x: Float32Array, T: number, rows: number, cols: number): Promise<Float64Array> {
  const xq = zeros(gpu, (T * cols) / 4), xs = zeros(gpu, 2 * T), w8 = zeros(gpu, (rows * cols) / 4), ws = zeros(gpu, rows);
  const qt = gpu.pipeline('quantize_tokens', { cols }, () => quantizeTokensWgsl(cols));
  const conv = gpu.pipeline('q4_to_int8_rows', { rows, cols, scalesOnly: false }, () => q4ToInt8RowsWgsl(rows, cols));
  await run(gpu, [
    { label: 'quantize_tokens', pipeline: qt, bindGroup: gpu.bindGroup('qt', qt, [storage(gpu, x), xq, xs, stepBuffer(gpu, T, 0)]), workgroups: (n: number) => quantizeTokensGrid(n) },
    { label: 'q4_to_int8_rows', pipeline: conv, bindGroup: gpu.bindGroup('c', conv, [storage(gpu, m.words), storage(gpu, m.sm), w8, ws]), workgroups: () => q4ToInt8RowsGrid(rows) },
  ], T);
  const byte = (words: Uint32Array, i: number) => (words[i >> 2]! << (24 - 8 * (i & 3))) >> 24;
  const xw = await readU32(gpu, xq, (T * cols) / 4), xsc = await read(gpu, xs, 2 * T), ww = await readU32(gpu, w8, (rows * cols) / 4), wsc = await read(gpu, ws, rows);
  const y = new Float64Array(T * rows);
  for (let t = 0; t < T; t++) for (let r = 0; r < rows; r++) {
    let acc = 0;
    for (let c = 0; c < cols; c++) acc += byte(ww, r * cols + c) * byte(xw, t * cols + c);
    y[t * rows + r] = acc * Math.fround(xsc[2 * t]! * wsc[r]!);
  }
  return y;
}

test('PDVM_I8_TILE names: a tile, its epilogue by stage (s) or two staged buffers (d), and whether it fits 48 KiB for its scaling', () => {
  assert.deepEqual(parseInt8Tile('2442d'), { am: 2, an: 4, gm: 4, gn: 2, epilogue: 'tile', double: true });
  assert.deepEqual(parseInt8Tile('2422s'), { am: 2, an: 4, gm: 2, gn: 2, epilogue: 'stage' });
  for (const name of ['2442', '2442d', '2422s', '4442', '1118d']) assert.equal(int8TileName(parseInt8Tile(name)!), name);
  for (const name of ['2422sd', '5111', '4448', '4442d', 'x']) assert.equal(parseInt8Tile(name), null, name);
  // 256 x 128 a workgroup: 30 KiB staged, the 16 results (a block of 16 staged rows each: 20 KiB) over them
  // when scaled by row, beside them when by group
  const wide = parseInt8Tile('4442')!;
  assert.equal(int8WorkgroupBytes(wide, 'row'), (256 + 128) * 80 + 2 * (256 + 128) * 8);
  assert.equal(int8WorkgroupBytes(wide, 'group'), (256 + 128) * 80 + 16 * 16 * 80 + 2 * (256 + 128) * 8);
  assert.equal(int8TileFits(wide, 'row'), true);
  assert.equal(int8TileFits(wide, 'group'), false);
  const small = { weight: { encoding: 'q4' as const, wordsPerRow: 16, group: 64, groups: 2 }, rows: 64, cols: 128, yStride: 64, yOffset: 0, bias: false, residual: false };
  assert.throws(() => matmulInt8Wgsl(small, 'invocation-index', parseInt8Tile('2442d')!, 'template', 'words'), /need scaling by row/);
  // two staged buffers: twice the staged bytes (128 x 128: 2 x 20 KiB), and one barrier a stage fewer in the loop
  assert.equal(int8WorkgroupBytes(parseInt8Tile('2442d')!, 'row'), 2 * 256 * 80 + 2 * 256 * 8);
  const barriers = (name: string) => matmulInt8Wgsl(small, 'invocation-index', parseInt8Tile(name)!, 'template', 'words', undefined, 'row').split('workgroupBarrier()').length - 1;
  assert.equal(barriers('2442d'), barriers('2442') - 1);
});

test('webgpu quantize_tokens and q4_to_int8_rows (scaling \'row\'): x per token and the q4 matrix per row to int8, against the CPU', { skip: SKIP_GPU }, async () => {
  const gpu = await testGpu({ limits: 'default' });
  const T = 5, rows = 7, cols = 192, r = rng(6);
  const x = Float32Array.from({ length: T * cols }, () => (r() - 0.5) * 6);
  x.fill(0, cols, 2 * cols); // an all-zero token: scale 0
  const xq = zeros(gpu, (T * cols) / 4), xs = zeros(gpu, 2 * T), step = stepBuffer(gpu, T, 0);
  const qt = gpu.pipeline('quantize_tokens', { cols }, () => quantizeTokensWgsl(cols));
  await run(gpu, [{ label: 'quantize_tokens', pipeline: qt, bindGroup: gpu.bindGroup('q', qt, [storage(gpu, x), xq, xs, step]), workgroups: (n) => quantizeTokensGrid(n) }], T);
  const wantX = int8PerRow(x, cols);
  const worstX = worstByte(await readU32(gpu, xq, (T * cols) / 4), wantX.q), scalesX = await read(gpu, xs, 2 * T);
  assert.ok(worstX <= 1, `x's int8 values differ from the CPU's by up to ${worstX} (rounding ties allow 1)`);
  for (let t = 0; t < T; t++) assert.equal(scalesX[2 * t], wantX.s[t], `token ${t} scale`);

  const m = q4Matrix(rows, cols, 8);
  const w8 = zeros(gpu, (rows * cols) / 4), ws = zeros(gpu, rows);
  const conv = gpu.pipeline('q4_to_int8_rows', { rows, cols }, () => q4ToInt8RowsWgsl(rows, cols));
  await run(gpu, [{ label: 'q4_to_int8_rows', pipeline: conv, bindGroup: gpu.bindGroup('c', conv, [storage(gpu, m.words), storage(gpu, m.sm), w8, ws]), workgroups: () => q4ToInt8RowsGrid(rows) }], 1);
  const wantW = int8PerRow(decodedQ4(m, rows, cols), cols);
  const worstW = worstByte(await readU32(gpu, w8, (rows * cols) / 4), wantW.q), scalesW = await read(gpu, ws, rows);
  assert.ok(worstW <= 1, `W's int8 values differ from the CPU's by up to ${worstW}`);
  for (let i = 0; i < rows; i++) assert.ok(Math.abs(scalesW[i]! - wantW.s[i]!) <= 1e-6 * wantW.s[i]!, `row ${i} scale ${scalesW[i]} vs ${wantW.s[i]}`);
});

test('webgpu quantize_tokens fused into the RMSNorm and the SwiGLU (the batched step\'s int8 products of few tokens): xn / act and x\'s int8 rows against the CPU', { skip: SKIP_GPU }, async () => {
  const gpu = await testGpu({ limits: 'default' });
  const T = 4, cols = 320, eps = 1e-5, r = rng(16);
  const x = Float32Array.from({ length: T * cols }, () => (r() - 0.5) * 4);
  const w = Float32Array.from({ length: cols }, () => 0.5 + r());
  const gateUp = Float32Array.from({ length: T * 2 * cols }, () => (r() - 0.5) * 6);
  gateUp.fill(0, 2 * cols, 3 * cols); // token 1's gate all zero: act 0, scale 0
  const step = stepBuffer(gpu, T, 0);
  for (const kind of ['norm', 'swiglu'] as const) {
    const out = zeros(gpu, T * cols), xq = zeros(gpu, (T * cols) / 4), xs = zeros(gpu, 2 * T);
    const source = kind === 'norm' ? { kind, eps: f32Literal(eps) } : { kind };
    const pipeline = gpu.pipeline(`${kind}_quantize_tokens`, { cols, kind }, () => quantizeTokensWgsl(cols, source));
    const inputs = kind === 'norm' ? [storage(gpu, x), storage(gpu, w)] : [storage(gpu, gateUp)];
    await run(gpu, [{ label: kind, pipeline, bindGroup: gpu.bindGroup(kind, pipeline, [...inputs, out, xq, xs, step]), workgroups: (n) => quantizeTokensGrid(n) }], T);
    // the CPU's xn / act (f64), then its int8 rows of the device's own values (so a value at a rounding boundary is not the test)
    const want = new Float64Array(T * cols);
    for (let t = 0; t < T; t++) {
      let ss = 0;
      for (let c = 0; c < cols; c++) ss += x[t * cols + c]! ** 2;
      for (let c = 0; c < cols; c++) {
        const g = gateUp[t * 2 * cols + c]!, u = gateUp[t * 2 * cols + cols + c]!;
        want[t * cols + c] = kind === 'norm' ? (x[t * cols + c]! / Math.sqrt(ss / cols + eps)) * w[c]! : (g / (1 + Math.exp(-g))) * u;
      }
    }
    const got = await read(gpu, out, T * cols);
    assertClose(got, want, 1e-6, `${kind}: values`);
    const wantQ = int8PerRow(got, cols);
    const worst = worstByte(await readU32(gpu, xq, (T * cols) / 4), wantQ.q), scales = await read(gpu, xs, 2 * T);
    assert.ok(worst <= 1, `${kind}: int8 values differ from the CPU's rounding of the same values by up to ${worst} (ties allow 1)`);
    for (let t = 0; t < T; t++) assert.equal(scales[2 * t], wantQ.s[t], `${kind}: token ${t} scale`);
  }
});

/** Words of int8 rows (n rows of `cols` bytes) in the direct kernel's tiles of 16 rows x 128 bytes (rows rounded up to 16, zeros past n). */
function toTiles(words: Uint32Array, n: number, cols: number): Uint32Array {
  const kt = cols / 128, wpr = cols / 4, out = new Uint32Array((Math.ceil(n / 16) * 16 * cols) / 4);
  for (let r = 0; r < n; r++) for (let w = 0; w < wpr; w++) out[((r >> 4) * kt + (w >> 5)) * 512 + (r & 15) * 32 + (w & 31)] = words[r * wpr + w]!;
  return out;
}

test('webgpu int8 rows in tiles (PDVM_I8_DIRECT=tTT): quantize_tokens (plain, norm, SwiGLU) and q4_to_int8_rows write the bytes they write in rows, tile by tile', { skip: SKIP_GPU }, async () => {
  const gpu = await testGpu({ limits: 'default' });
  const T = 20, rows = 32, cols = 256, r = rng(41); // a whole and a partial tile of tokens, 8 tiles a row
  const x = Float32Array.from({ length: T * cols }, () => (r() - 0.5) * 6);
  const w = Float32Array.from({ length: cols }, () => 0.5 + r());
  const gateUp = Float32Array.from({ length: T * 2 * cols }, () => (r() - 0.5) * 6);
  const step = stepBuffer(gpu, T, 0), padded = Math.ceil(T / 16) * 16;
  const sources = [{ kind: 'plain' }, { kind: 'norm', eps: f32Literal(1e-5) }, { kind: 'swiglu' }] as const;
  for (const source of sources) {
    const inputs = source.kind === 'plain' ? [storage(gpu, x)] : source.kind === 'norm' ? [storage(gpu, x), storage(gpu, w), zeros(gpu, T * cols)] : [storage(gpu, gateUp), zeros(gpu, T * cols)];
    const words: Uint32Array[] = [];
    for (const layout of ['rows', 'tiles'] as const) {
      const xq = zeros(gpu, (padded * cols) / 4), xs = zeros(gpu, 2 * T);
      const pipeline = gpu.pipeline('quantize_tokens', { cols, kind: source.kind, layout }, () => quantizeTokensWgsl(cols, source, layout));
      await run(gpu, [{ label: layout, pipeline, bindGroup: gpu.bindGroup(layout, pipeline, [...inputs, xq, xs, step]), workgroups: (n) => quantizeTokensGrid(n) }], T);
      words.push(await readU32(gpu, xq, (padded * cols) / 4));
    }
    assert.deepEqual(words[1], toTiles(words[0]!, T, cols), `quantize_tokens (${source.kind}): the tiles hold the rows' bytes`);
  }
  const m = q4Matrix(rows, cols, 8);
  const out: Uint32Array[] = [];
  for (const layout of ['rows', 'tiles'] as const) {
    const w8 = zeros(gpu, (rows * cols) / 4), ws = zeros(gpu, rows);
    const conv = gpu.pipeline('q4_to_int8_rows', { rows, cols, layout }, () => q4ToInt8RowsWgsl(rows, cols, false, layout));
    await run(gpu, [{ label: layout, pipeline: conv, bindGroup: gpu.bindGroup(layout, conv, [storage(gpu, m.words), storage(gpu, m.sm), w8, ws]), workgroups: () => q4ToInt8RowsGrid(rows) }], 1);
    out.push(await readU32(gpu, w8, (rows * cols) / 4));
  }
  assert.deepEqual(out[1], toTiles(out[0]!, rows, cols), 'q4_to_int8_rows: the tiles hold the rows\' bytes');
});

test('webgpu quantize_blocks: x to int8 per token and 64 columns (permuted within 8), scales and sums, against the CPU', { skip: SKIP_GPU }, async () => {
  const gpu = await testGpu({ limits: 'default' });
  const T = 5, cols = 192, r = rng(5);
  const x = Float32Array.from({ length: T * cols }, () => (r() - 0.5) * 6);
  x.fill(0, 64, 128); // an all-zero block: scale 0
  const bytes = int8InputBytes(T, cols);
  const xq = zeros(gpu, bytes.xq / 4), xs = zeros(gpu, bytes.xscale / 4), step = stepBuffer(gpu, T, 0);
  const pipeline = gpu.pipeline('quantize_blocks', { cols }, () => quantizeBlocksWgsl(cols));
  await run(gpu, [{ label: 'quantize_blocks', pipeline, bindGroup: gpu.bindGroup('q', pipeline, [storage(gpu, x), xq, xs, step]), workgroups: (n) => quantizeBlocksGrid(n, cols) }], T);
  const words = await readU32(gpu, xq, bytes.xq / 4), scales = await read(gpu, xs, bytes.xscale / 4);
  const want = quantizeCpu(x, T, cols);
  const perm = [0, 2, 4, 6, 1, 3, 5, 7];
  let worst = 0;
  for (let i = 0; i < T * cols; i++) {
    const c = (i & ~7) + perm[i & 7]!; // the column stored at byte i
    const got = ((words[i >> 2]! << (24 - 8 * (i & 3))) >> 24);
    worst = Math.max(worst, Math.abs(got - want.q[c]!));
  }
  assert.ok(worst <= 1, `int8 values differ from the CPU's by up to ${worst} (rounding ties allow 1)`);
  for (let b = 0; b < (T * cols) / 64; b++) {
    assert.equal(scales[2 * b], want.s[b], `block ${b} scale`);
    assert.ok(Math.abs(scales[2 * b + 1]! - want.sum[b]!) <= 1e-5 * (1 + Math.abs(want.sum[b]!)), `block ${b} sum ${scales[2 * b + 1]} vs ${want.sum[b]}`);
  }
});

/**
 * The kernel with each subgroup matrix emulated by every invocation on its own: i8 values read from
 * i32 arrays (`from.left` for x, `from.right` for W: the workgroup array, or the storage buffers the
 * direct kernel loads from) at (offset + row * stride) in `units` plus k bytes, 16 x 16 x 32 i32
 * products, stores element by element; only lane 0 of each subgroup works (the others' matrices stay
 * zero and they store nothing), which is 32 times faster on lavapipe and reads the same memory.
 */
function withEmulatedI8Matrices(code: string, units: Int8Units, from = { left: 'smem', right: 'smem' }): string {
  const U = units === 'words' ? 4 : 1;
  const arrays = [...new Set([from.left, from.right])];
  // the staged kernel reaches its shared array by blocks (&smem[b]); the direct one its storage arrays
  // whole, or tile by tile in the 'tiles' layout (&w8[b], &xq[b])
  const blocked = code.includes('(&smem[');
  const byBlock = (a: string) => code.includes(`(&${a}[`);
  const at = (a: string) => (byBlock(a) ? { param: 'blk: u32, ', arg: 'blk, ', elem: `${a}[blk]` } : { param: '', arg: '', elem: a });
  const helpers = `
alias MatA = array<i32, 512>;
alias MatC = array<i32, 256>;
var<private> emu_active: bool;
${arrays.map((a) => `fn i8_${a}(${at(a).param}b: u32) -> i32 { return extractBits(${at(a).elem}[b / 4u], (b % 4u) * 8u, 8u); }`).join('\n')}
fn sm_left(${at(from.left).param}off: u32, stride: u32) -> MatA { var m: MatA; if (!emu_active) { return m; } for (var i = 0u; i < 16u; i++) { for (var k = 0u; k < 32u; k++) { m[i * 32u + k] = i8_${from.left}(${at(from.left).arg}(off + i * stride) * ${U}u + k); } } return m; }
fn sm_right(${at(from.right).param}off: u32, stride: u32) -> MatA { var m: MatA; if (!emu_active) { return m; } for (var n = 0u; n < 16u; n++) { for (var k = 0u; k < 32u; k++) { m[n * 32u + k] = i8_${from.right}(${at(from.right).arg}(off + n * stride) * ${U}u + k); } } return m; }
fn sm_mma(l: MatA, r: MatA, a: MatC) -> MatC {
  var o = a;
  if (!emu_active) { return o; }
  for (var i = 0u; i < 16u; i++) { for (var n = 0u; n < 16u; n++) { var s = o[i * 16u + n]; for (var k = 0u; k < 32u; k++) { s += l[i * 32u + k] * r[n * 32u + k]; } o[i * 16u + n] = s; } }
  return o;
}
fn sm_store(${blocked ? 'blk: u32, ' : ''}off: u32, v: MatC, stride: u32) { if (!emu_active) { return; } for (var i = 0u; i < 16u; i++) { for (var n = 0u; n < 16u; n++) { smem${blocked ? '[blk]' : ''}[off + i * stride + n] = v[i * 16u + n]; } } }
`;
  return code
    .replace('enable chromium_experimental_subgroup_matrix;\n', '')
    .replace(/\n@compute/, `${helpers}\n@compute`)
    .replace(/(let g = [^;]*;)/, '$1\n  emu_active = lid % 32u == 0u; // lane 0 of each subgroup (subgroups of 32 from the invocation index)')
    .replace(/subgroup_matrix_result<i32, 16, 16>\(\)/g, 'MatC()')
    .replaceAll(`subgroupMatrixLoad<subgroup_matrix_left<i8, 32, 16>, row_major>(&${from.left}, `, 'sm_left(')
    .replaceAll(`subgroupMatrixLoad<subgroup_matrix_right<i8, 16, 32>, col_major>(&${from.right}, `, 'sm_right(')
    .replace(new RegExp(`subgroupMatrixLoad<subgroup_matrix_left<i8, 32, 16>, row_major>\\(&${from.left}\\[([^\\]]+)\\], `, 'g'), 'sm_left($1, ')
    .replace(new RegExp(`subgroupMatrixLoad<subgroup_matrix_right<i8, 16, 32>, col_major>\\(&${from.right}\\[([^\\]]+)\\], `, 'g'), 'sm_right($1, ')
    .replace(/subgroupMatrixMultiplyAccumulate\(/g, 'sm_mma(')
    .replace(/subgroupMatrixStore<row_major>\(&smem\[([^\]]+)\], /g, 'sm_store($1, ')
    .replace(/subgroupMatrixStore<row_major>\(&smem, /g, 'sm_store(');
}

test('the int8 product\'s WGSL passes Tint\'s checks outside the subgroup-matrix builtins (every tile, epilogue, lab variant, scalings \'row\' and \'row-q4\', both ways of finding the subgroup)', { skip: SKIP_GPU }, async () => {
  const gpu = await testGpu();
  // stand-ins of the same arguments for the builtins (no pipeline is made: Tint's checks only)
  const standIns = (code: string) => code
    .replace('enable chromium_experimental_subgroup_matrix;\n', '')
    .replace('requires subgroup_id;\n', '')
    .replace(/\n@compute/, '\nalias MatC = array<i32, 256>;\nfn sm_load(b: u32, o: u32, s: u32) -> MatC { var m: MatC; m[0] = smem[b][o + s]; return m; }\nfn sm_mma(a: MatC, b: MatC, c: MatC) -> MatC { return c; }\nfn sm_store(b: u32, o: u32, v: MatC, s: u32) { smem[b][o + s] = v[0]; }\n@compute')
    .replace(/subgroup_matrix_result<i32, 16, 16>\(\)/g, 'MatC()')
    .replace(/subgroupMatrixLoad<subgroup_matrix_\w+<i8, \d+, \d+>, \w+_major>\(&smem\[([^\]]+)\], /g, 'sm_load($1, ')
    .replace(/subgroupMatrixMultiplyAccumulate\(/g, 'sm_mma(')
    .replace(/subgroupMatrixStore<row_major>\(&smem\[([^\]]+)\], /g, 'sm_store($1, ');
  const shape = { weight: { encoding: 'q4' as const, wordsPerRow: 512, group: 64, groups: 64 }, rows: 14336, cols: 4096, yStride: 14340, yOffset: 2, bias: true, residual: true };
  const failures: string[] = [];
  for (const tile of [...INT8_TILES, ...['2422s', '2242s', '1422s', '2222s', '1111', '2442d', '4224', '4224d', '4422d', '4442', '4424', '1118d'].map((n) => parseInt8Tile(n)!)]) {
    for (const lab of [undefined, 'no-scale', 'row', 'row-q4'] as const) {
      const byRow = lab === 'row' || lab === 'row-q4';
      if ((byRow && tile.epilogue === 'stage') || (tile.double && !byRow) || !int8TileFits(tile, byRow ? lab : 'group')) continue;
      for (const indexing of ['subgroup-id', 'invocation-index'] as const) {
        const code = standIns(byRow ? matmulInt8Wgsl(shape, indexing, tile, 'template', 'words', undefined, lab, tile === INT8_FEW_TILE ? { parts: 4, maxTokens: 128 } : undefined) : matmulInt8Wgsl(shape, indexing, tile, 'template', 'words', lab));
        const errors = (await gpu.device.createShaderModule({ code }).getCompilationInfo()).messages.filter((m) => m.type === 'error');
        if (errors.length) failures.push(`${int8TileName(tile)} ${lab ?? ''} ${indexing}: ${errors.map((e) => `line ${e.lineNum}: ${e.message}`).join('; ')}`);
      }
    }
  }
  assert.deepEqual(failures, []);
});

test('the int8 product with emulated subgroup matrices equals the CPU doing its arithmetic (addressing, permutation, per-group or per-row scales, bias, residual, partial tiles)', { skip: SKIP_GPU }, async () => {
  const gpu = await testGpu();
  const device = gpu.device;
  const T = 21, rows = 40, cols = 128, yStride = rows + 3, yOffset = 2, r = rng(9);
  const m = q4Matrix(rows, cols, 4);
  const x = Float32Array.from({ length: T * cols }, () => (r() - 0.5) * 4);
  const bias = Float32Array.from({ length: yStride }, () => r() - 0.5), y0 = Float32Array.from({ length: T * yStride }, () => r());
  const prod = productCpu(m, x, T, rows, cols, true);
  const want = Float64Array.from(y0);
  for (let t = 0; t < T; t++) for (let i = 0; i < rows; i++) want[t * yStride + yOffset + i] += prod[t * rows + i]! + bias[yOffset + i]!;
  const step = stepBuffer(gpu, T, 0), bytes = int8InputBytes(512, cols);
  const xq = zeros(gpu, bytes.xq / 4), xs = zeros(gpu, bytes.xscale / 4);
  const quantize = gpu.pipeline('quantize_blocks', { cols }, () => quantizeBlocksWgsl(cols));
  const quantizeOp = { label: 'quantize_blocks', pipeline: quantize, bindGroup: gpu.bindGroup('q', quantize, [storage(gpu, x), xq, xs, step]), workgroups: (n: number) => quantizeBlocksGrid(n, cols) };
  const shape = { weight: { encoding: 'q4' as const, wordsPerRow: m.wordsPerRow, group: 64, groups: m.groups }, rows, cols, yStride, yOffset, bias: true, residual: true };
  // lavapipe takes about a minute a variant (compiling the emulation): the default epilogue once, every
  // tile, epilogue and way of counting offsets with PDVM_I8_EMULATE_ALL=1 (all passed, 2026-12-05)
  const all = process.env.PDVM_I8_EMULATE_ALL === '1';
  const tiles: Int8Tile[] = [
    { am: 1, an: 2, gm: 2, gn: 1, epilogue: 'tile' },
    ...(all ? [{ am: 1, an: 2, gm: 2, gn: 2, epilogue: 'stage' as const }, { am: 1, an: 1, gm: 1, gn: 1, epilogue: 'tile' as const }, ...int8TilesFor('group'), { am: 2, an: 4, gm: 2, gn: 2, epilogue: 'stage' as const }] : []),
  ];
  for (const tile of tiles) {
    for (const units of all ? (['words', 'bytes'] as const) : (['words'] as const)) {
      const code = withEmulatedI8Matrices(matmulInt8Wgsl(shape, 'invocation-index', tile, 'template', units), units);
      const module = device.createShaderModule({ code });
      const errors = (await module.getCompilationInfo()).messages.filter((e) => e.type === 'error');
      assert.deepEqual(errors.map((e) => `line ${e.lineNum}: ${e.message}`), [], `tile ${int8TileName(tile)} compiles`);
      const pipeline = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
      const y = storage(gpu, y0), size = int8TileSize(tile);
      const product = { label: 'emulated', pipeline, bindGroup: gpu.bindGroup('emulated', pipeline, [storage(gpu, m.words), storage(gpu, m.sm), xq, xs, y, step, storage(gpu, bias)]), workgroups: (n: number) => [Math.ceil(n / size.tokens), Math.ceil(rows / size.rows), 1] as [number, number, number] };
      await run(gpu, [quantizeOp, product], T);
      assertClose(await read(gpu, y, T * yStride), want, 1e-6, `tile ${int8TileName(tile)}, offsets in ${units}`);
    }
  }

  // scaling 'row': the matrix rounded to int8 a row, x a token, one i32 sum scaled once (the first tile);
  // 'row-q4': the same bytes made by the product from the q4 words as it stages them; and 'row-q4' on the
  // batched step's tile with its columns split in two parts, added by int8_split_combine
  // two staged buffers taken in turn ('d' tiles): 'row' on the first tile, 'row-q4' on the few-token tile, split
  const cases = [
    { scaling: 'row' as const, tile: tiles[0]!, split: undefined as Int8Split | undefined },
    { scaling: 'row-q4' as const, tile: tiles[0]!, split: undefined },
    { scaling: 'row-q4' as const, tile: INT8_FEW_TILE, split: { parts: 2, maxTokens: T } },
    { scaling: 'row' as const, tile: { ...tiles[0]!, double: true }, split: undefined },
    { scaling: 'row-q4' as const, tile: { ...INT8_FEW_TILE, double: true }, split: { parts: 2, maxTokens: T } },
  ];
  for (const { scaling, tile, split } of cases) {
    const size = int8TileSize(tile), fromQ4 = scaling === 'row-q4', name = `tile ${int8TileName(tile)}, scaling '${scaling}'${split ? `, columns in ${split.parts}` : ''}`;
    const prodRows = productRowsCpu(m, x, T, rows, cols);
    const wantRows = Float64Array.from(y0);
    for (let t = 0; t < T; t++) for (let i = 0; i < rows; i++) wantRows[t * yStride + yOffset + i] += prodRows[t * rows + i]! + bias[yOffset + i]!;
    const made = fromQ4 ? [zeros(gpu, 2 * rows)] : [zeros(gpu, (rows * cols) / 4), zeros(gpu, rows)];
    const conv = gpu.pipeline('q4_to_int8_rows', { rows, cols, scalesOnly: fromQ4 }, () => q4ToInt8RowsWgsl(rows, cols, fromQ4));
    const qt = gpu.pipeline('quantize_tokens', { cols }, () => quantizeTokensWgsl(cols));
    const code = withEmulatedI8Matrices(matmulInt8Wgsl(shape, 'invocation-index', tile, 'template', 'words', undefined, scaling, split), 'words');
    const module = device.createShaderModule({ code });
    const errors = (await module.getCompilationInfo()).messages.filter((e) => e.type === 'error');
    assert.deepEqual(errors.map((e) => `line ${e.lineNum}: ${e.message}`), [], `${name} compiles`);
    const pipeline = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
    const y = storage(gpu, y0), words = storage(gpu, m.words), sm = storage(gpu, m.sm), biasBuffer = storage(gpu, bias);
    // split: the product writes its parts (no bias there), the combine adds them, the bias and y
    const parts = split ? zeros(gpu, split.parts * split.maxTokens * rows) : null, out = parts ?? y, productBias = split ? [] : [biasBuffer];
    const productBuffers = fromQ4 ? [words, sm, xq, xs, out, step, made[0]!, ...productBias] : [made[0]!, made[1]!, xq, xs, out, step, ...productBias];
    const combine = split ? gpu.pipeline('int8_split_combine', { rows, yStride, yOffset, bias: true, residual: true, ...split }, () => int8SplitCombineWgsl(shape, split)) : null;
    await run(gpu, [
      { label: 'q4_to_int8_rows', pipeline: conv, bindGroup: gpu.bindGroup('c', conv, [words, sm, ...made]), workgroups: () => q4ToInt8RowsGrid(rows) },
      { label: 'quantize_tokens', pipeline: qt, bindGroup: gpu.bindGroup('qt', qt, [storage(gpu, x), xq, xs, step]), workgroups: (n: number) => quantizeTokensGrid(n) },
      { label: 'emulated rows', pipeline, bindGroup: gpu.bindGroup('emulated', pipeline, productBuffers), workgroups: (n: number) => [Math.ceil(n / size.tokens), Math.ceil(rows / size.rows), split?.parts ?? 1] as [number, number, number] },
      ...(combine ? [{ label: 'int8_split_combine', pipeline: combine, bindGroup: gpu.bindGroup('combine', combine, [parts!, y, step, biasBuffer]), workgroups: (n: number) => [Math.ceil((n * rows) / 256), 1, 1] as [number, number, number] }] : []),
    ], T);
    // a rounding tie may put one int8 value 1 apart from the CPU's; from the device's own bytes, none
    const got = await read(gpu, y, T * yStride);
    assertClose(got, wantRows, 1e-5, name);
    const fromDevice = await productRowsFromDevice(gpu, m, x, T, rows, cols), wantDevice = Float64Array.from(y0);
    for (let t = 0; t < T; t++) for (let i = 0; i < rows; i++) wantDevice[t * yStride + yOffset + i] += fromDevice[t * rows + i]! + bias[yOffset + i]!;
    assertClose(got, wantDevice, 1e-6, `${name}, against the device's own int8 bytes`);
  }
});

test('the int8 product of few tokens with operands from global memory (PDVM_I8_DIRECT), subgroup matrices emulated, equals the CPU: exact i32 sums scaled once, bias, residual, partial token tiles', { skip: SKIP_GPU }, async () => {
  const gpu = await testGpu();
  const T = 21, rows = 48, yStride = rows + 3, yOffset = 2, r = rng(31);
  const int8Words = (n: number) => Uint32Array.from({ length: n / 4 }, () => Math.floor(r() * 4294967296));
  const byte = (words: Uint32Array, i: number) => (words[i >> 2]! << (24 - 8 * (i & 3))) >> 24;
  const wrow = Float32Array.from({ length: rows }, () => r() * 0.01 + 1e-3);
  const xscale = Float32Array.from({ length: 64 * 2 }, (_, i) => (i % 2 === 0 ? r() * 0.05 + 1e-3 : 0));
  const biasValues = Float32Array.from({ length: yStride }, () => r() - 0.5), y0 = Float32Array.from({ length: T * yStride }, () => r());
  // tiles: 4 tiles a row (subgroups 4..7 idle: the branch) and 16 (two a subgroup)
  for (const [TT, units, layout, cols] of [[1, 'words', 'rows', 512], [2, 'bytes', 'rows', 512], [4, 'words', 'rows', 512], [1, 'words', 'tiles', 512], [2, 'words', 'tiles', 2048]] as const) {
    const w8 = int8Words(rows * cols), xq = int8Words(64 * cols); // x's rows past T too: the kernel reads whole token tiles
    const shape = { weight: { encoding: 'q4' as const, wordsPerRow: cols / 8, group: 64, groups: cols / 64 }, rows, cols, yStride, yOffset, bias: true, residual: true };
    const code = withEmulatedI8Matrices(matmulInt8DirectWgsl(shape, 'template', units, TT, 'invocation-index', layout), units, { left: 'xq', right: 'w8' });
    const pipeline = gpu.pipeline('emulated direct', { TT, units, layout }, () => code);
    const y = storage(gpu, y0);
    const laid = (words: Uint32Array, n: number) => (layout === 'tiles' ? toTiles(words, n, cols) : words);
    await run(gpu, [{ label: 'direct', pipeline, bindGroup: gpu.bindGroup('direct', pipeline, [storage(gpu, laid(w8, rows)), storage(gpu, wrow), storage(gpu, laid(xq, 64)), storage(gpu, xscale), y, stepBuffer(gpu, T, 0), storage(gpu, biasValues)]), workgroups: (n) => [Math.ceil(n / (16 * TT)), rows / 16, 1] }], T);
    const got = await read(gpu, y, T * yStride);
    const want = Float64Array.from(y0);
    for (let t = 0; t < T; t++) for (let i = 0; i < rows; i++) {
      let acc = 0;
      for (let c = 0; c < cols; c++) acc += byte(w8, i * cols + c) * byte(xq, t * cols + c);
      const o = t * yStride + yOffset + i;
      want[o] = Math.fround(Math.fround(acc * Math.fround(xscale[2 * t]! * wrow[i]!)) + biasValues[yOffset + i]!) + y0[o]!;
    }
    assertClose(got, want, 1e-6, `direct, ${TT} token tiles a workgroup, offsets in ${units}, ${layout}, ${cols} columns`);
    // the subgroup_id way of finding the subgroup (emulated loads, so Tint checks the rest): compiles
    const byId = withEmulatedI8Matrices(matmulInt8DirectWgsl(shape, 'template', units, TT, 'subgroup-id', layout), units, { left: 'xq', right: 'w8' });
    const errors = (await gpu.device.createShaderModule({ code: byId }).getCompilationInfo()).messages.filter((m) => m.type === 'error');
    assert.deepEqual(errors.map((e) => `line ${e.lineNum}: ${e.message}`), [], `direct, ${TT} token tiles, subgroup_id, ${layout}`);
  }
});

test('webgpu int8 prefill products (the device\'s tensor cores, where self-tested): q4 g64 through matmulOp against the CPU, scaling per group and per row (kept int8 rows, or rounded from the q4 words in the kernel)', { skip: SKIP_GPU }, async (t) => {
  const missing: string[] = [];
  for (const scaling of ['group', 'row', 'row-q4'] as const) {
    const gpu = await testGpu({ prefillInt8: scaling === 'group' ? true : scaling });
    if (!gpu.features.subgroupMatrixI8) {
      const why = Object.entries(gpu.features.selfTests).filter(([k]) => k.startsWith('prefill int8')).map(([k, v]) => `${k}: ${v}`);
      missing.push(`${scaling}: no int8 tensor-core path here (${why.join('; ') || 'no subgroup matrices'})`);
      continue;
    }
    const r = rng(21);
    // the last cases as the batched decode step's products (fewTokens: the small tile, columns split;
    // 'row' also with the operands straight from global memory, PDVM_I8_DIRECT)
    for (const [T, rows, cols, bias, residual, few] of [[70, 130, 256, true, true, false], [512, 1024, 4096, false, true, false], [200, 3072, 2048, false, false, false], [21, 3072, 2048, true, true, 'split'], [21, 3072, 2048, true, true, 'direct'], [21, 3072, 2048, true, true, 'tiles']] as const) {
      const direct = few === 'direct' || few === 'tiles';
      if ((few && scaling === 'group') || (direct && scaling !== 'row')) continue;
      gpu.features.int8Direct = direct ? 2 : 0;
      gpu.features.int8DirectTiles = few === 'tiles';
      const m = q4Matrix(rows, cols, rows);
      const x = Float32Array.from({ length: T * cols }, () => (r() - 0.5) * 2 * (r() < 0.01 ? 20 : 1));
      const yStride = rows + 5, yOffset = 3;
      const biasValues = Float32Array.from({ length: yStride }, () => r() - 0.5), y0 = Float32Array.from({ length: T * yStride }, () => r());
      const matrix = {
        encoding: 'q4', rows, cols, bytes: m.words.byteLength + m.sm.byteLength,
        shape: { encoding: 'q4', rows, cols, group: 64, groups: m.groups, wordsPerRow: m.wordsPerRow },
        buffers: [storage(gpu, m.words), storage(gpu, m.sm)],
      } as unknown as GpuMatrix;
      const y = storage(gpu, y0);
      const ops = matmulOp(gpu, matrix, { x: storage(gpu, x), y, yStride, yOffset, bias: bias ? storage(gpu, biasValues) : null, residual, step: stepBuffer(gpu, T, 0), fewTokens: few !== false }, 'tiled', T);
      assert.deepEqual(ops.map((o) => o.label), scaling === 'group' ? ['quantize_blocks', 'matmul_int8_q4'] : [few === 'tiles' ? 'quantize_tokens_tiles' : 'quantize_tokens', ...(direct ? ['matmul_int8_direct'] : ['matmul_int8_rows', ...(few ? ['int8_split_combine'] : [])])]);
      await run(gpu, ops, T);
      const got = await read(gpu, y, T * yStride);
      const withEpilogue = (prod: Float64Array) => {
        const want = Float64Array.from(y0);
        for (let tt = 0; tt < T; tt++) for (let i = 0; i < rows; i++) {
          const o = tt * yStride + yOffset + i;
          want[o] = (residual ? y0[o]! : 0) + prod[tt * rows + i]! + (bias ? biasValues[yOffset + i]! : 0);
        }
        return want;
      };
      const exact = withEpilogue(productCpu(m, x, T, rows, cols, false));
      // 'group': the CPU's own rounding; 'row', 'row-q4': the device's int8 bytes (productRowsFromDevice)
      const arithmetic = withEpilogue(scaling === 'group' ? productCpu(m, x, T, rows, cols, true) : await productRowsFromDevice(gpu, m, x, T, rows, cols));
      const relArithmetic = compare(got, arithmetic).rel, relExact = compare(got, exact).rel;
      const relCpu = compare(Float32Array.from(scaling === 'group' ? arithmetic : withEpilogue(productRowsCpu(m, x, T, rows, cols))), exact).rel;
      console.log(`${scaling}${few === 'split' ? ' (few tokens, columns split)' : few === 'direct' ? ' (few tokens, operands from global memory)' : few === 'tiles' ? ' (few tokens, operands from global memory in tiles)' : ''}, ${T} x ${rows} x ${cols}: against the CPU doing its arithmetic ${relArithmetic.toExponential(2)}; against the f32 product ${relExact.toExponential(2)} (the CPU's int8 arithmetic: ${relCpu.toExponential(2)})`);
      // 'group' against the CPU's own rounding of x: a value at a rounding boundary (the device's division
      // is within a few ULP) may land one step apart: 1.4e-5 on the H100's 512 x 1024 x 4096
      assertClose(got, arithmetic, scaling === 'group' ? 5e-5 : 1e-5, `${scaling}, ${T} x ${rows} x ${cols} (int8 arithmetic)`);
      // x here has 1% outliers at 20 times the rest, the int8 blocks' worst case: 2.0e-2 on the H100
      // (group); per row and token, no worse than the same arithmetic on the CPU
      assertClose(got, exact, scaling === 'group' ? 3e-2 : 1.05 * relCpu + 1e-4, `${scaling}, ${T} x ${rows} x ${cols} (f32 product)`);
    }
  }
  if (missing.length === 3) t.skip(missing.join('; '));
  else for (const m of missing) t.diagnostic(m);
});
