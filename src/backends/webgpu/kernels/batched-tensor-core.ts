/**
 * Batched decode products on the tensor cores: y = W x for the T rows of a batched step (one token
 * of each of T sequences), q4 weights read once for 32 rows of x at a time:
 *   y[t * yStride + yOffset + r] (+)= sum_c W[r, c] x[t * cols + c]      (+ bias[yOffset + r])
 * W is q4 as the fused layout stores it (as kernels/batched-matvec.ts): unit k of row r is the
 * vec4<u32> Q[r * UNITS + k] (32 nibbles, column 8w + i at bits 4i of word w), (scale, min) the f16
 * pair SM[r * GROUPS + 32k / GROUP]; W[r, c] = nibble * scale + min.
 *
 * x is first written as f16 rows (`X16`, x16RowsWgsl: by the RMSNorm, the SwiGLU or a plain copy),
 * KP = cols rounded up to 256 halves a row (pad zeros), the columns of each unit of 32 permuted: column
 * 8w + j + 4h (word w, nibble j + 4h of the q4 unit) at half 8j + 2w + h of the unit. The rows are
 * stored in tiles of 16 tokens x 16 (permuted) halves, 512 bytes each, row-major inside a tile, tile
 * (t / 16, h / 16) at index (t / 16) * KP / 16 + h / 16: each left matrix is one whole tile, loaded
 * through a pointer to it at offset 0 with stride 16. Constant offset and stride into a fixed-size
 * array: Dawn's robustness transform adds no bounds check or select to the load, as it does to a load
 * at a computed offset into a runtime-sized array (which also hides the stride from the driver). (word >> 4j) &
 * 0x000F000F gives nibbles j and j + 4 as one pair of halves, and the four lanes holding words 0..3 of
 * a unit write their pair j to four consecutive words, so that a store instruction's lanes (4 rows x 2
 * units x 4 words at KS 64) fall in 32 different banks. W and x share the permutation, so the sums are
 * those of the columns in order.
 *
 * A workgroup takes 32 output rows (two 16-row right matrices) and NSG subgroups; subgroup g
 * dequantizes stages g, g + NSG, ... (KS columns each) of those rows to f16 in its part of workgroup
 * memory (the next stage's words loaded into registers while this one multiplies) and multiplies them
 * with the x16 rows of up to 32 tokens (two 16-token left matrices, the second only where T > 16):
 * f16 x f16 -> f32 16x16x16 subgroup matrices. The subgroups' partial sums are then added in subgroup
 * order through workgroup memory. T > 32: passes of 32 tokens, each reading the weights again.
 *
 * A row's output does not depend on T or on the other rows of the step: each (token, row) result is
 * its own dot products in the same order whatever shares the step (issue 15.3). The stage split (NSG,
 * KS) is chosen per matrix shape, never per T.
 */
import type { BatchedProductShape } from './batched-matvec.js';
import { COMMON, header, reductions, subgroupLet, subgroupParam } from './prelude.js';
import { subgroupMatrixLoadWgsl, subgroupMatrixStoreWgsl, type SubgroupIndexing, type SubgroupMatrixSyntax } from './matmul-tiled.js';

/** Output rows a workgroup (two 16-row tiles). */
export const TC_ROWS = 32;
/** Tokens a pass over the weights (two 16-token tiles). */
export const TC_TOKENS = 32;

/** x16 columns of a row: cols rounded up to 256 (a whole number of stages of any KS; the pad is zeros). */
export function x16Cols(cols: number): number {
  return Math.ceil(cols / 256) * 256;
}

export interface BatchedTensorCoreShape extends BatchedProductShape {
  /** Columns a stage: 32, 64, 128 or 256. */
  ks: number;
  /** Subgroups a workgroup, each over its own stages (1, 2, 4 or 8). */
  nsg: number;
  /** Stages a subgroup's words are loaded ahead of their use: 1 or 2 (twice the registers, twice the bytes in flight). */
  depth?: number;
  /**
   * Timing only, wrong results (bench/batched-step.ts `tc-...-nodequant` / `-nox`): 'no-dequant' reads
   * no weights and writes nothing to workgroup memory (the products of whatever is there: the
   * subgroup-matrix loads, products, barriers and epilogue alone); 'no-x-loads' takes the left
   * matrices from workgroup memory instead of X16 (the cost of x's global loads).
   */
  lab?: 'no-dequant' | 'no-x-loads';
}

/** Whether the kernel takes a q4 matrix of this shape (whole units, groups of whole units). */
export function batchedTensorCoreApplies(m: { cols: number; group: number; units: number }): boolean {
  return m.cols % 32 === 0 && m.units * 32 === m.cols && m.group % 32 === 0;
}

/** Workgroup memory of the kernel, bytes: each subgroup's stage (32 rows x KS + 8 halves) and its 16 x 16 partial sum. */
export function batchedTensorCoreBytes(s: { ks: number; nsg: number }): number {
  return s.nsg * (TC_ROWS * (s.ks + 8) * 2 + 256 * 4);
}

/** Storage bindings in order. */
export function batchedTensorCoreBindings(s: { bias: boolean }): string[] {
  return ['Q', 'SM', 'X16', 'Y', 'STEP', ...(s.bias ? ['BIAS'] : [])];
}

export function batchedTensorCoreWgsl(s: BatchedTensorCoreShape, subgroupSize: number, indexing: SubgroupIndexing, syntax: SubgroupMatrixSyntax): string {
  if (!batchedTensorCoreApplies(s)) throw new Error(`batched tensor-core product: ${s.cols} columns in groups of ${s.group} (needs whole units of 32)`);
  const KS = s.ks, NSG = s.nsg, SG = subgroupSize, WG = NSG * SG;
  if (![32, 64, 128, 256].includes(KS) || ![1, 2, 4, 8].includes(NSG)) throw new Error(`batched tensor-core product: KS ${KS}, NSG ${NSG} (KS 32..256, NSG 1..8, powers of two)`);
  const UPS = KS / 32; // units a row a stage
  const UL = (TC_ROWS * UPS * 4) / SG; // words a lane a stage
  if (!Number.isInteger(UL) || UL < 1 || SG % (4 * UPS) !== 0) throw new Error(`batched tensor-core product: ${TC_ROWS} rows x ${UPS} units a stage over ${SG} lanes`);
  const RPI = SG / (4 * UPS); // rows a load instruction
  const S = KS + 8; // ws row stride in halves (16-byte aligned, off the bank period)
  const KP = x16Cols(s.cols);
  const STAGES = Math.ceil(s.cols / KS);
  const byId = indexing === 'subgroup-id';
  const names = batchedTensorCoreBindings(s);
  const type: Record<string, string> = { Q: 'array<u32>', SM: 'array<u32>', X16: 'array<array<f16, 256>>', Y: 'array<f32>', STEP: 'array<u32>', BIAS: 'array<f32>' };
  const decl = names.map((n, i) => `@group(0) @binding(${i}) var<storage, ${n === 'Y' ? 'read_write' : 'read'}> ${n}: ${type[n]};`).join('\n');
  const P = Array.from({ length: UL }, (_, p) => p);
  // the left matrix of tokens t0 + 16i, columns k0 + kk: X16 tile xt + KT i + kk / 16
  const L = (i: number, kk: number) => s.lab === 'no-x-loads'
    ? subgroupMatrixLoadWgsl(syntax, 'subgroup_matrix_left<f16, 16, 16>', 'pw0', `${kk}u`, false, `${S}u`)
    : subgroupMatrixLoadWgsl(syntax, 'subgroup_matrix_left<f16, 16, 16>', `&X16[xt + ${i === 1 ? 'KT + ' : ''}${kk / 16}u]`, '0u', false, '16u');
  const R = (p: string, off: number) => subgroupMatrixLoadWgsl(syntax, 'subgroup_matrix_right<f16, 16, 16>', p, `${off}u`, true, `${S}u`);
  // a stage's words for this lane: lane l holds word l % 4 of unit (l / 4) % UPS of the stage, row
  // l / (4 UPS) + RPI p (coalesced: consecutive lanes, consecutive words of a row)
  const load = (stage: string, set: string) => s.lab === 'no-dequant' ? '' : P.map((p) => `{
      let r = rb + lane / ${4 * UPS}u + ${p * RPI}u;
      let k = ${stage} * ${UPS}u + (lane / 4u) % ${UPS}u;
      if (r < ROWS && k < UNITS) {
        rq${set}[${p}] = Q[(r * UNITS + k) * 4u + lane % 4u];
        rs${set}[${p}] = SM[r * GROUPS + (k * 32u) / GROUP];
      } else {
        rq${set}[${p}] = 0u;
        rs${set}[${p}] = 0u; // scale and min 0: zeros
      }
    }`).join('\n    ');
  // nibbles j and j + 4 of the word as f16 (1024 + n, exactly), then n * scale + min, to word 4j + w of the unit
  const dequant = (set: string) => s.lab === 'no-dequant' ? '' : P.map((p) => {
    const lines = [`let row = lane / ${4 * UPS}u + ${p * RPI}u;`, `let b = 2u * g + row / 16u;`, `let o = (row % 16u) * ${S}u + ((lane / 4u) % ${UPS}u) * 32u + 2u * (lane % 4u);`, `let sm = bitcast<vec2<f16>>(rs${set}[${p}]);`, `let sc = vec2<f16>(sm.x);`, `let mn = vec2<f16>(sm.y);`];
    for (let j = 0; j < 4; j++) {
      const bits = j === 0 ? `rq${set}[${p}]` : `(rq${set}[${p}] >> ${4 * j}u)`;
      lines.push(`{ let v = fma(bitcast<vec2<f16>>((${bits} & 0x000F000Fu) | 0x64006400u) - vec2<f16>(1024.0h), sc, mn); ws[b][o + ${8 * j}u] = v.x; ws[b][o + ${8 * j + 1}u] = v.y; }`);
    }
    return `{\n      ${lines.join('\n      ')}\n    }`;
  }).join('\n    ');
  const DEPTH = s.depth ?? 1;
  if (DEPTH !== 1 && DEPTH !== 2) throw new Error(`batched tensor-core product: depth ${DEPTH} (1 or 2)`);
  const sets = DEPTH === 2 ? ['A', 'B'] : ['A'];
  // stage it0 + d from register set `set`: dequantized, the set reloaded DEPTH stages ahead, multiplied
  const stage = (set: string, d: number) => `${d > 0 ? `if (it0 + ${d}u < ITERS) ` : ''}{
        let it = it0 + ${d}u;
        let st = it * ${NSG}u + g;
        ${dequant(set).split('\n').join('\n    ')}
        workgroupBarrier();
        if (it + ${DEPTH}u < ITERS) {
          let next = st + ${DEPTH * NSG}u;
          ${load('next', set).split('\n').join('\n      ')}
        }
        if (st < STAGES) {
          let xt = (t0 / 16u) * KT + st * ${KS / 16}u;
          ${Array.from({ length: KS / 16 }, (_, q) => 16 * q).map((kk) => `{ // k + ${kk}: constant offsets into the subgroup's blocks (no robustness clamp)
            let r0 = ${R('pw0', kk)};
            let r1 = ${R('pw1', kk)};
            let l0 = ${L(0, kk)};
            a0_0 = subgroupMatrixMultiplyAccumulate(l0, r0, a0_0);
            a0_1 = subgroupMatrixMultiplyAccumulate(l0, r1, a0_1);
            if (two) {
              let l1 = ${L(1, kk)};
              a1_0 = subgroupMatrixMultiplyAccumulate(l1, r0, a1_0);
              a1_1 = subgroupMatrixMultiplyAccumulate(l1, r1, a1_1);
            }
          }`).join('\n          ')}
        }
        workgroupBarrier();
      }`;
  const acc = (i: number, j: number) => `a${i}_${j}`;
  const epilogue = [0, 1].flatMap((i) => [0, 1].map((j) => `${i === 1 ? 'if (two) ' : ''}{
      ${subgroupMatrixStoreWgsl(syntax, '&cs[g]', '0u', acc(i, j), false, '16u')};
      workgroupBarrier();
      for (var e = lid; e < 256u; e += ${WG}u) {
        let t = t0 + ${16 * i}u + e / 16u;
        let r = rb + ${16 * j}u + e % 16u;
        if (t < T && r < ROWS) {
          var v = cs[0][e];
          for (var h = 1u; h < ${NSG}u; h++) { v += cs[h][e]; }
          let o = t * ${s.yStride}u + ${s.yOffset}u + r;
          ${s.bias ? `v += BIAS[${s.yOffset}u + r];` : ''}
          ${s.residual ? 'v += Y[o];' : ''}
          Y[o] = v;
        }
      }
      workgroupBarrier();
    }`));
  return `enable f16;
enable chromium_experimental_subgroup_matrix;
${byId ? 'enable subgroups;\nrequires subgroup_id;\n' : ''}diagnostic(off, subgroup_uniformity);
${COMMON}
const ROWS = ${s.rows}u;
const UNITS = ${s.units}u;
const GROUP = ${s.group}u;
const GROUPS = ${Math.ceil(s.cols / s.group)}u;
const KP = ${KP}u;
const KT = ${KP / 16}u; // X16 tiles a row of 16 tokens
const STAGES = ${STAGES}u;
const ITERS = ${Math.ceil(STAGES / NSG)}u;
${decl}
var<workgroup> ws: array<array<f16, ${16 * S}>, ${(NSG * TC_ROWS) / 16}>; // per subgroup (${TC_ROWS} rows, ${KS} columns) in blocks of 16 rows, stride ${S}
var<workgroup> cs: array<array<f32, 256>, ${NSG}>; // per subgroup a 16 x 16 partial sum

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32${byId ? ', @builtin(subgroup_id) sg_id: u32, @builtin(subgroup_invocation_id) sg_lane: u32' : ''}) {
  let T = STEP[0];
  ${s.lab ? '// every binding stays in the auto layout\n  if (T == 0xFFFFFFFFu) { Y[0] = f32(Q[0]) + f32(SM[0]) + f32(X16[0][0]); }' : ''}
  let rb = linear_workgroup(wid, nwg) * ${TC_ROWS}u;
  let g = ${byId ? 'sg_id' : `lid / ${SG}u`};
  let lane = ${byId ? 'sg_lane' : `lid % ${SG}u`};
  let pw0 = &ws[2u * g]; // this subgroup's two blocks of 16 rows
  let pw1 = &ws[2u * g + 1u];
  for (var t0 = 0u; t0 < T; t0 += ${2 * 16}u) {
    let two = T > t0 + 16u;
    var a0_0 = subgroup_matrix_result<f32, 16, 16>();
    var a0_1 = subgroup_matrix_result<f32, 16, 16>();
    var a1_0 = subgroup_matrix_result<f32, 16, 16>();
    var a1_1 = subgroup_matrix_result<f32, 16, 16>();
    ${sets.map((set) => `var rq${set}: array<u32, ${UL}>;\n    var rs${set}: array<u32, ${UL}>;`).join('\n    ')}
    ${load('g', 'A')}
    ${DEPTH === 2 ? `if (1u < ITERS) {\n      let second = g + ${NSG}u;\n      ${load('second', 'B').split('\n').join('\n  ')}\n    }` : ''}
    // hot loop: a stage of this subgroup's columns, dequantized, then multiplied (DEPTH stages an iteration, each from its register set)
    for (var it0 = 0u; it0 < ITERS; it0 += ${DEPTH}u) {
      ${sets.map((set, d) => stage(set, d)).join('\n      ')}
    }
    // the subgroups' partial sums added in subgroup order, then bias and residual
    ${epilogue.join('\n    ')}
  }
}
`;
}

/**
 * x to the product's f16 rows (X16, the layout above): per token row t and 8 columns 8w.. of unit u,
 * the pairs (x[8w + j], x[8w + j + 4]) for j = 0..3 (clamped to f16's range; zeros past cols) at
 * halves 8j + 2 (w % 4) of the unit, i.e. in tile (t / 16, 2u + j / 2) at word (t % 16) * 8 + 4 (j % 2)
 * + w % 4 of its 128. Three producers:
 *   'plain':  x as stored (T, cols) f32; an invocation per 8 columns;
 *   'swiglu': x = silu(gate) * up of gate_up rows (T, 2 cols) (as kernels/swiglu.ts), also stored to X;
 *   'norm':   RMSNorm of x's rows (a workgroup of 256 per row; out = x * rsqrt(mean(x^2) + eps) * w, as
 *             kernels/rmsnorm.ts), also stored to XN.
 */
export function x16RowsWgsl(cols: number, source: 'plain' | 'swiglu' | 'norm', f: { subgroups: boolean }, eps = '1e-5f'): string {
  if (cols % 8 !== 0) throw new Error(`x16 rows: ${cols} columns are not a multiple of 8`);
  const W8 = cols / 8, KP8 = x16Cols(cols) / 8;
  const PACK = /* wgsl */ `
// columns 8w .. 8w + 7 of row t (lo, hi) to their four words (two in each of the unit's two tiles)
fn store_x16(t: u32, w: u32, lo: vec4<f32>, hi: vec4<f32>) {
  let a = clamp(lo, vec4<f32>(-65504.0), vec4<f32>(65504.0));
  let b = clamp(hi, vec4<f32>(-65504.0), vec4<f32>(65504.0));
  let o = ((t / 16u) * KP8 / 2u + (w / 4u) * 2u) * 128u + (t % 16u) * 8u + w % 4u;
  X16[o] = pack2x16float(vec2<f32>(a.x, b.x));
  X16[o + 4u] = pack2x16float(vec2<f32>(a.y, b.y));
  X16[o + 128u] = pack2x16float(vec2<f32>(a.z, b.z));
  X16[o + 132u] = pack2x16float(vec2<f32>(a.w, b.w));
}`;
  const consts = `const W8 = ${W8}u; // 8-column groups of a row of x
const KP8 = ${KP8}u; // of a row of X16`;
  if (source === 'norm') {
    return `${header(f)}${COMMON}${reductions(256, f)}${PACK}
${consts}
@group(0) @binding(0) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> W: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> XN: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> X16: array<u32>;
@group(0) @binding(4) var<storage, read> STEP: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32${subgroupParam(f)}) {
  ${subgroupLet(f)}
  let row = linear_workgroup(wid, nwg);
  if (row >= STEP[0]) { return; }
  var ss = 0.0;
  for (var i = lid; i < W8 * 2u; i += 256u) { let v = X[row * W8 * 2u + i]; ss += dot(v, v); }
  let scale = inverseSqrt(wg_sum(ss, lid, sg_size) / f32(W8 * 8u) + ${eps});
  for (var w = lid; w < KP8; w += 256u) {
    var lo = vec4<f32>(0.0);
    var hi = vec4<f32>(0.0);
    if (w < W8) {
      let i = row * W8 * 2u + 2u * w;
      lo = X[i] * scale * W[2u * w];
      hi = X[i + 1u] * scale * W[2u * w + 1u];
      XN[i] = lo;
      XN[i + 1u] = hi;
    }
    store_x16(row, w, lo, hi);
  }
}
`;
  }
  const swiglu = source === 'swiglu';
  return `${COMMON}${PACK}
${consts}
@group(0) @binding(0) var<storage, ${swiglu ? 'read_write' : 'read'}> X: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> X16: array<u32>;
@group(0) @binding(2) var<storage, read> STEP: array<u32>;
${swiglu ? '@group(0) @binding(3) var<storage, read> GU: array<vec4<f32>>;' : ''}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wid, nwg) * 64u + lid;
  let t = i / KP8;
  let w = i % KP8;
  if (t >= STEP[0]) { return; }
  var lo = vec4<f32>(0.0);
  var hi = vec4<f32>(0.0);
  if (w < W8) {
    let x = t * W8 * 2u + 2u * w;
${swiglu ? `    let gi = t * W8 * 4u + 2u * w; // gate of row t; up W8 * 2 vec4 further
    let g0 = GU[gi];
    let g1 = GU[gi + 1u];
    lo = g0 / (vec4<f32>(1.0) + exp(-g0)) * GU[gi + W8 * 2u];
    hi = g1 / (vec4<f32>(1.0) + exp(-g1)) * GU[gi + W8 * 2u + 1u];
    X[x] = lo;
    X[x + 1u] = hi;` : `    lo = X[x];
    hi = X[x + 1u];`}
  }
  store_x16(t, w, lo, hi);
}
`;
}
