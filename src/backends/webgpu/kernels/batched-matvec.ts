/**
 * Batched decode products: y = W x for the T rows of a batched decode step (one token of each of T
 * sequences), q4 weights read once for NB rows at a time, so a step of up to NB sequences reads each
 * weight once (T > NB: one pass over the weights per NB rows).
 *   y[t * yStride + yOffset + r] (+)= sum_c W[r, c] x[t * cols + c]      (+ bias[yOffset + r])
 * W is q4 as the fused layout stores it (fused/weights.ts): unit k of row r is the vec4<u32>
 * Q[r * UNITS + k] (32 nibbles, column 8w + i at bits 4i of word w) and (scale, min) in the f16 pair
 * SM[r * GROUPS + 32k / GROUP]; W[r, c] = nibble * scale + min.
 *
 * Two layouts of a workgroup's 256 lanes (BatchedMatvecShape.layout):
 *   'units': a subgroup takes RPS rows; its lanes walk the row's units (consecutive lanes, consecutive
 *            units: coalesced loads), each lane applying a unit's weights to the NB rows of x, then
 *            subgroupAdd folds the lanes. Each x load of a subgroup touches 32 different units.
 *   'rows':  a workgroup takes G * RPS rows; lanes in sets of 8 consecutive units (one 128-byte line
 *            of a row's weights), G sets a 32 lanes on different rows, 256 / (8 G) slices of the
 *            columns. A lane holds RPS rows x NB rows of x in registers: each weight word, unpacked
 *            once, serves the NB rows, and each x load of a subgroup touches 8 units (the G sets read
 *            the same ones), so x's loads cost a quarter of the 'units' layout's; the 8 lanes fold by
 *            shuffles, the slices through workgroup memory in slice order. Needs subgroups of at least
 *            8 lanes (batchedLayoutApplies).
 * Two forms of x, as the fused decoder's (kernels/fused-matvec-int8.ts):
 *   'f32':  x as stored (the CPU's numerics up to summation order);
 *   'int8': x quantized by `quantizeRowsWgsl` into int8 blocks of one unit with one scale each
 *           (d = max|x| / 127, xq = round(x / d), xsum = sum(x)), multiplied with dot4I8Packed:
 *             sum_c W[r, c] x[c] ~= scale * d * sum(nibble * xq) + min * xsum.
 * A row's sums do not depend on T or on which rows share the step: each of the NB slots runs the
 * same operations in the same order (issue 15.3).
 */
import { COMMON, header, reductions, subgroupLet, subgroupParam } from './prelude.js';

/** A q4 product of a batched step: the matrix, where its rows go in y, and what is added to them. */
export interface BatchedProductShape {
  rows: number;
  cols: number;
  /** Units of 32 columns a row (cols / 32). */
  units: number;
  /** Columns of a (scale, min) group, a multiple of 32. */
  group: number;
  yStride: number;
  yOffset: number;
  bias: boolean;
  residual: boolean;
}

export interface BatchedMatvecShape extends BatchedProductShape {
  activations: 'f32' | 'int8';
  /** Rows of x a pass over the weights. */
  nb: number;
  /** 'units': output rows a subgroup; 'rows': output rows a lane. */
  rps: number;
  /** How a workgroup's lanes split the matrix (the file's comment). */
  layout: 'units' | 'rows';
  /** 'rows': sets of 8 lanes on different rows a 32 lanes (1, 2 or 4); the columns go in 256 / (8 groups) slices. */
  groups: number;
}

/** Lanes of the 'rows' layout that walk consecutive units of one row (one 128-byte line of q4 words). */
const UNIT_LANES = 8;

/** Whether the 'rows' layout runs here: its shuffles fold sets of 8 lanes, so subgroups must hold them. */
export function batchedLayoutApplies(f: { subgroupMinSize: number }): boolean {
  return f.subgroupMinSize >= UNIT_LANES;
}

/** Workgroup memory of the 'rows' layout: a partial sum per slice, output row and row of x. */
export function batchedRowsLayoutBytes(s: BatchedMatvecShape): number {
  return (BATCHED_WG / (UNIT_LANES * s.groups)) * rowsAWorkgroup(s) * s.nb * 4;
}

/** Output rows a workgroup of the 'rows' layout. */
function rowsAWorkgroup(s: BatchedMatvecShape): number {
  return s.groups * s.rps;
}

/** Invocations a workgroup of the batched product. */
export const BATCHED_WG = 256;

/** Whether the batched kernel takes a q4 matrix of this shape (whole units, groups of whole units). */
export function batchedMatvecApplies(m: { cols: number; group: number; units: number }): boolean {
  return m.cols % 32 === 0 && m.units * 32 === m.cols && m.group % 32 === 0;
}

/** Workgroups of one dispatch: about one block of RPS rows a subgroup of 32, at most a grid row. */
export function batchedWorkgroups(s: BatchedMatvecShape): number {
  if (s.layout === 'rows') return Math.max(1, Math.min(65535, Math.ceil(s.rows / rowsAWorkgroup(s))));
  return Math.max(1, Math.min(65535, Math.ceil(Math.ceil(s.rows / s.rps) / (BATCHED_WG / 32))));
}

/** Storage bindings in order: the weights, x, y, the step, the bias. */
export function batchedBindings(s: BatchedMatvecShape): string[] {
  return ['Q', 'SM', ...(s.activations === 'int8' ? ['XQ', 'XD'] : ['X']), 'Y', 'STEP', ...(s.bias ? ['BIAS'] : [])];
}

const PACKED_DOT = /* wgsl */ `
fn dot4I8(a: u32, b: u32) -> i32 { return dot4I8Packed(a, b); }
fn pack4xI8_(v: vec4<i32>) -> u32 { return pack4xI8(v); }`;

const POLYFILL_DOT = /* wgsl */ `
fn dot4I8(a: u32, b: u32) -> i32 {
  let x = bitcast<i32>(a);
  let y = bitcast<i32>(b);
  return extractBits(x, 0u, 8u) * extractBits(y, 0u, 8u) + extractBits(x, 8u, 8u) * extractBits(y, 8u, 8u)
    + extractBits(x, 16u, 8u) * extractBits(y, 16u, 8u) + extractBits(x, 24u, 8u) * extractBits(y, 24u, 8u);
}
fn pack4xI8_(v: vec4<i32>) -> u32 {
  let b = vec4<u32>(bitcast<vec4<u32>>(v) & vec4<u32>(0xFFu));
  return b.x | (b.y << 8u) | (b.z << 16u) | (b.w << 24u);
}`;

export function batchedMatvecWgsl(s: BatchedMatvecShape, f: { packedDot: boolean }): string {
  if (!batchedMatvecApplies(s)) throw new Error(`batched matvec: ${s.cols} columns in groups of ${s.group} (needs whole units of 32)`);
  const int8 = s.activations === 'int8';
  const names = batchedBindings(s);
  const type: Record<string, string> = {
    Q: 'array<vec4<u32>>', SM: 'array<u32>', XQ: 'array<vec4<u32>>', XD: 'array<vec2<f32>>', X: 'array<vec4<f32>>', Y: 'array<f32>', STEP: 'array<u32>', BIAS: 'array<f32>',
  };
  const decl = names.map((n, i) => `@group(0) @binding(${i}) var<storage, ${n === 'Y' ? 'read_write' : 'read'}> ${n}: ${type[n]};`).join('\n');
  const J = Array.from({ length: s.rps }, (_, j) => j);
  const N = Array.from({ length: s.nb }, (_, n) => n);
  const M = '0x0F0F0F0Fu';
  // a word's even and odd nibbles as four non-negative int8 each, split once a unit (not once a row of x)
  const wordDot = (j: number, e: number, a: string, b: string) => `dot4I8(lo${j}_${e}, ${a}) + dot4I8(hi${j}_${e}, ${b})`;
  // the hot loop's body for unit k: weights of each row loaded first, then every x row applied
  const body: string[] = [];
  for (const j of J) body.push(`let w${j} = Q[r${j} * UNITS + k];`, `let sm${j} = unpack2x16float(SM[r${j} * GROUPS + (k * 32u) / GROUP]);`);
  if (int8) for (const j of J) for (let e = 0; e < 4; e++) body.push(`let lo${j}_${e} = w${j}[${e}] & ${M};`, `let hi${j}_${e} = (w${j}[${e}] >> 4u) & ${M};`);
  if (!int8) {
    // dequantized once a unit, in column order: lo (nibbles 0..3) and hi (4..7) of each word
    for (const j of J) {
      for (let e = 0; e < 4; e++) {
        const w = `w${j}[${e}]`;
        body.push(
          `let d${j}_${2 * e} = vec4<f32>(vec4<u32>(${w}, ${w} >> 4u, ${w} >> 8u, ${w} >> 12u) & vec4<u32>(15u)) * sm${j}.x + sm${j}.y;`,
          `let d${j}_${2 * e + 1} = vec4<f32>(vec4<u32>(${w} >> 16u, ${w} >> 20u, ${w} >> 24u, ${w} >> 28u) & vec4<u32>(15u)) * sm${j}.x + sm${j}.y;`,
        );
      }
    }
  }
  for (const n of N) {
    const inner: string[] = [];
    if (int8) {
      inner.push(`let xi = (t0 + ${n}u) * UNITS + k;`, `let xa = XQ[xi * 2u];`, `let xb = XQ[xi * 2u + 1u];`, `let xd = XD[xi];`);
      for (const j of J) {
        inner.push(`{
  let p = (${wordDot(j, 0, 'xa.x', 'xa.y')}) + (${wordDot(j, 1, 'xa.z', 'xa.w')})
    + (${wordDot(j, 2, 'xb.x', 'xb.y')}) + (${wordDot(j, 3, 'xb.z', 'xb.w')});
  acc[${j * s.nb + n}] += sm${j}.x * (xd.x * f32(p)) + sm${j}.y * xd.y;
}`);
      }
    } else {
      inner.push(`let xi = ((t0 + ${n}u) * UNITS + k) * 8u;`);
      for (let e = 0; e < 8; e++) inner.push(`let x${e} = X[xi + ${e}u];`);
      for (const j of J) {
        inner.push(`acc[${j * s.nb + n}] += ((dot(d${j}_0, x0) + dot(d${j}_1, x1)) + (dot(d${j}_2, x2) + dot(d${j}_3, x3))) + ((dot(d${j}_4, x4) + dot(d${j}_5, x5)) + (dot(d${j}_6, x6) + dot(d${j}_7, x7)));`);
      }
    }
    body.push(`if (${n}u < nt) {\n  ${inner.join('\n').split('\n').join('\n  ')}\n}`);
  }
  const indent = (lines: string[], n: number) => lines.join('\n').split('\n').join('\n' + ' '.repeat(n));
  const prelude = `${header({ subgroups: true })}diagnostic(off, subgroup_uniformity);
${COMMON}
${f.packedDot ? PACKED_DOT : POLYFILL_DOT}
const ROWS = ${s.rows}u;
const UNITS = ${s.units}u;
const GROUP = ${s.group}u;
const GROUPS = ${Math.ceil(s.cols / s.group)}u;
const NB = ${s.nb}u;
const RPS = ${s.rps}u;
${decl}
`;
  const store = (o: string, row: string) => `${s.residual ? `Y[${o}] = Y[${o}] + v` : `Y[${o}] = v`}${s.bias ? ` + BIAS[${s.yOffset}u + ${row}]` : ''};`;
  return s.layout === 'rows' ? prelude + rowsLayoutMain(s, J, N, indent(body, 8), store) : prelude + unitsLayoutMain(s, J, N, indent(body, 8), store);
}

type Store = (index: string, row: string) => string;

/** The 'units' layout: a subgroup a block of RPS rows, its lanes across the row's units. */
function unitsLayoutMain(s: BatchedMatvecShape, J: number[], N: number[], body: string, store: Store): string {
  const writes = J.flatMap((j) =>
    N.map((n) => `if (${n}u < nt) {
  let v = subgroupAdd(acc[${j * s.nb + n}]);
  if (lane == 0u && rb + ${j}u < ROWS) {
    let o = (t0 + ${n}u) * ${s.yStride}u + ${s.yOffset}u + rb + ${j}u;
    ${store('o', `rb + ${j}u`)}
  }
}`),
  );
  return `const BLOCKS = ${Math.ceil(s.rows / s.rps)}u;

@compute @workgroup_size(${BATCHED_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32,
        @builtin(subgroup_size) sg_size: u32, @builtin(subgroup_invocation_id) lane: u32) {
  let T = STEP[0];
  let per = ${BATCHED_WG}u / sg_size;
  for (var t0 = 0u; t0 < T; t0 += NB) {
    let nt = min(NB, T - t0);
    for (var blk = wid.x * per + lid / sg_size; blk < BLOCKS; blk += nwg.x * per) {
      let rb = blk * RPS;
      ${J.map((j) => `let r${j} = min(rb + ${j}u, ROWS - 1u);`).join('\n      ')}
      // zeroed explicitly: lavapipe kept the previous pass's sums in a var declared in the loop
      var acc: array<f32, ${s.rps * s.nb}>;
      for (var i = 0u; i < ${s.rps * s.nb}u; i++) { acc[i] = 0.0; }
      // hot loop: a unit of each of RPS rows a lane, applied to the pass's rows of x
      for (var k = lane; k < UNITS; k += sg_size) {
        ${body}
      }
      ${writes.join('\n').split('\n').join('\n      ')}
    }
  }
}
`;
}

/**
 * The 'rows' layout: a workgroup a block of G * RPS rows. Lane lid: u = lid % 8 its place in a set of
 * 8 consecutive units, g = (lid / 8) % G its rows (g RPS .. g RPS + RPS - 1 of the block), s = lid / (8 G)
 * its slice of the columns (units s 8 + u, then every 8 S after). The sums of a row of x fold in a fixed
 * order whatever T: 8 lanes by shuffles (xor 4, 2, 1), then the S slices in slice order.
 */
function rowsLayoutMain(s: BatchedMatvecShape, J: number[], N: number[], body: string, store: Store): string {
  const G = s.groups, S = BATCHED_WG / (UNIT_LANES * G), RW = rowsAWorkgroup(s);
  const fold = J.flatMap((j) => N.map((n) => `if (${n}u < nt) {
  var v = acc[${j * s.nb + n}];
  v += subgroupShuffleXor(v, 4u);
  v += subgroupShuffleXor(v, 2u);
  v += subgroupShuffleXor(v, 1u);
  if (u == 0u) { PART[((s * G + g) * RPS + ${j}u) * NB + ${n}u] = v; }
}`));
  return `const U = ${UNIT_LANES}u;
const G = ${G}u;
const S = ${S}u;
const RW = ${RW}u;
const BLOCKS = ${Math.ceil(s.rows / RW)}u;
// (slice, row of the block, row of x) partial sums
var<workgroup> PART: array<f32, ${batchedRowsLayoutBytes(s) / 4}>;

@compute @workgroup_size(${BATCHED_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let T = STEP[0];
  let u = lid % U;
  let g = (lid / U) % G;
  let s = lid / (U * G);
  for (var blk = wid.x; blk < BLOCKS; blk += nwg.x) {
    let rb = blk * RW + g * RPS;
    ${J.map((j) => `let r${j} = min(rb + ${j}u, ROWS - 1u);`).join('\n    ')}
    for (var t0 = 0u; t0 < T; t0 += NB) {
      let nt = min(NB, T - t0);
      var acc: array<f32, ${s.rps * s.nb}>;
      for (var i = 0u; i < ${s.rps * s.nb}u; i++) { acc[i] = 0.0; }
      // hot loop: a unit of each of RPS rows a lane, applied to the pass's rows of x
      for (var k = s * U + u; k < UNITS; k += S * U) {
        ${body}
      }
      ${fold.join('\n').split('\n').join('\n      ')}
      workgroupBarrier();
      for (var i = lid; i < RW * NB; i += ${BATCHED_WG}u) {
        let n = i % NB;
        let row = blk * RW + i / NB;
        if (n < nt && row < ROWS) {
          var v = 0.0;
          for (var p = 0u; p < S; p++) { v += PART[(p * RW + i / NB) * NB + n]; }
          let o = (t0 + n) * ${s.yStride}u + ${s.yOffset}u + row;
          ${store('o', 'row')}
        }
      }
      workgroupBarrier();
    }
  }
}
`;
}

/**
 * Unit i of the int8 x: XQ[2i], XQ[2i + 1] the 32 values v as int8 (even and odd columns of each 8
 * apart, the order of a q4 word's two nibble masks) and XD[i] = (d, sum of v), d = max|v| / 127.
 */
const STORE_UNIT = /* wgsl */ `
fn store_unit(i: u32, v: array<vec4<f32>, 8>) {
  var amax = 0.0;
  var sum = 0.0;
  for (var e = 0u; e < 8u; e++) {
    let a = abs(v[e]);
    amax = max(amax, max(max(a.x, a.y), max(a.z, a.w)));
    sum += dot(v[e], vec4<f32>(1.0));
  }
  let d = amax / 127.0;
  let id = select(0.0, 127.0 / amax, amax > 0.0);
  var q: array<vec4<i32>, 8>;
  for (var e = 0u; e < 8u; e++) { q[e] = vec4<i32>(round(v[e] * id)); }
  XQ[i * 2u] = vec4<u32>(
    pack4xI8_(vec4<i32>(q[0].x, q[0].z, q[1].x, q[1].z)), pack4xI8_(vec4<i32>(q[0].y, q[0].w, q[1].y, q[1].w)),
    pack4xI8_(vec4<i32>(q[2].x, q[2].z, q[3].x, q[3].z)), pack4xI8_(vec4<i32>(q[2].y, q[2].w, q[3].y, q[3].w)));
  XQ[i * 2u + 1u] = vec4<u32>(
    pack4xI8_(vec4<i32>(q[4].x, q[4].z, q[5].x, q[5].z)), pack4xI8_(vec4<i32>(q[4].y, q[4].w, q[5].y, q[5].w)),
    pack4xI8_(vec4<i32>(q[6].x, q[6].z, q[7].x, q[7].z)), pack4xI8_(vec4<i32>(q[6].y, q[6].w, q[7].y, q[7].w)));
  XD[i] = vec2<f32>(d, sum);
}`;

/**
 * x (T rows of COLS floats) to the int8 blocks the batched product reads: per row t and unit k,
 * unit t UNITS + k (STORE_UNIT). One invocation a unit. Two producers fused in front where the
 * decode-row plan has them:
 *   'swiglu': x = silu(gate) * up of gate_up rows (T, 2 COLS) (as kernels/swiglu.ts), also stored to X;
 *   'plain':  x as stored.
 */
export function quantizeRowsWgsl(units: number, f: { packedDot: boolean }, source: 'plain' | 'swiglu' = 'plain'): string {
  const load = source === 'plain'
    ? 'for (var e = 0u; e < 8u; e++) { v[e] = X[i * 8u + e]; }'
    : `let t = i / UNITS;
  let c0 = (i % UNITS) * 8u; // vec4 of the row
  for (var e = 0u; e < 8u; e++) {
    let g = GU[t * 2u * UNITS * 8u + c0 + e];
    let u = GU[t * 2u * UNITS * 8u + UNITS * 8u + c0 + e];
    v[e] = g / (vec4<f32>(1.0) + exp(-g)) * u;
    X[i * 8u + e] = v[e];
  }`;
  return `${COMMON}
${f.packedDot ? PACKED_DOT : POLYFILL_DOT}
const UNITS = ${units}u;
@group(0) @binding(0) var<storage, ${source === 'plain' ? 'read' : 'read_write'}> X: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> XQ: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> XD: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> STEP: array<u32>;
${source === 'swiglu' ? '@group(0) @binding(4) var<storage, read> GU: array<vec4<f32>>;' : ''}
${STORE_UNIT}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wid, nwg) * 64u + lid;
  if (i >= STEP[0] * UNITS) { return; }
  var v: array<vec4<f32>, 8>;
  ${load}
  store_unit(i, v);
}
`;
}

/**
 * RMSNorm and the int8 blocks in one: a workgroup of 256 per row, out = x * rsqrt(mean(x^2) + eps) * w
 * (as kernels/rmsnorm.ts) to XN and, a unit an invocation, to XQ / XD (STORE_UNIT).
 */
export function normQuantizeRowsWgsl(units: number, eps: string, f: { packedDot: boolean; subgroups: boolean }): string {
  return `${header(f)}${COMMON}${reductions(256, f)}
${f.packedDot ? PACKED_DOT : POLYFILL_DOT}
const UNITS = ${units}u;
const H = ${units * 32}u;
@group(0) @binding(0) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> W: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> XN: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> XQ: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> XD: array<vec2<f32>>;
@group(0) @binding(5) var<storage, read> STEP: array<u32>;
${STORE_UNIT}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32${subgroupParam(f)}) {
  ${subgroupLet(f)}
  let row = linear_workgroup(wid, nwg);
  if (row >= STEP[0]) { return; }
  var ss = 0.0;
  for (var i = lid; i < H / 4u; i += 256u) { let v = X[row * H / 4u + i]; ss += dot(v, v); }
  let scale = inverseSqrt(wg_sum(ss, lid, sg_size) / f32(H) + ${eps});
  for (var k = lid; k < UNITS; k += 256u) {
    var v: array<vec4<f32>, 8>;
    for (var e = 0u; e < 8u; e++) {
      let j = k * 8u + e;
      v[e] = X[row * H / 4u + j] * scale * W[j];
      XN[row * H / 4u + j] = v[e];
    }
    store_unit(row * UNITS + k, v);
  }
}
`;
}
