/**
 * Prefill products y = W x over T tokens, matrix by matrix: each workgroup computes a tile of tokens x
 * rows, reading each weight tile once for its tile of tokens, dequantized (q4, q8) or unpacked (16-bit,
 * f32) into workgroup memory, then multiplied there:
 *   y[t * yStride + yOffset + r] (+)= sum_c W[r, c] x[t * cols + c]      (+ bias[yOffset + r])
 * Two kernels over the same weight readers:
 *   tiled f32 (the fallback, every device): 128 tokens x 128 rows a workgroup of 256, 8 x 8 outputs an
 *     invocation, K in steps of 16 through 16 KiB of workgroup memory (WebGPU's default limits);
 *   subgroup matrix f16 (where device.ts's self-test passed): 64 tokens x 128 rows a workgroup of four
 *     subgroups, each 32 x 64 as 2 x 4 f16 x f16 -> f32 16x16x16 products (tensor cores), K in steps
 *     of 32; x and W rounded to f16 in workgroup memory, sums in f32.
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

/** Tokens x rows of one workgroup's tile. */
export function tiledTile(kernel: TiledKernel, matrixTile: SubgroupMatrixTile = DEFAULT_SUBGROUP_MATRIX_TILE): { tokens: number; rows: number } {
  return kernel === 'f32' ? { tokens: 128, rows: 128 } : { tokens: matrixTile.tokens, rows: matrixTile.rows };
}

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
function epilogue(s: TiledMatmulShape, t: string, r: string, v: string): string {
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
 * The tensor-core kernel's tile: tokens x rows a workgroup, and each subgroup's share as am x an
 * result matrices of 16 x 16 (so (tokens / 16am) x (rows / 16an) subgroups a workgroup).
 */
export interface SubgroupMatrixTile {
  tokens: number;
  rows: number;
  am: number;
  an: number;
}

/** Measured best of four on the H200 for 8B and phi-4 shapes (docs/PERFORMANCE.md). */
export const DEFAULT_SUBGROUP_MATRIX_TILE: SubgroupMatrixTile = { tokens: 128, rows: 256, am: 4, an: 4 };

/** "TOKENSxROWSxAMxAN" (PDVM_SM_TILE), or null when it does not describe a tile the kernel takes. */
export function parseSubgroupMatrixTile(text: string | undefined): SubgroupMatrixTile | null {
  const m = /^(\d+)x(\d+)x(\d+)x(\d+)$/.exec(text ?? '');
  if (!m) return null;
  const [tokens, rows, am, an] = m.slice(1).map(Number) as [number, number, number, number];
  const ok = tokens % (16 * am) === 0 && rows % (16 * an) === 0 && (tokens / (16 * am)) * (rows / (16 * an)) <= 32 && am * an <= 16;
  return ok ? { tokens, rows, am, an } : null;
}

/**
 * The tensor-core path: a workgroup of subgroups (size SG, fixed: device.ts checks) computes
 * tile.tokens x tile.rows; each subgroup a block of 16am tokens x 16an rows as am x an result
 * matrices of 16 x 16. x (tokens x k) is the left matrix, row-major; W (rows x k, stored [row][k]) is
 * the right matrix (k x rows), column-major; both with a padded stride of 40 halves (80 bytes).
 * x is read as vec4s where the columns allow. Results go out through a 16 x 16 f32 scratch a
 * subgroup, where the epilogue reads them.
 */
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

export function matmulTiledSubgroupMatrixWgsl(s: TiledMatmulShape, subgroupSize: number, indexing: SubgroupIndexing = 'subgroup-id', tile: SubgroupMatrixTile = DEFAULT_SUBGROUP_MATRIX_TILE, syntax: SubgroupMatrixSyntax = 'template'): string {
  const w = weightReader(s.weight, s.rows);
  const { tokens: TM, rows: TN, am: AM, an: AN } = tile;
  const gm = TM / (16 * AM), gn = TN / (16 * AN); // subgroups along tokens, rows
  const NSG = gm * gn;
  const SG = subgroupSize, WG = NSG * SG, S = 40;
  const vec = s.cols % 4 === 0;
  const accs: [number, number][] = [];
  for (let i = 0; i < AM; i++) for (let j = 0; j < AN; j++) accs.push([i, j]);
  const acc = ([i, j]: [number, number]) => `a${i}_${j}`;
  // g (the subgroup) is uniform within each subgroup, which WGSL's uniformity analysis may not prove
  // (device.ts's self-test of this kernel checks the result)
  const byId = indexing === 'subgroup-id';
  const io = ioBindings(w.count, s.bias).replace('var<storage, read> x: array<f32>;', vec ? 'var<storage, read> x: array<vec4<f32>>;' : 'var<storage, read> x: array<f32>;');
  const xLoad = vec
    ? `for (var e = lid; e < ${(TM * 32) / 4}u; e += ${WG}u) {
      let tt = e / 8u;
      let k4 = (e % 8u) * 4u;
      let t = tok0 + tt;
      let c = kb + k4;
      var v = vec4<f32>(0.0);
      if (t < T && c < COLS) { v = x[(t * COLS + c) / 4u]; }
      let h = vec4<f16>(clamp(v, vec4<f32>(-65504.0), vec4<f32>(65504.0)));
      let o = tt * ${S}u + k4;
      xs[o] = h.x; xs[o + 1u] = h.y; xs[o + 2u] = h.z; xs[o + 3u] = h.w;
    }`
    : `for (var e = lid; e < ${TM * 32}u; e += ${WG}u) {
      let tt = e / 32u;
      let kk = e % 32u;
      let t = tok0 + tt;
      let c = kb + kk;
      var v = 0.0;
      if (t < T && c < COLS) { v = x[t * COLS + c]; }
      xs[tt * ${S}u + kk] = f16(clamp(v, -65504.0, 65504.0));
    }`;
  return `enable f16;
enable chromium_experimental_subgroup_matrix;
${byId ? 'enable subgroups;\nrequires subgroup_id;\n' : ''}diagnostic(off, subgroup_uniformity);
${COMMON}${w.code}
const COLS = ${s.cols}u;
${w.bindings}
${io}

var<workgroup> xs: array<f16, ${TM * S}>;  // (${TM} tokens, 32 k), stride ${S}
var<workgroup> ws: array<f16, ${TN * S}>; // (${TN} rows, 32 k), stride ${S}
var<workgroup> cs: array<f32, ${NSG * 256}>; // a 16 x 16 result per subgroup

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32${byId ? ', @builtin(subgroup_id) sg_id: u32, @builtin(subgroup_invocation_id) sg_lane: u32' : ''}) {
  let T = step[0];
  let row0 = wid.x * ${TN}u;
  let tok0 = wid.y * ${TM}u;
  let g = ${byId ? 'sg_id' : `lid / ${SG}u`};
  let lane = ${byId ? 'sg_lane' : `lid % ${SG}u`};
  let tb = (g / ${gn}u) * ${16 * AM}u; // the subgroup's first token and row within the tile
  let rb = (g % ${gn}u) * ${16 * AN}u;
${accs.map((a) => `  var ${acc(a)} = subgroup_matrix_result<f32, 16, 16>();`).join('\n')}
  for (var kb = 0u; kb < COLS; kb += 32u) {
    // x tile: ${TM} tokens x 32 k, rounded to f16 (clamped to its range)
    ${xLoad}
    // weight tile: ${TN} rows x 32 k, 8 values a slice
    for (var e = lid; e < ${TN * 4}u; e += ${WG}u) {
      let rr = e / 4u;
      let k0 = (e % 4u) * 8u;
      let sl = w_slice(row0 + rr, kb + k0);
      let o = rr * ${S}u + k0;
      let lo = vec4<f16>(sl.lo);
      let hi = vec4<f16>(sl.hi);
      ws[o] = lo.x; ws[o + 1u] = lo.y; ws[o + 2u] = lo.z; ws[o + 3u] = lo.w;
      ws[o + 4u] = hi.x; ws[o + 5u] = hi.y; ws[o + 6u] = hi.z; ws[o + 7u] = hi.w;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < 32u; kk += 16u) {
${Array.from({ length: AM }, (_, i) => `      let l${i} = ${subgroupMatrixLoadWgsl(syntax, 'subgroup_matrix_left<f16, 16, 16>', '&xs', `(tb + ${16 * i}u) * ${S}u + kk`, false, `${S}u`)};`).join('\n')}
${Array.from({ length: AN }, (_, j) => `      let r${j} = ${subgroupMatrixLoadWgsl(syntax, 'subgroup_matrix_right<f16, 16, 16>', '&ws', `(rb + ${16 * j}u) * ${S}u + kk`, true, `${S}u`)};`).join('\n')}
${accs.map((a) => `      ${acc(a)} = subgroupMatrixMultiplyAccumulate(l${a[0]}, r${a[1]}, ${acc(a)});`).join('\n')}
    }
    workgroupBarrier();
  }
  // epilogue: each result through the subgroup's scratch
${accs
  .map(
    (a) => `  ${subgroupMatrixStoreWgsl(syntax, '&cs', 'g * 256u', acc(a), false, '16u')};
  workgroupBarrier();
  for (var e = lane; e < 256u; e += ${SG}u) {
    let t = tok0 + tb + ${16 * a[0]}u + e / 16u;
    let r = row0 + rb + ${16 * a[1]}u + e % 16u;
    let v = cs[g * 256u + e];
    ${epilogue(s, 't', 'r', 'v')}
  }
  workgroupBarrier();`,
  )
  .join('\n')}
}
`;
}
