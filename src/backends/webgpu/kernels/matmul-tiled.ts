/**
 * Prefill products y = W x over T tokens, matrix by matrix: each workgroup computes a tile of tokens x
 * rows, reading each weight tile once for its tile of tokens, dequantized (q4, q8) or unpacked (16-bit,
 * f32) into workgroup memory, then multiplied there:
 *   y[t * yStride + yOffset + r] (+)= sum_c W[r, c] x[t * cols + c]      (+ bias[yOffset + r])
 * Two kernels over the same weight readers:
 *   tiled f32 (the fallback, every device): 128 tokens x 128 rows a workgroup of 256, 8 x 8 outputs an
 *     invocation, K in steps of 16 through 16 KiB of workgroup memory (WebGPU's default limits);
 *   tensor cores (f16 x f16 -> f32 16x16x16 subgroup matrices, where device.ts's self-tests passed):
 *     x converted to f16 once a product (convert_f16); x and W (dequantized to f16) staged through
 *     workgroup memory 64 columns a stage, the next stage's words loaded into registers while this
 *     one multiplies; each subgroup 32 or 64 tokens x 64 rows as 16 x 16 results (TensorCoreTile;
 *     the other layouts are kept for bench/prefill-lab.ts, which measured them).
 * Weights: q4 (group a multiple of 8; 4-bit bitmaps expanded to q4 included), q8, dense f32/bf16/f16.
 * nm, csr and unexpanded bitmaps go through matmul-upg.ts's row kernel.
 */
import { COMMON, unpackPair, type DenseDtype } from './prelude.js';

export type TiledWeight =
  | { encoding: 'q4'; wordsPerRow: number; group: number; groups: number }
  | { encoding: 'q8'; wordsPerRow: number }
  | { encoding: 'dense'; dtype: DenseDtype; rowChunks: number };

export interface TiledMatmulShape {
  weight: TiledWeight;
  /** Rows of this matrix (or segment). */
  rows: number;
  cols: number;
  yStride: number;
  /** Column of y (and of bias) where row 0 lands. */
  yOffset: number;
  bias: boolean;
  residual: boolean;
}

export type TiledKernel = 'f32' | 'subgroup-matrix-f16';

/**
 * How the subgroup-matrix kernel finds its subgroup: the `subgroup_id` builtin (WGSL language feature
 * subgroup_id, subgroup-uniform under subgroup_uniformity), or local_invocation_index / subgroup size
 * (right where subgroups are consecutive invocations). device.ts self-tests them in that order.
 */
export type SubgroupIndexing = 'subgroup-id' | 'invocation-index';

/** Tokens x rows of one workgroup's tile of the f32 kernel. */
export const F32_TILE = { tokens: 128, rows: 128 };

/** Whether the tiled kernels take this weight (else the row kernel runs). */
export function tiledSupports(w: TiledWeight): boolean {
  return w.encoding !== 'q4' || w.group % 8 === 0;
}

/** The weight buffers' bindings (0..) and `w_slice(r, k0)`: W[r, k0 .. k0 + 8) as f32, zeros out of range. */
function weightReader(w: TiledWeight, rows: number): { bindings: string; count: number; code: string } {
  const head = `struct Slice { lo: vec4<f32>, hi: vec4<f32> }\nconst ROWS = ${rows}u;\n`;
  switch (w.encoding) {
    case 'q4':
      return {
        count: 2,
        bindings: '@group(0) @binding(0) var<storage, read> qweight: array<u32>;\n@group(0) @binding(1) var<storage, read> scale_min: array<u32>;',
        code: `${head}
fn w_slice(r: u32, k0: u32) -> Slice {
  let wi = k0 / 8u;
  if (r >= ROWS || wi >= ${w.wordsPerRow}u) { return Slice(vec4<f32>(0.0), vec4<f32>(0.0)); }
  let word = qweight[r * ${w.wordsPerRow}u + wi];
  let sm = unpack2x16float(scale_min[r * ${w.groups}u + k0 / ${w.group}u]); // (scale, min)
  let lo = vec4<f32>(vec4<u32>(word, word >> 4u, word >> 8u, word >> 12u) & vec4<u32>(15u));
  let hi = vec4<f32>(vec4<u32>(word >> 16u, word >> 20u, word >> 24u, word >> 28u) & vec4<u32>(15u));
  return Slice(lo * sm.x + sm.y, hi * sm.x + sm.y);
}`,
      };
    case 'q8':
      return {
        count: 2,
        bindings: '@group(0) @binding(0) var<storage, read> qweight: array<u32>;\n@group(0) @binding(1) var<storage, read> scales: array<u32>;',
        code: `${head}
fn int8x4(word: u32) -> vec4<f32> {
  let v = bitcast<vec4<i32>>(vec4<u32>(word << 24u, word << 16u, word << 8u, word));
  return vec4<f32>(v >> vec4<u32>(24u));
}
fn w_slice(r: u32, k0: u32) -> Slice {
  let wi = k0 / 4u;
  if (r >= ROWS || wi >= ${w.wordsPerRow}u) { return Slice(vec4<f32>(0.0), vec4<f32>(0.0)); }
  let scale = bitcast<f32>(scales[r]);
  let a = qweight[r * ${w.wordsPerRow}u + wi];
  var b = 0u;
  if (wi + 1u < ${w.wordsPerRow}u) { b = qweight[r * ${w.wordsPerRow}u + wi + 1u]; }
  return Slice(int8x4(a) * scale, int8x4(b) * scale);
}`,
      };
    case 'dense':
      if (w.dtype === 'f32') {
        return {
          count: 1,
          bindings: '@group(0) @binding(0) var<storage, read> W: array<vec4<u32>>;',
          code: `${head}
fn w_slice(r: u32, k0: u32) -> Slice {
  let ci = k0 / 4u;
  if (r >= ROWS || ci >= ${w.rowChunks}u) { return Slice(vec4<f32>(0.0), vec4<f32>(0.0)); }
  var hi = vec4<f32>(0.0);
  if (ci + 1u < ${w.rowChunks}u) { hi = bitcast<vec4<f32>>(W[r * ${w.rowChunks}u + ci + 1u]); }
  return Slice(bitcast<vec4<f32>>(W[r * ${w.rowChunks}u + ci]), hi);
}`,
        };
      }
      return {
        count: 1,
        bindings: '@group(0) @binding(0) var<storage, read> W: array<vec4<u32>>;',
        code: `${head}${unpackPair(w.dtype)}
fn w_slice(r: u32, k0: u32) -> Slice {
  let ci = k0 / 8u;
  if (r >= ROWS || ci >= ${w.rowChunks}u) { return Slice(vec4<f32>(0.0), vec4<f32>(0.0)); }
  let c = W[r * ${w.rowChunks}u + ci];
  return Slice(chunk_lo(c), chunk_hi(c));
}`,
      };
  }
}

/** Bindings after the weight's: x, y, step, bias. */
function ioBindings(first: number, bias: boolean): string {
  return `@group(0) @binding(${first}) var<storage, read> x: array<f32>;
@group(0) @binding(${first + 1}) var<storage, read_write> y: array<f32>;
@group(0) @binding(${first + 2}) var<storage, read> step: array<u32>;
${bias ? `@group(0) @binding(${first + 3}) var<storage, read> bias: array<f32>;` : ''}`;
}

/** WGSL storing value v of token t, row r with the epilogue (bias, residual), bounds checked. */
export function epilogue(s: TiledMatmulShape, t: string, r: string, v: string): string {
  return `if (${t} < T && ${r} < ROWS) {
        let o = ${t} * ${s.yStride}u + ${s.yOffset}u + ${r};
        var out = ${v}${s.bias ? ` + bias[${s.yOffset}u + ${r}]` : ''};
        ${s.residual ? 'out += y[o];' : ''}
        y[o] = out;
      }`;
}

/**
 * The fallback: 16 x 16 invocations, each tokens {4ty..4ty+3, 64+4ty..} x rows {4tx.., 64+4tx..}.
 * Workgroup memory k-major as vec4s of 4 tokens (or rows), the vec4 index XOR-swizzled by k so that
 * the transposing stores and the vec4 reads avoid bank conflicts: element (k, i) lives at
 * k * 128 + 4 * ((i / 4) ^ k) + i % 4.
 */
export function matmulTiledF32Wgsl(s: TiledMatmulShape): string {
  const w = weightReader(s.weight, s.rows);
  return `${COMMON}${w.code}
const COLS = ${s.cols}u;
${w.bindings}
${ioBindings(w.count, s.bias)}

var<workgroup> xs: array<vec4<f32>, 512>; // (16 k, 32 vec4 of tokens)
var<workgroup> ws: array<vec4<f32>, 512>; // (16 k, 32 vec4 of rows)

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let T = step[0];
  let row0 = wid.x * 128u;
  let tok0 = wid.y * 128u;
  let tx = lid % 16u;
  let ty = lid / 16u;
  var acc: array<vec4<f32>, 16>; // token i (0..7), row half h: acc[2i + h] over 4 rows
  for (var kb = 0u; kb < COLS; kb += 16u) {
    // x tile: 128 tokens x 16 k, 8 values an invocation (a token's 16 k by 16 neighbours)
    for (var i = 0u; i < 8u; i++) {
      let e = lid + 256u * i;
      let tt = e / 16u;
      let kk = e % 16u;
      let t = tok0 + tt;
      let c = kb + kk;
      var v = 0.0;
      if (t < T && c < COLS) { v = x[t * COLS + c]; }
      let at = kk * 32u + ((tt / 4u) ^ kk);
      xs[at][tt % 4u] = v;
    }
    // weight tile: 128 rows x 16 k, 8 values an invocation
    {
      let rr = lid / 2u;
      let k0 = (lid % 2u) * 8u;
      let sl = w_slice(row0 + rr, kb + k0);
      for (var j = 0u; j < 4u; j++) {
        let a = (k0 + j) * 32u + ((rr / 4u) ^ (k0 + j));
        ws[a][rr % 4u] = sl.lo[j];
        let b = (k0 + 4u + j) * 32u + ((rr / 4u) ^ (k0 + 4u + j));
        ws[b][rr % 4u] = sl.hi[j];
      }
    }
    workgroupBarrier();
    // hot loop: 64 FMAs per 4 vec4 reads
    for (var k = 0u; k < 16u; k++) {
      let a0 = xs[k * 32u + (ty ^ k)];
      let a1 = xs[k * 32u + 16u + (ty ^ k)];
      let b0 = ws[k * 32u + (tx ^ k)];
      let b1 = ws[k * 32u + 16u + (tx ^ k)];
      for (var i = 0u; i < 4u; i++) {
        acc[2u * i] += a0[i] * b0;
        acc[2u * i + 1u] += a0[i] * b1;
        acc[8u + 2u * i] += a1[i] * b0;
        acc[8u + 2u * i + 1u] += a1[i] * b1;
      }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < 8u; i++) {
    let t = tok0 + select(4u * ty + i, 64u + 4u * ty + i - 4u, i >= 4u);
    for (var h = 0u; h < 2u; h++) {
      let v4 = acc[2u * i + h];
      for (var j = 0u; j < 4u; j++) {
        let r = row0 + 64u * h + 4u * tx + j;
        ${epilogue(s, 't', 'r', 'v4[j]')}
      }
    }
  }
}
`;
}

/**
 * How the WGSL compiler spells subgroup-matrix loads and stores: 'template' gives the majorness as a
 * template argument (`subgroupMatrixLoad<T, col_major>(p, offset, stride)`), the form current Dawn
 * accepts without a warning; 'argument' the older form with a bool argument
 * (`subgroupMatrixLoad<T>(p, offset, colMajor, stride)`), which current Dawn still compiles but warns
 * about as deprecated, and dawn.node prints such warnings on stdout. device.ts self-tests 'template'
 * first and keeps the first form that compiles and gives the known answer.
 */
export type SubgroupMatrixSyntax = 'template' | 'argument';

export function subgroupMatrixLoadWgsl(syntax: SubgroupMatrixSyntax, type: string, pointer: string, offset: string, colMajor: boolean, stride: string): string {
  return syntax === 'template'
    ? `subgroupMatrixLoad<${type}, ${colMajor ? 'col_major' : 'row_major'}>(${pointer}, ${offset}, ${stride})`
    : `subgroupMatrixLoad<${type}>(${pointer}, ${offset}, ${colMajor}, ${stride})`;
}

export function subgroupMatrixStoreWgsl(syntax: SubgroupMatrixSyntax, pointer: string, offset: string, value: string, colMajor: boolean, stride: string): string {
  return syntax === 'template'
    ? `subgroupMatrixStore<${colMajor ? 'col_major' : 'row_major'}>(${pointer}, ${offset}, ${value}, ${stride})`
    : `subgroupMatrixStore(${pointer}, ${offset}, ${value}, ${colMajor}, ${stride})`;
}

// ---------------------------------------------------------------------------------------------------
// Tensor-core products with f16 operands in global memory (measured against the kernel above in
// bench/prefill-lab.ts). x is converted to f16 once a product (`convert_f16`), W dequantized to f16
// once a step (`dequant_f16`), both rows padded to KP columns (a multiple of 64, the pad zeros); the
// product then loads its 16 x 16 operands straight from those buffers (or, 'hybrid', W through
// workgroup memory dequantized in the kernel) with no staging copy of x.
// ---------------------------------------------------------------------------------------------------

/** Columns of the f16 operand buffers: cols rounded up to 64 (a whole stage; the pad is zeros). */
export function paddedCols(cols: number): number {
  return Math.ceil(cols / 64) * 64;
}

/** Workgroups of 256 for n invocations over a 2D grid of at most 4096 in x. */
export function linearGrid(n: number): [number, number, number] {
  const wgs = Math.max(1, Math.ceil(n / 256));
  return wgs <= 4096 ? [wgs, 1, 1] : [4096, Math.ceil(wgs / 4096), 1];
}
/** The invocation's index on a linearGrid (wid and lid as the kernels name them). */
export const LINEAR_INDEX = 'let i = (wid.y * 4096u + wid.x) * 256u + lid;';

/**
 * x (T x cols f32) -> x16 (T x KP f16, pad columns zero), 4 values an invocation, clamped to f16's
 * range. Rows past T are left as they are (a product's row t reads only x row t).
 */
export function convertF16Wgsl(cols: number): string {
  const KP = paddedCols(cols);
  const vec = cols % 4 === 0;
  return `const COLS = ${cols}u;
const KP4 = ${KP / 4}u;
@group(0) @binding(0) var<storage, read> x: array<${vec ? 'vec4<f32>' : 'f32'}>;
@group(0) @binding(1) var<storage, read_write> x16: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read> step: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  ${LINEAR_INDEX}
  let t = i / KP4;
  let c = (i % KP4) * 4u;
  if (t >= step[0]) { return; }
  var v = vec4<f32>(0.0);
  ${vec ? 'if (c < COLS) { v = x[(t * COLS + c) / 4u]; }' : `for (var j = 0u; j < 4u; j++) { if (c + j < COLS) { v[j] = x[t * COLS + c + j]; } }`}
  v = clamp(v, vec4<f32>(-65504.0), vec4<f32>(65504.0));
  x16[i] = vec2<u32>(pack2x16float(v.xy), pack2x16float(v.zw));
}
`;
}

/** Invocations of convertF16Wgsl for T tokens. */
export function convertF16Invocations(T: number, cols: number): number {
  return (T * paddedCols(cols)) / 4;
}

/**
 * W (rows x cols, any TiledWeight) -> w16 (rowsPadded x KP f16), 8 values an invocation through
 * w_slice (zeros past the rows and columns).
 */
export function dequantF16Wgsl(w: TiledWeight, rows: number, cols: number, rowsPadded: number): string {
  const r = weightReader(w, rows);
  const KP = paddedCols(cols);
  return `${COMMON}${r.code}
const SLICES = ${KP / 8}u;
const TOTAL = ${rowsPadded * (KP / 8)}u;
${r.bindings}
@group(0) @binding(${r.count}) var<storage, read_write> w16: array<vec4<u32>>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  ${LINEAR_INDEX}
  if (i >= TOTAL) { return; }
  let sl = w_slice(i / SLICES, (i % SLICES) * 8u);
  w16[i] = vec4<u32>(pack2x16float(sl.lo.xy), pack2x16float(sl.lo.zw), pack2x16float(sl.hi.xy), pack2x16float(sl.hi.zw));
}
`;
}

/**
 * A tensor-core kernel's tile: gm x gn subgroups a workgroup, each am x an results of 16 x 16 (so
 * 16 am gm tokens x 16 an gn rows a workgroup), and where the operands come from:
 *   'direct': x16 and the dequantized w16, both straight from global memory;
 *   'hybrid': x16 from global memory, W dequantized into workgroup memory ks columns a stage;
 *   'staged': both through workgroup memory, ks columns a stage.
 * Staged operands are loaded into registers a stage ahead (their loads fly while the stage before
 * multiplies).
 */
export interface TensorCoreTile {
  am: number;
  an: number;
  gm: number;
  gn: number;
  kind: 'direct' | 'hybrid' | 'staged';
  ks: number;
  /**
   * q4 weights dequantized in f16 arithmetic (each nibble pair made an f16 by its exponent bits,
   * then q * scale + min as a vec2<f16> fma) instead of f32 then converted: a third of the
   * instructions of the staging copy; other encodings ignore it.
   */
  f16Dequant?: boolean;
}

/** 'h64-4422' style: kind letter, ks, am an gm gn (bench/prefill-lab.ts's names, PDVM_SM_TILE). */
export function tensorCoreTileName(t: TensorCoreTile): string {
  return `${t.kind[0]}${t.kind === 'direct' ? '' : t.ks}${t.f16Dequant ? 'f' : ''}-${t.am}${t.an}${t.gm}${t.gn}`;
}

export function parseTensorCoreTile(text: string | undefined): TensorCoreTile | null {
  const m = /^([dhs])(\d*)(f?)-([1-4])([1-4])([1-4])([1-4])$/.exec(text ?? '');
  if (!m) return null;
  const kind = ({ d: 'direct', h: 'hybrid', s: 'staged' } as const)[m[1] as 'd' | 'h' | 's'];
  const ks = Number(m[2] || 32);
  const [am, an, gm, gn] = m.slice(4).map(Number) as [number, number, number, number];
  return (ks === 32 || ks === 64) && gm * gn <= 8 ? { am, an, gm, gn, kind, ks, ...(m[3] ? { f16Dequant: true } : {}) } : null;
}

/**
 * The tile for a matrix of `rows` rows at up to `maxTokens` tokens a step (bench/prefill-lab.ts on the
 * H200, docs/PERFORMANCE.md): both operands staged through workgroup memory 64 columns a stage, 128
 * tokens x 128 rows a workgroup where that gives at least 96 workgroups, else 64 x 128 (twice the
 * workgroups: the 1B shape's 2,048-row matrices); q4 dequantized in f16 arithmetic (measured on the
 * H100, 2026-12-05: 8B gate_up 994 -> 890 µs, down 506 -> 429 in the engine's profile).
 */
export function chooseTensorCoreTile(rows: number, maxTokens: number): TensorCoreTile {
  const wide = Math.ceil(maxTokens / 128) * Math.ceil(rows / 128) >= 96;
  return TENSOR_CORE_TILES[wide ? 0 : 1]!;
}

/** Every tile chooseTensorCoreTile returns (device.ts self-tests each). */
export const TENSOR_CORE_TILES: readonly TensorCoreTile[] = [
  { am: 4, an: 4, gm: 2, gn: 2, kind: 'staged', ks: 64, f16Dequant: true },
  { am: 2, an: 4, gm: 2, gn: 2, kind: 'staged', ks: 64, f16Dequant: true },
];

export function tensorCoreTileSize(t: TensorCoreTile): { tokens: number; rows: number } {
  return { tokens: 16 * t.am * t.gm, rows: 16 * t.an * t.gn };
}

/** Workgroup memory of a tensor-core kernel, bytes. */
export function tensorCoreWorkgroupBytes(t: TensorCoreTile): number {
  const { tokens, rows } = tensorCoreTileSize(t);
  const S = t.ks + 8;
  return (t.kind === 'direct' ? 0 : rows * S * 2) + (t.kind === 'staged' ? tokens * S * 2 : 0) + t.gm * t.gn * 1024;
}

/**
 * y = W x on the tensor cores (f16 x f16 -> f32 16x16x16 subgroup matrices), x16 (tokens x KP f16,
 * convertF16Wgsl) the left matrices (row-major), W the right (k x rows, column-major), per
 * TensorCoreTile. Workgroup x = token tile (so the tiles sharing a weight tile run together), y = row
 * tile. Results of whole tiles go straight to y (a residual loaded as the initial accumulator);
 * partial tiles and bias go through a scratch matrix a subgroup. `lab: 'workgroup-only'` (direct
 * only; timing only, wrong results) loads both operands from workgroup memory never written: the
 * loop's ceiling without global loads.
 */
export function matmulTensorCoreWgsl(
  s: TiledMatmulShape, subgroupSize: number, indexing: SubgroupIndexing, tile: TensorCoreTile, syntax: SubgroupMatrixSyntax = 'template', lab?: 'workgroup-only',
): string {
  const { am: AM, an: AN, gm: GM, gn: GN, kind } = tile;
  const { tokens: TM, rows: TN } = tensorCoreTileSize(tile);
  const NSG = GM * GN, SG = subgroupSize, WG = NSG * SG;
  const KP = paddedCols(s.cols);
  const KS = tile.ks, S = KS + 8; // workgroup-memory row stride in halves (16-byte aligned, off the bank period)
  const stagesW = kind !== 'direct', stagesX = kind === 'staged';
  const f16q4 = stagesW && tile.f16Dequant === true && s.weight.encoding === 'q4';
  if (stagesW && (KP % KS !== 0 || KS % 16 !== 0 || (TN * KS) % (8 * WG) !== 0 || (stagesX && (TM * KS) % (8 * WG) !== 0))) {
    throw new Error(`matmul tensor-core kernel: ks ${KS} does not divide ${KP} columns or the stage`);
  }
  const PW = stagesW ? (TN * KS) / (8 * WG) : 0; // W slices of 8 an invocation stages
  const PX = stagesX ? (TM * KS) / (8 * WG) : 0; // x slices of 8
  const byId = indexing === 'subgroup-id';
  const w = weightReader(s.weight, s.rows);
  const accs: [number, number][] = [];
  for (let i = 0; i < AM; i++) for (let j = 0; j < AN; j++) accs.push([i, j]);
  const acc = ([i, j]: [number, number]) => `a${i}_${j}`;
  const L = (p: string, off: string, stride: string) => subgroupMatrixLoadWgsl(syntax, 'subgroup_matrix_left<f16, 16, 16>', p, off, false, stride);
  const R = (p: string, off: string, stride: string) => subgroupMatrixLoadWgsl(syntax, 'subgroup_matrix_right<f16, 16, 16>', p, off, true, stride);
  const wsOnly = lab === 'workgroup-only' && kind === 'direct';
  type Operand = { p: string | ((i: number) => string); off: (i: number) => string; stride: string };
  const ptr = (o: Operand, i: number) => (typeof o.p === 'string' ? o.p : o.p(i));
  const mmaStep = (x: Operand, wm: Operand) => [
    ...Array.from({ length: AM }, (_, i) => `      let l${i} = ${L(ptr(x, i), x.off(i), x.stride)};`),
    ...Array.from({ length: AN }, (_, j) => `      let r${j} = ${R(ptr(wm, j), wm.off(j), wm.stride)};`),
    ...accs.map((a) => `      ${acc(a)} = subgroupMatrixMultiplyAccumulate(l${a[0]}, r${a[1]}, ${acc(a)});`),
  ].join('\n');
  let loop: string;
  if (kind === 'direct') {
    const x = wsOnly ? { p: '&xs', off: (i: number) => `(tbl + ${16 * i}u) * 40u + (k % 32u)`, stride: '40u' } : { p: '&x16', off: (i: number) => `(tb + ${16 * i}u) * KP + k`, stride: 'KP' };
    const wm = wsOnly ? { p: '&ws', off: (j: number) => `(rbl + ${16 * j}u) * 40u + (k % 32u)`, stride: '40u' } : { p: '&w16', off: (j: number) => `(rb + ${16 * j}u) * KP + k`, stride: 'KP' };
    loop = `  for (var k = 0u; k < KP; k += 16u) {
${mmaStep(x, wm)}
  }`;
  } else {
    const e = (p: number) => `lid + ${p * WG}u`;
    const S8 = KS / 8;
    const loadW = (kb: string) => Array.from({ length: PW }, (_, p) => `    rw[${p}] = w_raw(row0 + (${e(p)}) / ${S8}u, ${kb} + ((${e(p)}) % ${S8}u) * 8u);`).join('\n');
    const loadX = (kb: string) => Array.from({ length: PX }, (_, p) => `    rx[${p}] = x16[((tok0 + (${e(p)}) / ${S8}u) * KP + ${kb} + ((${e(p)}) % ${S8}u) * 8u) / 8u];`).join('\n');
    // slice e of a stage: row e / S8 of the tile, columns (e % S8) * 8 ..+ 8, in block (row / 16) of 16 rows
    const slot = (p: number) => `      let e = ${e(p)};
      let blk = (e / ${S8}u) / 16u;
      let o = ((e / ${S8}u) % 16u) * ${S}u + (e % ${S8}u) * 8u;`;
    const store8 = (arr: string, lo: string, hi: string) => `${arr}[blk][o] = ${lo}.x; ${arr}[blk][o + 1u] = ${lo}.y; ${arr}[blk][o + 2u] = ${lo}.z; ${arr}[blk][o + 3u] = ${lo}.w;
      ${arr}[blk][o + 4u] = ${hi}.x; ${arr}[blk][o + 5u] = ${hi}.y; ${arr}[blk][o + 6u] = ${hi}.z; ${arr}[blk][o + 7u] = ${hi}.w;`;
    // The subgroup's blocks are reached through pointers made once (px_i, pw_j) and the k steps are
    // unrolled, so every subgroupMatrixLoad from workgroup memory has a constant offset and stride:
    // Tint's robustness then proves it in bounds and adds nothing (a computed offset would be clamped
    // by a select before each load, and the driver would see a runtime stride).
    const kSteps = Array.from({ length: KS / 16 }, (_, q) => 16 * q);
    const x = (kk: number): Operand => (stagesX ? { p: (i) => `px${i}`, off: () => `${kk}u`, stride: `${S}u` } : { p: '&x16', off: (i) => `(tb + ${16 * i}u) * KP + kb + ${kk}u`, stride: 'KP' });
    loop = `${Array.from({ length: AN }, (_, j) => `  let pw${j} = &ws[rbl / 16u + ${j}u];`).join('\n')}
${stagesX ? Array.from({ length: AM }, (_, i) => `  let px${i} = &xs[tbl / 16u + ${i}u];`).join('\n') : ''}
  var rw: array<vec4<u32>, ${PW}>;
${stagesX ? `  var rx: array<vec4<u32>, ${PX}>;
` : ''}${loadW('0u')}
${stagesX ? loadX('0u') : ''}
  for (var stage = 0u; stage < ${KP / KS}u; stage++) { // an index stepped by one: Tint sees a finite loop and adds no guard
    let kb = stage * ${KS}u;
${Array.from({ length: PW }, (_, p) => `    {
${slot(p)}
${f16q4 ? `      let sl = w_unraw16(rw[${p}]);
      let lo = sl.lo;
      let hi = sl.hi;` : `      let sl = w_unraw(rw[${p}]);
      let lo = vec4<f16>(sl.lo);
      let hi = vec4<f16>(sl.hi);`}
      ${store8('ws', 'lo', 'hi')}
    }`).join('\n')}
${Array.from({ length: PX }, (_, p) => `    {
${slot(p)}
      let lo = vec4<f16>(bitcast<vec2<f16>>(rx[${p}].x), bitcast<vec2<f16>>(rx[${p}].y));
      let hi = vec4<f16>(bitcast<vec2<f16>>(rx[${p}].z), bitcast<vec2<f16>>(rx[${p}].w));
      ${store8('xs', 'lo', 'hi')}
    }`).join('\n')}
    workgroupBarrier();
    if (kb + ${KS}u < KP) {
${loadW(`kb + ${KS}u`)}
${stagesX ? loadX(`kb + ${KS}u`) : ''}
    }
${kSteps.map((kk) => `    { // k + ${kk}
${mmaStep(x(kk), { p: (j) => `pw${j}`, off: () => `${kk}u`, stride: `${S}u` })}
    }`).join('\n')}
    workgroupBarrier();
  }`;
  }
  const YS = `${s.yStride}u`, YO = `${s.yOffset}u`;
  const resultLoad = (off: string) => subgroupMatrixLoadWgsl(syntax, 'subgroup_matrix_result<f32, 16, 16>', '&y', off, false, YS);
  const nw = stagesW ? w.count : 1;
  return `enable f16;
enable chromium_experimental_subgroup_matrix;
${byId ? 'enable subgroups;\nrequires subgroup_id;\n' : ''}diagnostic(off, subgroup_uniformity);
${COMMON}${stagesW ? `${w.code}\n${rawReader(s.weight)}${f16q4 ? `\n${Q4_UNRAW_F16}` : ''}` : `const ROWS = ${s.rows}u;`}
const KP = ${KP}u;
${stagesW ? w.bindings : '@group(0) @binding(0) var<storage, read> w16: array<f16>;'}
@group(0) @binding(${nw}) var<storage, read> x16: array<${stagesX ? 'vec4<u32>' : 'f16'}>;
@group(0) @binding(${nw + 1}) var<storage, read_write> y: array<f32>;
@group(0) @binding(${nw + 2}) var<storage, read> step: array<u32>;
${s.bias ? `@group(0) @binding(${nw + 3}) var<storage, read> bias: array<f32>;` : ''}
${stagesW ? `var<workgroup> ws: array<array<f16, ${16 * S}>, ${TN / 16}>; // (${TN} rows, ${KS} k) in blocks of 16 rows, stride ${S}` : ''}
${stagesX ? `var<workgroup> xs: array<array<f16, ${16 * S}>, ${TM / 16}>; // (${TM} tokens, ${KS} k) in blocks of 16, stride ${S}` : ''}
${wsOnly ? `var<workgroup> xs: array<f16, ${TM * 40}>;\nvar<workgroup> ws: array<f16, ${TN * 40}>;` : ''}
var<workgroup> cs: array<array<f32, 256>, ${NSG}>; // a 16 x 16 result a subgroup (partial tiles)

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32${byId ? ', @builtin(subgroup_id) sg_id: u32, @builtin(subgroup_invocation_id) sg_lane: u32' : ''}) {
  let T = step[0];
  let tok0 = wid.x * ${TM}u;
  let row0 = wid.y * ${TN}u;
  let g = ${byId ? 'sg_id' : `lid / ${SG}u`};
  let lane = ${byId ? 'sg_lane' : `lid % ${SG}u`};
  let tbl = (g / ${GN}u) * ${16 * AM}u; // the subgroup's first token and row within the tile
  let rbl = (g % ${GN}u) * ${16 * AN}u;
  let tb = tok0 + tbl;
  let rb = row0 + rbl;
  // whole: every result of this subgroup lands in y (no bias to add)
  let whole = ${s.bias ? 'false' : `tb + ${16 * AM}u <= T && rb + ${16 * AN}u <= ROWS`};
${accs.map((a) => `  var ${acc(a)} = subgroup_matrix_result<f32, 16, 16>();`).join('\n')}
${s.residual ? `  if (whole) {
${accs.map((a) => `    ${acc(a)} = ${resultLoad(`(tb + ${16 * a[0]}u) * ${YS} + ${YO} + rb + ${16 * a[1]}u`)};`).join('\n')}
  }` : ''}
${loop}
  // epilogue
${accs
  .map(
    (a) => `  if (whole) {
    ${subgroupMatrixStoreWgsl(syntax, '&y', `(tb + ${16 * a[0]}u) * ${YS} + ${YO} + rb + ${16 * a[1]}u`, acc(a), false, YS)};
  } else {
    ${subgroupMatrixStoreWgsl(syntax, '&cs[g]', '0u', acc(a), false, '16u')};
  }
  workgroupBarrier();
  if (!whole) {
    for (var e = lane; e < 256u; e += ${SG}u) {
      let t = tb + ${16 * a[0]}u + e / 16u;
      let r = rb + ${16 * a[1]}u + e % 16u;
      let v = cs[g][e];
      ${epilogue(s, 't', 'r', 'v')}
    }
  }
  workgroupBarrier();`,
  )
  .join('\n')}
}
`;
}

/**
 * q4 words to f16 in f16 arithmetic: (nibble | 0x6400) is the f16 1024 + q exactly, minus 1024 is q,
 * then q * scale + min by one vec2<f16> fma (the f32 path's value rounded to f16 where the fma is
 * fused). Pair j of a word holds nibbles j and j + 4.
 */
const Q4_UNRAW_F16 = `struct Slice16 { lo: vec4<f16>, hi: vec4<f16> }
fn w_unraw16(raw: vec4<u32>) -> Slice16 {
  let word = raw.x;
  let sm = bitcast<vec2<f16>>(raw.y); // (scale, min)
  let sc = vec2<f16>(sm.x);
  let mn = vec2<f16>(sm.y);
  let k = vec2<f16>(1024.0);
  let p0 = fma(bitcast<vec2<f16>>((word & 0x000f000fu) | 0x64006400u) - k, sc, mn);
  let p1 = fma(bitcast<vec2<f16>>(((word >> 4u) & 0x000f000fu) | 0x64006400u) - k, sc, mn);
  let p2 = fma(bitcast<vec2<f16>>(((word >> 8u) & 0x000f000fu) | 0x64006400u) - k, sc, mn);
  let p3 = fma(bitcast<vec2<f16>>(((word >> 12u) & 0x000f000fu) | 0x64006400u) - k, sc, mn);
  return Slice16(vec4<f16>(p0.x, p1.x, p2.x, p3.x), vec4<f16>(p0.y, p1.y, p2.y, p3.y));
}`;

/**
 * w_raw(r, k0): the words W[r, k0 .. k0 + 8) is made of, loaded now and unpacked later by w_unraw
 * (so that the loads of the next stage fly while this one multiplies). q4: (word, scale_min); q8:
 * (word, word, scale); 16-bit: the chunk; f32: the slice rounded to f16 pairs at once.
 */
function rawReader(w: TiledWeight): string {
  switch (w.encoding) {
    case 'q4':
      return `fn w_raw(r: u32, k0: u32) -> vec4<u32> {
  let wi = k0 / 8u;
  if (r >= ROWS || wi >= ${w.wordsPerRow}u) { return vec4<u32>(0u); } // scale and min 0: zeros
  return vec4<u32>(qweight[r * ${w.wordsPerRow}u + wi], scale_min[r * ${w.groups}u + k0 / ${w.group}u], 0u, 0u);
}
fn w_unraw(raw: vec4<u32>) -> Slice {
  let word = raw.x;
  let sm = unpack2x16float(raw.y);
  let lo = vec4<f32>(vec4<u32>(word, word >> 4u, word >> 8u, word >> 12u) & vec4<u32>(15u));
  let hi = vec4<f32>(vec4<u32>(word >> 16u, word >> 20u, word >> 24u, word >> 28u) & vec4<u32>(15u));
  return Slice(lo * sm.x + sm.y, hi * sm.x + sm.y);
}`;
    default:
      // the other encodings: the slice itself, packed to f16 pairs (its loads are not deferred)
      return `fn w_raw(r: u32, k0: u32) -> vec4<u32> {
  let sl = w_slice(r, k0);
  return vec4<u32>(pack2x16float(sl.lo.xy), pack2x16float(sl.lo.zw), pack2x16float(sl.hi.xy), pack2x16float(sl.hi.zw));
}
fn w_unraw(raw: vec4<u32>) -> Slice {
  return Slice(vec4<f32>(unpack2x16float(raw.x), unpack2x16float(raw.y)), vec4<f32>(unpack2x16float(raw.z), unpack2x16float(raw.w)));
}`;
  }
}
