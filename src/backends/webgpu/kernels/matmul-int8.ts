/**
 * Prefill products y = W x of q4 matrices (group 64) on the int8 tensor cores: i8 x i8 -> i32
 * subgroup matrices at 16x16x32 (about twice the f16 rate on the H200, docs/PERFORMANCE.md).
 *   quantize_blocks: x (T x cols f32) -> xq, int8 per token and block of 64 columns (the q4 group),
 *     xq[t, c] = round(x[t, c] / s), s = max |x| / 127 over the block, and xscale[t, block] =
 *     (s, sum of the block's x in f32);
 *   matmul_int8: per stage of 64 columns (one group), the q4 nibbles (0..15) staged as i8 and xq as
 *     is, the i32 products of the group on the tensor cores, then each 16 x 16 i32 result stored to
 *     workgroup memory (WGSL gives no element access to a subgroup matrix) and added to f32
 *     accumulators in registers:
 *       y[t, r] += scale[r, g] s[t, g] sum_c q[r, c] xq[t, c] + min[r, g] sum_c x[t, c]
 *     which is sum_c (q scale + min) x with x rounded to int8 in the first term only.
 * Columns are permuted within each 8 (0 2 4 6 1 3 5 7) in both xq and the staged weights, so that a
 * q4 word becomes two words of 4 bytes with two masks (its even and its odd nibbles); the sums over
 * a group do not depend on the order.
 * Tolerance: x rounded to int8 per block of 64 (an element's error up to half a step of the block's
 * largest value / 127): products within 3e-2 relative (norm) of the f32 product where 1% of x are
 * outliers at 20 times the rest (measured 2.0e-2 on the H100), and within 5e-5 of the CPU doing the
 * same int8 arithmetic (measured 1.2e-7 to 1.4e-5 on the H100: the device's 127 / max is a few ULP
 * from the CPU's, so a value at a rounding boundary may land one step apart): matmul-int8.test.ts;
 * the demo model's perplexity +0.11% (docs/PERFORMANCE.md, "Issue 13 on 2026-12-05 evening: int8
 * tensor cores").
 * Measured there: 2.2x slower than the f16 tensor-core kernel (the per-group round trip of the i32
 * results through workgroup memory is 70% of its time), so it is off by default.
 *
 * Scaling 'row' (PDVM_PREFILL_I8=row) has no per-group round trip: the q4 matrix is decoded and
 * rounded again to int8 with one scale a row (q4ToInt8Rows, once, into a buffer of its own: a byte a
 * weight), x to int8 with one scale a token (quantize_tokens), so y[t, r] = S_r s_t sum_c w8 xq is one
 * i32 sum over every column, scaled once at the end (what the 'no-scale' lab measured: 10,091 tok/s on
 * the 8B shape, H100). Both in natural column order. Its cost in accuracy, emulated on the CPU
 * (bench/int8-numerics.ts, the demo model's q4 perplexity): +0.076% against +0.110% for 'group'; on
 * the H200 +0.133% (2026-12-06), and pp512 13-29% faster than the f16 tensor cores there
 * (docs/PERFORMANCE.md "Device calls of 2026-12-06"): opt-in, because x's one scale a token is known
 * to suffer from the outlier channels of large models, which the demo model lacks.
 *
 * Scaling 'row-q4' (PDVM_PREFILL_I8=row-q4) gives the same bytes without keeping them: only each row's
 * (scale, 127 / max) is made once (q4ToInt8Rows, scalesOnly), and the product rounds the q4 words it
 * stages (nibble x scale + min, times 127 / max, rounded): the q4 words' bytes read instead of a byte a
 * weight, for some arithmetic in the staging.
 *
 * Few tokens (the batched decode step's products, MatmulIo.fewTokens; scaling by row only): the tiles
 * above give a 6,144-row matrix 48 workgroups, far too few to stream the weights (measured on the H200:
 * 49-113 µs for the 8B qkv at 8 rows against 17 for the batched matvec). INT8_FEW_TILE (16 tokens x 128
 * rows) with the columns split into parts (Int8Split, chosen per matrix for about 384 workgroups)
 * gives hundreds; each part's f32 results go to a scratch buffer and int8_split_combine adds them in
 * order. Measured on the H100 (2026-12-06, docs/PERFORMANCE.md "Few-token int8 products on the device"):
 * slower than the batched matvec at 8-32 rows (gate/up at 32 rows 175 µs on 'row' against the
 * matvec's 197, but qkv, o, down and the step as a whole slower: 23.6 against 16.3 ms), because a
 * 64-column stage moves only 4-8 KB a workgroup between two barriers. Opt-in (the batched step's
 * 'tiled' products); the matvec stays the default.
 */
import { epilogue, LINEAR_INDEX, subgroupMatrixLoadWgsl, subgroupMatrixStoreWgsl, type SubgroupIndexing, type SubgroupMatrixSyntax, type TiledMatmulShape } from './matmul-tiled.js';

/** Columns a block of xq and a stage of the product: the q4 group this path takes. */
export const INT8_BLOCK = 64;

/**
 * How this Dawn counts the offset and stride of an i8 subgroup-matrix load (whose array holds i32
 * words, 4 values each): in values ('bytes') or in the array's words ('words'). The proposal of the
 * time and its lowering disagree between versions, so device.ts self-tests both.
 */
export type Int8Units = 'bytes' | 'words';

/**
 * How the product is scaled: per q4 group and 64 columns of x ('group'), or once per row and token:
 * from the matrix rounded again to int8 a row once, kept beside it ('row': a byte a weight more), or
 * rounded so as the q4 words are staged ('row-q4': the same bytes, made in the kernel, only a scale
 * and its inverse a row kept).
 */
export type Int8Scaling = 'group' | 'row' | 'row-q4';

/**
 * gm x gn subgroups a workgroup, each am x an results of 16 x 16 (16 am gm tokens x 16 an gn rows),
 * and how the i32 results of a group reach the f32 sums:
 *   'tile': one result at a time through two slots a subgroup, a workgroup barrier each (am an
 *     barriers a stage; workgroup memory for any tile);
 *   'stage': every subgroup's results of the stage at once, over the staged operands (no longer
 *     needed then): four barriers a stage, but 1 KiB a result, so at most 32 results a workgroup.
 * With scaling by row the results meet only after the last stage, over the staged operands. `double`
 * (scaling by row only): two staged buffers taken in turn, so that one barrier a stage suffices (a
 * stage is written while the other is still being read).
 */
export interface Int8Tile {
  am: number;
  an: number;
  gm: number;
  gn: number;
  epilogue: 'tile' | 'stage';
  double?: boolean;
}

/** 'AMANGMGN', with an 's' for the epilogue by stage, a 'd' for two staged buffers: e.g. '2442', '2422s', '2442d' (PDVM_I8_TILE). */
export function int8TileName(t: Int8Tile): string {
  return `${t.am}${t.an}${t.gm}${t.gn}${t.epilogue === 'stage' ? 's' : ''}${t.double ? 'd' : ''}`;
}

export function parseInt8Tile(text: string | undefined): Int8Tile | null {
  const m = /^([1-4])([1-4])([1-8])([1-8])(s?)(d?)$/.exec(text ?? '');
  if (!m) return null;
  const [am, an, gm, gn] = m.slice(1, 5).map(Number) as [number, number, number, number];
  const t: Int8Tile = { am, an, gm, gn, epilogue: m[5] ? 'stage' : 'tile', ...(m[6] ? { double: true } : {}) };
  return gm * gn <= 16 && !(m[5] && m[6]) && int8TileFits(t, 'row') ? t : null;
}

/** Whether the tile's stage divides among its invocations and fits 48 KiB of workgroup memory with this scaling. */
export function int8TileFits(t: Int8Tile, scaling: Int8Scaling = 'group'): boolean {
  const { tokens, rows } = int8TileSize(t);
  return tokens <= 32 * t.gm * t.gn && rows <= 32 * t.gm * t.gn && int8WorkgroupBytes(t, scaling) <= 49152;
}

/**
 * Every tile chooseInt8Tile returns, and INT8_FEW_TILE (device.ts self-tests those of its scaling,
 * int8TilesFor): 128 tokens x 128 rows a workgroup of 8 subgroups (32 x 64 each: 8 results, 64 f32
 * accumulators an invocation), or 64 x 128 where that gives too few workgroups for the GPU (the 1B
 * shape's 2,048-row matrices); with scaling 'row', the 128 x 128 tile in two staged buffers (measured
 * faster on the H100, 2026-12-06: docs/PERFORMANCE.md).
 */
export const INT8_TILES: readonly Int8Tile[] = [
  { am: 2, an: 4, gm: 4, gn: 2, epilogue: 'tile' },
  { am: 2, an: 4, gm: 2, gn: 2, epilogue: 'tile' },
  { am: 1, an: 1, gm: 1, gn: 8, epilogue: 'tile' }, // INT8_FEW_TILE
  { am: 2, an: 4, gm: 4, gn: 2, epilogue: 'tile', double: true },
];

/** The tiles of INT8_TILES that a product of this scaling may take (two staged buffers: by row only). */
export function int8TilesFor(scaling: Int8Scaling): Int8Tile[] {
  return INT8_TILES.filter((t) => !t.double || scaling !== 'group');
}

/**
 * The tile of the batched decode step's products (few tokens, MatmulIo.fewTokens): 16 tokens x 128
 * rows, 8 subgroups of one 16 x 16 result each, with the columns split (Int8Split) for workgroups.
 */
export const INT8_FEW_TILE: Int8Tile = INT8_TILES[2]!;

export function chooseInt8Tile(rows: number, maxTokens: number, scaling: Int8Scaling = 'group'): Int8Tile {
  const wide = Math.ceil(maxTokens / 128) * Math.ceil(rows / 128) >= 96;
  return INT8_TILES[wide ? (scaling === 'row' ? 3 : 0) : 1]!;
}

export function int8TileSize(t: Pick<Int8Tile, 'am' | 'an' | 'gm' | 'gn'>): { tokens: number; rows: number } {
  return { tokens: 16 * t.am * t.gm, rows: 16 * t.an * t.gn };
}

/** Staged rows' stride in workgroup memory, bytes: a stage plus 16 (off the bank period, 16-byte aligned). */
const STRIDE = INT8_BLOCK + 16;
/**
 * The shared array is made of blocks of 16 staged rows (i32 words), so that every subgroup-matrix load
 * and store reaches it through a block (`&smem[b]`) at a constant offset and stride: Tint's robustness
 * then adds no clamp to it (a computed offset is clamped by a select before each load).
 */
const BLOCK = (16 * STRIDE) / 4;

/**
 * Blocks of the shared array: the staged x and W (a buffer of `staged` blocks, x's first, two buffers
 * if double), and the i32 results, a block each (256 of its words), over them (epilogue by stage, or
 * scaling by row: results only after the last stage) or beside them.
 */
function sharedBlocks(t: Int8Tile, scaling: Int8Scaling): { xs: number; staged: number; results: number; total: number; over: boolean } {
  const { tokens, rows } = int8TileSize(t);
  const xs = tokens / 16, staged = xs + rows / 16;
  const results = t.gm * t.gn * (t.epilogue === 'stage' ? t.am * t.an : 2);
  const over = t.epilogue === 'stage' || scaling !== 'group';
  const buffers = (t.double ? 2 : 1) * staged;
  return { xs, staged, results, total: over ? Math.max(buffers, results) : buffers + results, over };
}

/** Workgroup memory of the product with this scaling, bytes. */
export function int8WorkgroupBytes(t: Int8Tile, scaling: Int8Scaling = 'group'): number {
  const { tokens, rows } = int8TileSize(t);
  return sharedBlocks(t, scaling).total * BLOCK * 4 + 2 * (tokens + rows) * 8;
}

/** Whether this path takes the matrix: q4 in groups of 64 over whole groups. */
export function int8Supports(s: Pick<TiledMatmulShape, 'weight' | 'cols'>): boolean {
  return s.weight.encoding === 'q4' && s.weight.group === INT8_BLOCK && s.cols % INT8_BLOCK === 0;
}

/**
 * The columns split into `parts` (scaling by row only): workgroup z sums its part's stages and writes
 * its f32 results to part z of a scratch buffer (parts x maxTokens x rows), and int8_split_combine
 * adds the parts in order, then the bias and the residual. For few tokens (the batched decode step),
 * so that a matrix of few row tiles still gives the GPU enough workgroups. The parts are a property of
 * the matrix and of maxTokens, never of T, so a token's result does not depend on what shares its step.
 */
export interface Int8Split {
  parts: number;
  maxTokens: number;
}

/** Workgroups a token tile chooseInt8Split aims at by default (PDVM_I8_SPLIT sets another). */
export const INT8_SPLIT_WORKGROUPS = 384;

/**
 * The parts for a matrix of `rowTiles` row tiles and `stages` stages: about `workgroups` workgroups a
 * token tile, a power of two dividing the stages, at most 32.
 */
export function chooseInt8Split(rowTiles: number, stages: number, workgroups = INT8_SPLIT_WORKGROUPS): number {
  let parts = 1;
  while (parts < 32 && rowTiles * parts * 2 <= workgroups && stages % (parts * 2) === 0) parts *= 2;
  return parts;
}

/** y (+)= the sum of the parts (in order) + bias: one invocation a (token, row). */
export function int8SplitCombineWgsl(s: TiledMatmulShape, split: Int8Split): string {
  return `const ROWS = ${s.rows}u;
@group(0) @binding(0) var<storage, read> parts: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> step: array<u32>;
${s.bias ? '@group(0) @binding(3) var<storage, read> bias: array<f32>;' : ''}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let T = step[0];
  ${LINEAR_INDEX}
  let t = i / ROWS;
  let r = i % ROWS;
  if (t >= T) { return; }
  var v = 0.0;
  for (var z = 0u; z < ${split.parts}u; z++) { v += parts[(z * ${split.maxTokens}u + t) * ROWS + r]; }
  ${epilogue(s, 't', 'r', 'v')}
}
`;
}

/** Bytes of xq and of xscale for `tokens` rows of `cols` columns. */
export function int8InputBytes(tokens: number, cols: number): { xq: number; xscale: number } {
  return { xq: tokens * cols, xscale: (tokens * cols * 8) / INT8_BLOCK };
}

/** One invocation a (token, block): 16 vec4 loads, the block's max and sum, 16 words of int8 out. */
export function quantizeBlocksWgsl(cols: number): string {
  if (cols % INT8_BLOCK !== 0) throw new Error(`quantize_blocks: ${cols} columns are not whole blocks of ${INT8_BLOCK}`);
  return `const BLOCKS = ${cols / INT8_BLOCK}u;
@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> xq: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> xscale: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> step: array<u32>;
fn byte(v: f32) -> u32 { return u32(i32(round(v))) & 0xffu; }
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = (wid.y * 65535u + wid.x) * 64u + lid; // (token, block)
  if (i >= step[0] * BLOCKS) { return; }
  var v: array<vec4<f32>, 16>;
  var amax = 0.0;
  var sum = 0.0;
  for (var j = 0u; j < 16u; j++) {
    v[j] = x[i * 16u + j];
    amax = max(amax, max(max(abs(v[j].x), abs(v[j].y)), max(abs(v[j].z), abs(v[j].w))));
    sum += (v[j].x + v[j].y) + (v[j].z + v[j].w);
  }
  let inv = select(0.0, 127.0 / amax, amax > 0.0);
  xscale[i] = vec2<f32>(amax / 127.0, sum);
  // 8 columns (two vec4) -> the even columns' bytes, then the odd columns'
  for (var j = 0u; j < 4u; j++) {
    let a = v[4u * j] * inv;
    let b = v[4u * j + 1u] * inv;
    let c = v[4u * j + 2u] * inv;
    let d = v[4u * j + 3u] * inv;
    xq[i * 4u + j] = vec4<u32>(
      byte(a.x) | (byte(a.z) << 8u) | (byte(b.x) << 16u) | (byte(b.z) << 24u),
      byte(a.y) | (byte(a.w) << 8u) | (byte(b.y) << 16u) | (byte(b.w) << 24u),
      byte(c.x) | (byte(c.z) << 8u) | (byte(d.x) << 16u) | (byte(d.z) << 24u),
      byte(c.y) | (byte(c.w) << 8u) | (byte(d.y) << 16u) | (byte(d.w) << 24u));
  }
}
`;
}

/** Workgroups of quantizeBlocksWgsl for T tokens. */
export function quantizeBlocksGrid(T: number, cols: number): [number, number, number] {
  const n = Math.max(1, Math.ceil((T * cols) / INT8_BLOCK / 64));
  return n <= 65535 ? [n, 1, 1] : [65535, Math.ceil(n / 65535), 1];
}

/**
 * `fn NAME(lid, v) -> f32`: the 64 invocations' v combined by `combine(a, b)` in a tree of fixed order
 * (every invocation calls it; the result is read by all before `part` is written again).
 */
const workgroupReduce = (name: string, combine: (a: string, b: string) => string, size: number) => `fn ${name}(lid: u32, v: f32) -> f32 {
  part[lid] = v;
  workgroupBarrier();
  for (var w = ${size / 2}u; w > 0u; w = w / 2u) {
    if (lid < w) { part[lid] = ${combine('part[lid]', 'part[lid + w]')}; }
    workgroupBarrier();
  }
  let m = part[0];
  workgroupBarrier();
  return m;
}`;

/** WGSL shared by the 'row' kernels (workgroups of `size`, a power of 2): a value to an int8 byte, and the workgroup's largest value and sum. */
const rowHelpers = (size: number) => `var<workgroup> part: array<f32, ${size}>;
fn byte(v: f32) -> u32 { return u32(i32(round(v))) & 0xffu; }
${workgroupReduce('workgroup_max', (a, b) => `max(${a}, ${b})`, size)}
${workgroupReduce('workgroup_sum', (a, b) => `${a} + ${b}`, size)}`;
const ROW_HELPERS = rowHelpers(64);

/**
 * The 'tiles' layout of int8 rows (matrix rows or tokens; PDVM_I8_DIRECT=tTT): tiles of 16 rows x 128
 * bytes (512 words, the rows one after another inside), tile (row / 16, byte / 128) at index
 * (row / 16) * cols / 128 + byte / 128. Each of the direct kernel's subgroup-matrix operands (16 rows x
 * 32 bytes) lies in one tile, loaded through a pointer to it at offset 0, 8, 16 or 24 words and stride
 * 32 words: a constant offset and stride into a fixed-size array, which Dawn's robustness transform
 * leaves alone (a load at a computed offset into a runtime-sized array gets a bounds check and a select
 * or a branch). The stride is 32 words, not 8, so that it is at least a row of the matrix whether a
 * version of the transform counts i8 strides in words or in bytes (one that counts bytes raises a
 * smaller stride to 32).
 * `tiledWord(kt)`: the WGSL index of word w (bytes 4w..4w+3) of row r; kt = cols / 128.
 */
export type Int8Layout = 'rows' | 'tiles';
const tiledWord = (kt: number) => `fn tiled_word(r: u32, w: u32) -> u32 { return ((r / 16u) * ${kt}u + w / 32u) * 512u + (r % 16u) * 32u + w % 32u; }`;

/**
 * Where quantize_tokens takes x from: x itself ('plain'); x's RMSNorm, x * rsqrt(mean(x^2) + eps) * w,
 * also written to xn ('norm': the batched step's norms, kernels/rmsnorm.ts's arithmetic with the sum
 * of squares in the workgroup's order); silu(gate) * up of the rows of gate_up (T x 2 cols), also
 * written to act ('swiglu', kernels/swiglu.ts's arithmetic). The fused forms spare the batched step a
 * dispatch before each int8 product of few tokens.
 */
export type TokensSource = { kind: 'plain' } | { kind: 'norm'; eps: string } | { kind: 'swiglu' };

/**
 * Scaling 'row': x (T x cols f32) -> xq, int8 per token in natural column order (cols / 16 vec4 a
 * token), xscale[t] = (max |x| / 127 over the token, 0). A workgroup of 64 a token, its invocations
 * striding over the token's vec4s. Bindings: 'plain' x, xq, xscale, step; 'norm' x, w, xn, xq,
 * xscale, step; 'swiglu' gate_up, act, xq, xscale, step.
 */
export function quantizeTokensWgsl(cols: number, source: TokensSource = { kind: 'plain' }, layout: Int8Layout = 'rows'): string {
  if (cols % INT8_BLOCK !== 0) throw new Error(`quantize_tokens: ${cols} columns are not whole blocks of ${INT8_BLOCK}`);
  if (layout === 'tiles' && cols % 128 !== 0) throw new Error(`quantize_tokens: ${cols} columns are not whole tiles of 128`);
  const k = source.kind;
  const inputs = k === 'plain'
    ? '@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;'
    : k === 'norm'
      ? `@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> xn: array<vec4<f32>>;`
      : `@group(0) @binding(0) var<storage, read> gate_up: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> act: array<vec4<f32>>;`;
  const first = k === 'plain' ? 1 : k === 'norm' ? 3 : 2;
  // the value of x's vec4 j (written where the source makes it), and where pass 2 reads it again
  const value = k === 'plain'
    ? 'let v = x[t * N + j];'
    : k === 'norm'
      ? 'let v = x[t * N + j] * rs * w[j];\n    xn[t * N + j] = v;'
      : 'let g = gate_up[t * 2u * N + j];\n    let v = g / (1.0 + exp(-g)) * gate_up[t * 2u * N + N + j];\n    act[t * N + j] = v;';
  const again = k === 'plain' ? 'x' : k === 'norm' ? 'xn' : 'act';
  // a workgroup a token: 256 invocations where only a max is taken (the same bytes whatever the size),
  // 64 for the norm, whose sum of squares keeps the order kernels/rmsnorm.ts adds in
  const WG = k === 'norm' ? 64 : 256;
  return `const N = ${cols / 4}u; // vec4 a token
${inputs}
@group(0) @binding(${first}) var<storage, read_write> xq: array<u32>;
@group(0) @binding(${first + 1}) var<storage, read_write> xscale: array<vec2<f32>>;
@group(0) @binding(${first + 2}) var<storage, read> step: array<u32>;
${rowHelpers(WG)}
${layout === 'tiles' ? tiledWord(cols / 128) : ''}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let t = wid.y * 65535u + wid.x;
  if (t >= step[0]) { return; } // uniform: the whole workgroup has one token
${k === 'norm' ? `  var ss = 0.0;
  for (var j = lid; j < N; j += ${WG}u) { let v = x[t * N + j]; ss += dot(v, v); }
  let rs = inverseSqrt(workgroup_sum(lid, ss) / f32(N * 4u) + ${source.eps});
` : ''}  var amax = 0.0;
  for (var j = lid; j < N; j += ${WG}u) {
    ${value}
    let a = abs(v);
    amax = max(amax, max(max(a.x, a.y), max(a.z, a.w)));
  }
  let m = workgroup_max(lid, amax);
  let inv = select(0.0, 127.0 / m, m > 0.0);
  if (lid == 0u) { xscale[t] = vec2<f32>(m / 127.0, 0.0); }
  for (var j = lid; j < N; j += ${WG}u) { // this invocation's own values of the first loop
    let a = ${again}[t * N + j] * inv;
    xq[${layout === 'tiles' ? 'tiled_word(t, j)' : 't * N + j'}] = byte(a.x) | (byte(a.y) << 8u) | (byte(a.z) << 16u) | (byte(a.w) << 24u);
  }
}
`;
}

/** Workgroups of quantizeTokensWgsl for T tokens. */
export function quantizeTokensGrid(T: number): [number, number, number] {
  const n = Math.max(1, T);
  return n <= 65535 ? [n, 1, 1] : [65535, Math.ceil(n / 65535), 1];
}

/**
 * Scaling 'row', once a matrix: its q4 g64 values decoded (u scale + min, as the f32 kernels decode
 * them) and rounded to int8 with one scale a row: w8 (rows x cols / 4 u32, natural column order) and
 * wscale[r] = max |W[r, :]| / 127. A workgroup of 64 a row, each invocation cols / 64 columns (one
 * group: 8 q4 words in, 16 words out). `scalesOnly` (scaling 'row-q4'): only wrow[r] = (max / 127,
 * 127 / max), the kernel rounding the q4 words itself as this one would.
 */
export function q4ToInt8RowsWgsl(rows: number, cols: number, scalesOnly = false, layout: Int8Layout = 'rows'): string {
  if (cols % INT8_BLOCK !== 0) throw new Error(`q4_to_int8_rows: ${cols} columns are not whole groups of ${INT8_BLOCK}`);
  if (layout === 'tiles' && (rows % 16 !== 0 || cols % 128 !== 0)) throw new Error(`q4_to_int8_rows: ${rows} x ${cols} is not whole tiles of 16 x 128`);
  const G = cols / INT8_BLOCK;
  return `const ROWS = ${rows}u;
const G = ${G}u;
@group(0) @binding(0) var<storage, read> qweight: array<u32>;
@group(0) @binding(1) var<storage, read> scale_min: array<u32>;
${scalesOnly ? '@group(0) @binding(2) var<storage, read_write> wrow: array<vec2<f32>>; // (scale, 127 / max) a row' : `@group(0) @binding(2) var<storage, read_write> w8: array<u32>;
@group(0) @binding(3) var<storage, read_write> wscale: array<f32>;`}
${ROW_HELPERS}
${layout === 'tiles' ? tiledWord(cols / 128) : ''}
fn decoded(r: u32, g: u32, c: u32) -> f32 {
  let sm = unpack2x16float(scale_min[r * G + g]);
  return f32((qweight[r * G * 8u + g * 8u + c / 8u] >> ((c % 8u) * 4u)) & 15u) * sm.x + sm.y;
}
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let r = wid.y * 65535u + wid.x;
  if (r >= ROWS) { return; } // uniform: the whole workgroup has one row
  var amax = 0.0;
  for (var g = lid; g < G; g += 64u) {
    for (var c = 0u; c < 64u; c++) { amax = max(amax, abs(decoded(r, g, c))); }
  }
  let m = workgroup_max(lid, amax);
  let inv = select(0.0, 127.0 / m, m > 0.0);
${scalesOnly ? '  if (lid == 0u) { wrow[r] = vec2<f32>(m / 127.0, inv); }' : `  if (lid == 0u) { wscale[r] = m / 127.0; }
  for (var g = lid; g < G; g += 64u) {
    for (var c = 0u; c < 64u; c += 4u) {
      w8[${layout === 'tiles' ? 'tiled_word(r, g * 16u + c / 4u)' : 'r * G * 16u + g * 16u + c / 4u'}] = byte(decoded(r, g, c) * inv) | (byte(decoded(r, g, c + 1u) * inv) << 8u)
        | (byte(decoded(r, g, c + 2u) * inv) << 16u) | (byte(decoded(r, g, c + 3u) * inv) << 24u);
    }
  }`}
}
`;
}

/** Workgroups of q4ToInt8RowsWgsl. */
export function q4ToInt8RowsGrid(rows: number): [number, number, number] {
  return rows <= 65535 ? [rows, 1, 1] : [65535, Math.ceil(rows / 65535), 1];
}

/**
 * The product (see the file's comment). Bindings: qweight (as vec4<u32>), scale_min, xq, xscale, y,
 * step, bias. Workgroup x = token tile, y = row tile. Requires subgroups of 32 (8 results of a
 * 16 x 16 matrix an invocation). `lab: 'no-scale'` (timing only, wrong results): the i32 products
 * summed over every group and scaled once at the end, without the per-group round trip: what the
 * staging and the tensor cores alone take.
 */
export function matmulInt8Wgsl(s: TiledMatmulShape, indexing: SubgroupIndexing, tile: Int8Tile, syntax: SubgroupMatrixSyntax, units: Int8Units, lab?: 'no-scale', scaling: Int8Scaling = 'group', split?: Int8Split): string {
  if (s.weight.encoding !== 'q4' || !int8Supports(s)) throw new Error('matmul_int8: only q4 matrices in groups of 64 over whole groups');
  const { am: AM, an: AN, gm: GM, gn: GN } = tile;
  const { tokens: TM, rows: TN } = int8TileSize(tile);
  const NSG = GM * GN, WG = NSG * 32;
  const blocks = sharedBlocks(tile, scaling);
  const byRow = scaling !== 'group', w8 = scaling === 'row'; // one scale a row and token; W as int8 bytes (else q4 words)
  if (tile.double && (!byRow || lab)) throw new Error(`matmul_int8: two staged buffers (tile ${int8TileName(tile)}) need scaling by row`);
  if (!int8TileFits(tile, scaling)) throw new Error(`matmul_int8: tile ${int8TileName(tile)} does not fit its workgroup with scaling '${scaling}'`);
  if (byRow && tile.epilogue === 'stage') throw new Error(`matmul_int8: scaling '${scaling}' has no per-stage epilogue (tile ${int8TileName(tile)})`);
  const DB = tile.double === true;
  // one i32 sum over every stage, scaled once at the end: 'row' scaling, or the lab's timing variant
  const byStage = tile.epilogue === 'stage' && !byRow, noScale = lab === 'no-scale' || byRow;
  const CS = blocks.over ? 0 : blocks.staged * (DB ? 2 : 1); // the results' first block: over the staged operands, or after them
  const parts = split && split.parts > 1 ? split : null;
  if (parts && (!byRow || (s.cols / INT8_BLOCK) % parts.parts !== 0)) throw new Error(`matmul_int8: a split into ${parts.parts} needs scaling by row and whole stages a part (${s.cols / INT8_BLOCK} stages)`);
  const W4 = w8 ? s.cols / 16 : s.weight.wordsPerRow / 4; // vec4 words a row (int8 or q4)
  const NX = TM * 4, NW = TN * (w8 ? 4 : 2); // vec4 loads a stage: x (4 a token), W (2 a row of q4, 4 of int8)
  const u = units === 'words' ? 4 : 1;
  // blocks of the staged buffer of this stage (two buffers: from sb), as a prefix of a sum
  const sb = (rest: string) => (DB ? `sb + ${rest}` : rest);
  const L = (block: string, kk: number) => subgroupMatrixLoadWgsl(syntax, 'subgroup_matrix_left<i8, 32, 16>', `&smem[${block}]`, `${kk / u}u`, false, `${STRIDE / u}u`);
  const R = (block: string, kk: number) => subgroupMatrixLoadWgsl(syntax, 'subgroup_matrix_right<i8, 16, 32>', `&smem[${block}]`, `${kk / u}u`, true, `${STRIDE / u}u`);
  const tiles: [number, number][] = [];
  for (let i = 0; i < AM; i++) for (let j = 0; j < AN; j++) tiles.push([i, j]);
  const byId = indexing === 'subgroup-id';
  // the block of result n of this subgroup in the shared array, and its scaling into the f32 sums
  const slot = (n: number) => (byStage ? `${CS}u + g * ${AM * AN}u + ${n}u` : `${CS}u + g * 2u + ${n % 2}u`);
  const scaleInto = ([i, j]: [number, number], n: number) => `    {
      let b = ${slot(n)};
      let o = er * 16u + ec;
      let ca = vec4<f32>(vec4<i32>(smem[b][o], smem[b][o + 1u], smem[b][o + 2u], smem[b][o + 3u]));
      let cb = vec4<f32>(vec4<i32>(smem[b][o + 4u], smem[b][o + 5u], smem[b][o + 6u], smem[b][o + 7u]));
      let xv = xsc[p + tbl + ${16 * i}u + er];
      let r = q + rbl + ${16 * j}u + ec;
      let w0 = wsc[r]; let w1 = wsc[r + 1u]; let w2 = wsc[r + 2u]; let w3 = wsc[r + 3u];
      let w4 = wsc[r + 4u]; let w5 = wsc[r + 5u]; let w6 = wsc[r + 6u]; let w7 = wsc[r + 7u];
      f${i}${j}a += ca * (xv.x * vec4<f32>(w0.x, w1.x, w2.x, w3.x)) + xv.y * vec4<f32>(w0.y, w1.y, w2.y, w3.y);
      f${i}${j}b += cb * (xv.x * vec4<f32>(w4.x, w5.x, w6.x, w7.x)) + xv.y * vec4<f32>(w4.y, w5.y, w6.y, w7.y);
    }`;
  const storeResult = ([i, j]: [number, number], n: number) => `    ${subgroupMatrixStoreWgsl(syntax, `&smem[${slot(n)}]`, '0u', `c${i}${j}`, false, '16u')};`;
  const perGroup = noScale
    ? DB ? '    // (two buffers: the next stage is staged into the other one, after the barrier above)' : '    workgroupBarrier(); // every subgroup\'s loads of the staged operands done before the next stage goes over them'
    : byStage
      ? `    workgroupBarrier(); // every subgroup's loads of the staged operands done: the results go over them
${tiles.map(storeResult).join('\n')}
    workgroupBarrier();
${tiles.map(scaleInto).join('\n')}
    workgroupBarrier(); // the results read before the next stage is staged over them`
      : tiles.map((t, n) => `${storeResult(t, n)}\n    workgroupBarrier();\n${scaleInto(t, n)}`).join('\n');
  const finalNoScale = noScale ? `  {
    let p = 0u;
    let q = 0u;
${byRow ? `    // the token's and the row's scales, (s, 0) as the scaling below takes them
    if (lid < ${TM}u) { xsc[lid] = xscale[min(tok0 + lid, T - 1u)]; }
    if (lid < ${TN}u) { let r = row0 + lid; wsc[lid] = vec2<f32>(select(0.0, wrow[min(r, ROWS - 1u)]${w8 ? '' : '.x'}, r < ROWS), 0.0); }
` : ''}    workgroupBarrier();
${tiles.map((t, n) => `${storeResult(t, n)}\n    workgroupBarrier();\n${scaleInto(t, n)}`).join('\n')}
  }` : '';
  const results = tiles.map(([i, j]) => `    var c${i}${j} = subgroup_matrix_result<i32, 16, 16>();`).join('\n');
  return `enable chromium_experimental_subgroup_matrix;
${byId ? 'enable subgroups;\nrequires subgroup_id;\n' : ''}diagnostic(off, subgroup_uniformity);
const ROWS = ${s.rows}u;
const STAGES = ${s.cols / INT8_BLOCK}u;
const W4 = ${W4}u;
const GROUPS = ${s.weight.groups}u;
@group(0) @binding(0) var<storage, read> qweight: array<vec4<u32>>;${w8 ? ' // int8 a weight' : ''}
${w8 ? '@group(0) @binding(1) var<storage, read> wrow: array<f32>; // a scale a row' : '@group(0) @binding(1) var<storage, read> scale_min: array<u32>;'}
@group(0) @binding(2) var<storage, read> xq: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> xscale: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> step: array<u32>;
${byRow && !w8 ? '@group(0) @binding(6) var<storage, read> wrow: array<vec2<f32>>; // (scale, 127 / max) a row\n' : ''}${s.bias && !parts ? `@group(0) @binding(${byRow && !w8 ? 7 : 6}) var<storage, read> bias: array<f32>;` : ''}
${byRow && !w8 ? Q4_ROW_BYTES : ''}
// blocks of 16 rows, stride ${STRIDE} bytes: x (${TM} tokens, 64 k) int8 from block 0, W (${TN} rows, 64 k) int8
// (${byRow ? 'rounded a row' : 'nibbles 0..15'}) from block ${blocks.xs}${DB ? ` (the second buffer from block ${blocks.staged})` : ''}; the i32 results from block ${CS}, one a block
// (${byStage ? 'every result of the stage, over the staged operands' : 'two slots a subgroup'})
var<workgroup> smem: array<array<i32, ${BLOCK}>, ${blocks.total}>;
var<workgroup> xsc: array<vec2<f32>, ${2 * TM}>; // (s, block sum) a token, two stages
var<workgroup> wsc: array<vec2<f32>, ${2 * TN}>; // (scale, min) a row, two stages

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32${byId ? ', @builtin(subgroup_id) sg_id: u32, @builtin(subgroup_invocation_id) sg_lane: u32' : ''}) {
  let T = step[0];
  let tok0 = wid.x * ${TM}u;
  let row0 = wid.y * ${TN}u;
  let g = ${byId ? 'sg_id' : 'lid / 32u'};
  let lane = ${byId ? 'sg_lane' : 'lid % 32u'};
  let tbl = (g / ${GN}u) * ${16 * AM}u; // the subgroup's first token and row within the tile
  let rbl = (g % ${GN}u) * ${16 * AN}u;
  let er = lane / 2u; // this invocation's row of a 16 x 16 result, and its 8 columns from ec
  let ec = (lane % 2u) * 8u;
${tiles.map(([i, j]) => `  var f${i}${j}a = vec4<f32>(0.0);\n  var f${i}${j}b = vec4<f32>(0.0);`).join('\n')}
  // a stage's words, loaded into registers a stage ahead
  var rx: array<vec4<u32>, ${Math.ceil(NX / WG)}>;
  var rw: array<vec4<u32>, ${Math.ceil(NW / WG)}>;
${parts ? `  let k0 = wid.z * ${s.cols / INT8_BLOCK / parts.parts}u; // this part's stages
  let k1 = k0 + ${s.cols / INT8_BLOCK / parts.parts}u;
` : ''}${byRow ? '' : '  var rxs = vec2<f32>(0.0);\n  var rws = 0u;\n'}${byRow && !w8 ? rowQ4Registers(NW, WG, TN) : ''}${stageLoads(parts ? 'k0' : '0u', NX, NW, WG, TM, scaling)}
${noScale ? results : ''}
  for (var kb = ${parts ? 'k0' : '0u'}; kb < ${parts ? 'k1' : 'STAGES'}; kb++) {
    let p = (kb % 2u) * ${TM}u;
    let q = (kb % 2u) * ${TN}u;
${DB ? `    let sb = (kb % 2u) * ${blocks.staged}u; // this stage's buffer (its first block)
` : ''}${Array.from({ length: Math.ceil(NX / WG) }, (_, n) => stageBytes(n, NX, WG, 'rx', sb(''))).join('\n')}
${Array.from({ length: Math.ceil(NW / WG) }, (_, n) => w8 ? stageBytes(n, NW, WG, 'rw', sb(`${blocks.xs}u + `)) : byRow ? stageQ4Rounded(n, NW, WG, sb(`${blocks.xs}u + `)) : `    ${guard(n, NW, WG)}{
      let e = lid + ${n * WG}u; // row e / 2, columns 32 (e % 2): each word's even nibbles, then its odd ones
      let b = ${blocks.xs}u + (e / 2u) / 16u;
      let o = ((e / 2u) % 16u) * ${STRIDE / 4}u + (e % 2u) * 8u;
      let w = rw[${n}];
      let lo = bitcast<vec4<i32>>(w & vec4<u32>(0x0f0f0f0fu));
      let hi = bitcast<vec4<i32>>((w >> vec4<u32>(4u)) & vec4<u32>(0x0f0f0f0fu));
      smem[b][o] = lo.x; smem[b][o + 1u] = hi.x; smem[b][o + 2u] = lo.y; smem[b][o + 3u] = hi.y;
      smem[b][o + 4u] = lo.z; smem[b][o + 5u] = hi.z; smem[b][o + 6u] = lo.w; smem[b][o + 7u] = hi.w;
    }`).join('\n')}
${byRow ? '' : `    if (lid < ${TM}u) { xsc[p + lid] = rxs; }
    if (lid < ${TN}u) { wsc[q + lid] = unpack2x16float(rws); }
`}    workgroupBarrier();
    if (kb + 1u < ${parts ? 'k1' : 'STAGES'}) {
${stageLoads('kb + 1u', NX, NW, WG, TM, scaling).replace(/^/gm, '  ')}
    }
    // hot loop: the group's i32 products, two k steps of 32
${noScale ? '' : results}
${[0, 32].map((kk) => [
    ...Array.from({ length: AM }, (_, i) => `    let l${i}k${kk} = ${L(`${sb('')}tbl / 16u + ${i}u`, kk)};`),
    ...Array.from({ length: AN }, (_, j) => `    let r${j}k${kk} = ${R(`${sb(`${blocks.xs}u + `)}rbl / 16u + ${j}u`, kk)};`),
    ...tiles.map(([i, j]) => `    c${i}${j} = subgroupMatrixMultiplyAccumulate(l${i}k${kk}, r${j}k${kk}, c${i}${j});`),
  ].join('\n')).join('\n')}
    // the i32 results through workgroup memory into the f32 sums, scaled by this group's scales
${perGroup}
  }
${finalNoScale}
  // epilogue: this invocation's 8 results of each 16 x 16 tile (one token, 8 rows)${parts ? `; the part's sums to y's part z (int8_split_combine adds them)` : ''}
${tiles.map(([i, j]) => `  for (var e = 0u; e < 8u; e++) {
    let t = tok0 + tbl + ${16 * i}u + er;
    let r = row0 + rbl + ${16 * j}u + ec + e;
    let v = select(f${i}${j}b[e % 4u], f${i}${j}a[e % 4u], e < 4u);
    ${parts ? `if (t < T && r < ROWS) { y[(wid.z * ${parts.maxTokens}u + t) * ROWS + r] = v; }` : epilogue(s, 't', 'r', 'v')}
  }`).join('\n')}
}
`;
}

/**
 * Round `n` of a stage's copy of int8 words from registers `reg` (vec4<u32>, 16 bytes each, 4 a token
 * or row) into the shared array from word `base` (a WGSL prefix of the offset's sum, '' for 0): piece e is
 * token or row e / 4, bytes 16 (e % 4).
 */
function stageBytes(n: number, count: number, WG: number, reg: string, base: string): string {
  return `    ${guard(n, count, WG)}{
      let e = lid + ${n * WG}u; // token or row e / 4, bytes 16 (e % 4)
      let b = ${base}(e / 4u) / 16u;
      let o = ((e / 4u) % 16u) * ${STRIDE / 4}u + (e % 4u) * 4u;
      let v = bitcast<vec4<i32>>(${reg}[${n}]);
      smem[b][o] = v.x; smem[b][o + 1u] = v.y; smem[b][o + 2u] = v.z; smem[b][o + 3u] = v.w;
    }`;
}

/**
 * Scaling 'row-q4': a q4 word (8 columns) decoded as q4_to_int8_rows decodes it (nibble x scale + min)
 * and rounded to int8 with the row's 127 / max: two words of 4 bytes in natural column order.
 */
const Q4_ROW_BYTES = `fn q4_row_bytes(w: u32, sm: vec2<f32>, inv: f32) -> vec2<u32> {
  let lo = (vec4<f32>((vec4<u32>(w) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u)) * sm.x + sm.y) * inv;
  let hi = (vec4<f32>((vec4<u32>(w) >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(15u)) * sm.x + sm.y) * inv;
  let a = vec4<u32>(vec4<i32>(round(lo))) & vec4<u32>(0xffu);
  let b = vec4<u32>(vec4<i32>(round(hi))) & vec4<u32>(0xffu);
  return vec2<u32>(a.x | (a.y << 8u) | (a.z << 16u) | (a.w << 24u), b.x | (b.y << 8u) | (b.z << 16u) | (b.w << 24u));
}`;

/** Scaling 'row-q4': each load round's group scale and min (a stage ahead) and its row's 127 / max (once). */
function rowQ4Registers(NW: number, WG: number, TN: number): string {
  const n = Math.ceil(NW / WG);
  return `  var rsm: array<u32, ${n}>;
  var rinv: array<f32, ${n}>;
${Array.from({ length: n }, (_, k) => `  { let r = row0 + (lid + ${k * WG}u) / 2u; rinv[${k}] = select(0.0, wrow[min(r, ROWS - 1u)].y, r < ROWS && lid + ${k * WG}u < ${2 * TN}u); }`).join('\n')}
`;
}

/**
 * Scaling 'row-q4', round `n` of a stage's copy of W: piece e is row e / 2, columns 32 (e % 2): its 4 q4
 * words rounded to 8 words of int8 in natural order.
 */
function stageQ4Rounded(n: number, NW: number, WG: number, base: string): string {
  return `    ${guard(n, NW, WG)}{
      let e = lid + ${n * WG}u; // row e / 2, columns 32 (e % 2)
      let k = ${base}(e / 2u) / 16u;
      let o = ((e / 2u) % 16u) * ${STRIDE / 4}u + (e % 2u) * 8u;
      let w = rw[${n}];
      let sm = unpack2x16float(rsm[${n}]);
      let a = q4_row_bytes(w.x, sm, rinv[${n}]); let b = q4_row_bytes(w.y, sm, rinv[${n}]);
      let c = q4_row_bytes(w.z, sm, rinv[${n}]); let d = q4_row_bytes(w.w, sm, rinv[${n}]);
      smem[k][o] = bitcast<i32>(a.x); smem[k][o + 1u] = bitcast<i32>(a.y); smem[k][o + 2u] = bitcast<i32>(b.x); smem[k][o + 3u] = bitcast<i32>(b.y);
      smem[k][o + 4u] = bitcast<i32>(c.x); smem[k][o + 5u] = bitcast<i32>(c.y); smem[k][o + 6u] = bitcast<i32>(d.x); smem[k][o + 7u] = bitcast<i32>(d.y);
    }`;
}

/** `if (e < n) ` where the n loads of a stage do not fill the last round of WG invocations. */
function guard(round: number, n: number, WG: number): string {
  return (round + 1) * WG > n ? `if (lid + ${round * WG}u < ${n}u) ` : '';
}

/**
 * Loads of stage `kb` into registers: x's 16-byte pieces (4 a token), W's vec4 words (2 a row: 32
 * columns each), the token's (s, sum) and the row's (scale, min). Past the rows: zeros.
 */
function stageLoads(kb: string, NX: number, NW: number, WG: number, TM: number, scaling: Int8Scaling): string {
  const per = scaling === 'row' ? 4 : 2; // vec4 words of W a row a stage
  return [
    ...Array.from({ length: Math.ceil(NX / WG) }, (_, n) => `  ${guard(n, NX, WG)}{ rx[${n}] = xq[(tok0 + (lid + ${n * WG}u) / 4u) * STAGES * 4u + (${kb}) * 4u + (lid + ${n * WG}u) % 4u]; }`),
    ...Array.from({ length: Math.ceil(NW / WG) }, (_, n) => `  ${guard(n, NW, WG)}{
    let r = row0 + (lid + ${n * WG}u) / ${per}u;
    rw[${n}] = select(vec4<u32>(0u), qweight[min(r, ROWS - 1u) * W4 + (${kb}) * ${per}u + (lid + ${n * WG}u) % ${per}u], r < ROWS);${scaling === 'row-q4' ? `
    rsm[${n}] = select(0u, scale_min[min(r, ROWS - 1u) * GROUPS + (${kb})], r < ROWS);` : ''}
  }`),
    ...(scaling !== 'group' ? [] : [
      `  rxs = xscale[(tok0 + min(lid, ${TM - 1}u)) * STAGES + (${kb})];`,
      `  { let r = row0 + lid; rws = select(0u, scale_min[min(r, ROWS - 1u) * GROUPS + (${kb})], r < ROWS); }`,
    ]),
  ].join('\n');
}

/**
 * Scaling 'row', few tokens, operands straight from global memory (PDVM_I8_DIRECT; measured slower
 * than the staged tiles on the H100, 2026-12-06: the subgroup-matrix loads from storage buffers reach
 * 0.46 TB/s at best, and each token tile's x loads cost as much again, so it is a lab variant):
 * the int8 rows (q4ToInt8Rows) and x's int8 rows (quantize_tokens) loaded by the subgroup-matrix loads
 * themselves, no staging and no barrier in the loop. A workgroup of 8 subgroups takes 16 rows and
 * 16 x `tokenTiles` tokens; subgroup g sums the g-th eighth of the columns; the 8 i32 results meet in
 * workgroup memory and are added exactly (so neither the split nor the tokens sharing the step change
 * a result: i32 sums), then scaled once as the 'row' kernel scales them: y = f32(acc) (s_t S_r).
 * Needs rows % 16 == 0 and cols % 256 == 0 (int8DirectFits). Bindings: w8, wrow (f32 a row), xq,
 * xscale, y, step, bias. `layout` 'tiles' (offsets in words only): w8 and xq in tiles of 16 rows x 128
 * bytes (Int8Layout), each operand loaded through a pointer to its tile at a constant offset (no
 * robustness check); subgroup g takes the row's tiles g, g + 8, ..., four k steps each.
 */
export function matmulInt8DirectWgsl(s: TiledMatmulShape, syntax: SubgroupMatrixSyntax, units: Int8Units, tokenTiles: number, indexing: SubgroupIndexing = 'invocation-index', layout: Int8Layout = 'rows'): string {
  if (!int8DirectFits(s)) throw new Error(`matmul_int8_direct: ${s.rows} x ${s.cols} needs rows % 16 == 0 and cols % 256 == 0`);
  if (layout === 'tiles' && units !== 'words') throw new Error('matmul_int8_direct: the tiles layout takes offsets in words');
  const u = units === 'words' ? 4 : 1, TT = tokenTiles, tiled = layout === 'tiles';
  const tiles = Array.from({ length: TT }, (_, i) => i);
  const L = (i: number, k: string) => subgroupMatrixLoadWgsl(syntax, 'subgroup_matrix_left<i8, 32, 16>', '&xq', `((tok0 + ${16 * i}u) * COLS + ${k}) / ${u}u`, false, `${s.cols / u}u`);
  const R = (k: string) => subgroupMatrixLoadWgsl(syntax, 'subgroup_matrix_right<i8, 16, 32>', '&w8', `(row0 * COLS + ${k}) / ${u}u`, true, `${s.cols / u}u`);
  // 'tiles': k step j (32 bytes) of tile tt of the row block, at word 8j of the tile, stride 32 words
  const LT = (i: number, j: number) => subgroupMatrixLoadWgsl(syntax, 'subgroup_matrix_left<i8, 32, 16>', `&xq[(tok0 / 16u + ${i}u) * KT + tt]`, `${8 * j}u`, false, '32u');
  const RT = (j: number) => subgroupMatrixLoadWgsl(syntax, 'subgroup_matrix_right<i8, 16, 32>', `&w8[(row0 / 16u) * KT + tt]`, `${8 * j}u`, true, '32u');
  const words = tiled ? 'array<array<i32, 512>>' : 'array<i32>';
  // two k steps an iteration where they divide, both weight loads issued before the products
  const U2 = (s.cols / 256) % 2 === 0 ? 2 : 1;
  const ks = Array.from({ length: U2 }, (_, j) => j);
  const byId = indexing === 'subgroup-id'; // the way of finding the subgroup that passed the device's self-test
  return `enable chromium_experimental_subgroup_matrix;
${byId ? 'enable subgroups;\nrequires subgroup_id;\n' : ''}diagnostic(off, subgroup_uniformity);
const ROWS = ${s.rows}u;
const COLS = ${s.cols}u;
const STEPS = ${s.cols / 256}u; // k steps of 32 a subgroup
const KT = ${s.cols / 128}u; // tiles of 128 bytes a row ('tiles' layout)
const TILE_ITERS = ${Math.ceil(s.cols / 128 / 8)}u; // a subgroup's tiles at most
@group(0) @binding(0) var<storage, read> w8: ${words};
@group(0) @binding(1) var<storage, read> wrow: array<f32>;
@group(0) @binding(2) var<storage, read> xq: ${words};
@group(0) @binding(3) var<storage, read> xscale: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> step: array<u32>;
${s.bias ? '@group(0) @binding(6) var<storage, read> bias: array<f32>;' : ''}
var<workgroup> smem: array<array<i32, 256>, ${TT * 8}>; // the 8 subgroups' i32 results, a token tile after another

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32${byId ? ', @builtin(subgroup_id) sg_id: u32' : ''}) {
  let T = step[0];
  let tok0 = wid.x * ${16 * TT}u;
  let row0 = wid.y * 16u;
  let g = ${byId ? 'sg_id' : 'lid / 32u'};
${tiles.map((i) => `  var c${i} = subgroup_matrix_result<i32, 16, 16>();`).join('\n')}
${tiled ? `  for (var q = 0u; q < TILE_ITERS; q++) {
    let tt = g + 8u * q; // this subgroup's tiles: g, g + 8, ...
    ${(s.cols / 128) % 8 === 0 ? '{ // every subgroup has TILE_ITERS tiles' : 'if (tt < KT) {'}
${[0, 1, 2, 3].map((j) => `      let r${j} = ${RT(j)};`).join('\n')}
${[0, 1, 2, 3].map((j) => tiles.map((i) => `      c${i} = subgroupMatrixMultiplyAccumulate(${LT(i, j)}, r${j}, c${i});`).join('\n')).join('\n')}
    }
  }` : `  for (var st = 0u; st < STEPS; st += ${U2}u) {
${ks.map((j) => `    let k${j} = (g * STEPS + st + ${j}u) * 32u; // bytes into the row\n    let r${j} = ${R(`k${j}`)};`).join('\n')}
${ks.map((j) => tiles.map((i) => `    c${i} = subgroupMatrixMultiplyAccumulate(${L(i, `k${j}`)}, r${j}, c${i});`).join('\n')).join('\n')}
  }`}
${tiles.map((i) => `  ${subgroupMatrixStoreWgsl(syntax, `&smem[${i * 8}u + g]`, '0u', `c${i}`, false, '16u')};`).join('\n')}
  workgroupBarrier();
  let tl = lid / 16u; // this invocation's token and row of each 16 x 16 result
  let n = lid % 16u;
${tiles.map((i) => `  {
    var acc = 0;
    for (var q = 0u; q < 8u; q++) { acc += smem[${i * 8}u + q][lid]; }
    let t = tok0 + ${16 * i}u + tl;
    let r = row0 + n;
    let v = f32(acc) * (xscale[min(t, T - 1u)].x * wrow[r]);
    ${epilogue(s, 't', 'r', 'v')}
  }`).join('\n')}
}
`;
}

/** Whether matmulInt8DirectWgsl takes the matrix. */
export function int8DirectFits(s: Pick<TiledMatmulShape, 'rows' | 'cols'>): boolean {
  return s.rows % 16 === 0 && s.cols % 256 === 0;
}
