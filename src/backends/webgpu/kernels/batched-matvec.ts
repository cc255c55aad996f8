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
import { COMMON, header, int8DotWgsl, reductions, subgroupLet, subgroupParam } from './prelude.js';

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
  /** 'rows': sets of 8 lanes on different rows a 32 lanes (1, 2 or 4). */
  groups: number;
  /** 'rows': slices of the columns (a workgroup: 8 groups slices lanes, at most 256). */
  slices: number;
  /** 'rows': units a lane loads at once (each set of weight loads issued before any product). */
  unroll: number;
}

/** Lanes of the 'rows' layout that walk consecutive units of one row (one 128-byte line of q4 words). */
const UNIT_LANES = 8;

/** Whether the 'rows' layout runs here: its shuffles fold sets of 8 lanes, so subgroups must hold them. */
export function batchedLayoutApplies(f: { subgroupMinSize: number }): boolean {
  return f.subgroupMinSize >= UNIT_LANES;
}

/** Workgroup memory of the 'rows' layout: a partial sum per slice, output row and row of x. */
export function batchedRowsLayoutBytes(s: BatchedMatvecShape): number {
  return s.slices * rowsAWorkgroup(s) * s.nb * 4;
}

/** Invocations a workgroup: BATCHED_WG, or 8 groups slices for 'rows'. */
export function batchedWorkgroupSize(s: BatchedMatvecShape): number {
  return s.layout === 'rows' ? UNIT_LANES * s.groups * s.slices : BATCHED_WG;
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
  const wordDot = (j: string, e: number, a: string, b: string) => `dot4I8(lo${j}_${e}, ${a}) + dot4I8(hi${j}_${e}, ${b})`;
  // unit `k` of each of the RPS rows: its loads (`at`: the unit loaded, k or k clamped to the row), then
  // every x row applied; names end in `q` (a lane's q-th unit of an iteration)
  const unitLoads = (at: string, q: string) =>
    J.flatMap((j) => [`let w${j}${q} = Q[r${j} * UNITS + ${at}];`, `let sm${j}${q} = unpack2x16float(SM[r${j} * GROUPS + (${at} * 32u) / GROUP]);`]);
  const unitProducts = (k: string, q: string) => {
    const lines: string[] = [];
    if (int8) for (const j of J) for (let e = 0; e < 4; e++) lines.push(`let lo${j}${q}_${e} = w${j}${q}[${e}] & ${M};`, `let hi${j}${q}_${e} = (w${j}${q}[${e}] >> 4u) & ${M};`);
    if (!int8) {
      // dequantized once a unit, in column order: lo (nibbles 0..3) and hi (4..7) of each word
      for (const j of J) {
        for (let e = 0; e < 4; e++) {
          const w = `w${j}${q}[${e}]`, sm = `sm${j}${q}`;
          lines.push(
            `let d${j}${q}_${2 * e} = vec4<f32>(vec4<u32>(${w}, ${w} >> 4u, ${w} >> 8u, ${w} >> 12u) & vec4<u32>(15u)) * ${sm}.x + ${sm}.y;`,
            `let d${j}${q}_${2 * e + 1} = vec4<f32>(vec4<u32>(${w} >> 16u, ${w} >> 20u, ${w} >> 24u, ${w} >> 28u) & vec4<u32>(15u)) * ${sm}.x + ${sm}.y;`,
          );
        }
      }
    }
    for (const n of N) {
      const inner: string[] = [];
      if (int8) {
        inner.push(`let xi = (t0 + ${n}u) * UNITS + ${k};`, `let xa = XQ[xi * 2u];`, `let xb = XQ[xi * 2u + 1u];`, `let xd = XD[xi];`);
        for (const j of J) {
          const jq = `${j}${q}`;
          inner.push(`{
  let p = (${wordDot(jq, 0, 'xa.x', 'xa.y')}) + (${wordDot(jq, 1, 'xa.z', 'xa.w')})
    + (${wordDot(jq, 2, 'xb.x', 'xb.y')}) + (${wordDot(jq, 3, 'xb.z', 'xb.w')});
  acc[${j * s.nb + n}] += sm${jq}.x * (xd.x * f32(p)) + sm${jq}.y * xd.y;
}`);
        }
      } else {
        inner.push(`let xi = ((t0 + ${n}u) * UNITS + ${k}) * 8u;`);
        for (let e = 0; e < 8; e++) inner.push(`let x${e} = X[xi + ${e}u];`);
        for (const j of J) {
          const d = (i: number) => `d${j}${q}_${i}`;
          inner.push(`acc[${j * s.nb + n}] += ((dot(${d(0)}, x0) + dot(${d(1)}, x1)) + (dot(${d(2)}, x2) + dot(${d(3)}, x3))) + ((dot(${d(4)}, x4) + dot(${d(5)}, x5)) + (dot(${d(6)}, x6) + dot(${d(7)}, x7)));`);
        }
      }
      lines.push(`if (${n}u < nt) {\n  ${inner.join('\n').split('\n').join('\n  ')}\n}`);
    }
    return lines;
  };
  // the hot loop's body: 'units' a unit a lane; 'rows' `unroll` units a lane, every weight load first
  // (units k, k + 8 S, ...; the sums still add them in that order)
  const unroll = s.layout === 'rows' ? s.unroll : 1;
  const body = unroll === 1
    ? [...unitLoads('k', ''), ...unitProducts('k', '')]
    : [
      ...Array.from({ length: unroll }, (_, q) => [`let k${q} = k + ${q}u * STRIDE;`, ...unitLoads(`min(k${q}, UNITS - 1u)`, `_${q}`)]).flat(),
      ...Array.from({ length: unroll }, (_, q) => (q === 0 ? unitProducts('k0', '_0') : [`if (k${q} < UNITS) {`, ...unitProducts(`k${q}`, `_${q}`).map((l) => '  ' + l.split('\n').join('\n  ')), '}'])).flat(),
    ];
  const indent = (lines: string[], n: number) => lines.join('\n').split('\n').join('\n' + ' '.repeat(n));
  const prelude = `${header({ subgroups: true })}diagnostic(off, subgroup_uniformity);
${COMMON}
${int8DotWgsl(f.packedDot)}
const ROWS = ${s.rows}u;
const UNITS = ${s.units}u;
const GROUP = ${s.group}u;
const GROUPS = ${Math.ceil(s.cols / s.group)}u;
const NB = ${s.nb}u;
const RPS = ${s.rps}u;
${decl}
`;
  const store = (o: string, row: string) => `${s.residual ? `Y[${o}] = Y[${o}] + v` : `Y[${o}] = v`}${s.bias ? ` + BIAS[${s.yOffset}u + ${row}]` : ''};`;
  return s.layout === 'rows' ? prelude + rowsLayoutMain(s, indent(body, 8), store) : prelude + unitsLayoutMain(s, J, N, indent(body, 8), store);
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
 * order whatever T: the 8 lanes of a set by shuffles (xor 4, 2, 1), each step keeping half of the
 * values a lane holds and sending the other half (7/8 of a shuffle a value instead of 3), so lane u
 * ends with values u E .. u E + E - 1 (E = RPS NB / 8, rounded up); then the S slices in slice order.
 */
function rowsLayoutMain(s: BatchedMatvecShape, body: string, store: Store): string {
  const G = s.groups, S = s.slices, RW = rowsAWorkgroup(s), V = s.rps * s.nb;
  const E = Math.ceil(V / UNIT_LANES), padded = E * UNIT_LANES;
  const value = (i: number) => (i < V ? `acc[${i}]` : '0.0');
  // transpose-fold: values 0 .. padded - 1 in a0_*; after the step of xor m, a lane keeps `count` values
  const steps: string[] = [];
  let count = padded, from = 'a0';
  steps.push(`var ${from} = array<f32, ${padded}>(${Array.from({ length: padded }, (_, i) => value(i)).join(', ')});`);
  // unrolled, constant indices only: the arrays stay in registers
  for (const m of [4, 2, 1]) {
    const half = count / 2, to = `a${m}`, upper = `upper${m}`;
    steps.push(`var ${to}: array<f32, ${half}>;`, `let ${upper} = (u & ${m}u) != 0u;`);
    for (let i = 0; i < half; i++) {
      steps.push(`${to}[${i}] = select(${from}[${i}], ${from}[${i + half}], ${upper}) + subgroupShuffleXor(select(${from}[${i + half}], ${from}[${i}], ${upper}), ${m}u);`);
    }
    count = half;
    from = to;
  }
  const parts = Array.from({ length: E }, (_, e) => `{
  let v = u * ${E}u + ${e}u; // j NB + n
  if (v < ${V}u) { PART[(s * RW + g * RPS + v / NB) * NB + v % NB] = a1[${e}]; }
}`);
  return `const U = ${UNIT_LANES}u;
const G = ${G}u;
const S = ${S}u;
const STRIDE = S * U;
const RW = ${RW}u;
const BLOCKS = ${Math.ceil(s.rows / RW)}u;
// (slice, row of the block, row of x) partial sums
var<workgroup> PART: array<f32, ${batchedRowsLayoutBytes(s) / 4}>;

@compute @workgroup_size(${batchedWorkgroupSize(s)})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let T = STEP[0];
  let u = lid % U;
  let g = (lid / U) % G;
  let s = lid / (U * G);
  for (var blk = wid.x; blk < BLOCKS; blk += nwg.x) {
    let rb = blk * RW + g * RPS;
    ${Array.from({ length: s.rps }, (_, j) => `let r${j} = min(rb + ${j}u, ROWS - 1u);`).join('\n    ')}
    for (var t0 = 0u; t0 < T; t0 += NB) {
      let nt = min(NB, T - t0);
      var acc: array<f32, ${V}>;
      for (var i = 0u; i < ${V}u; i++) { acc[i] = 0.0; }
      // hot loop: ${s.unroll} unit(s) of each of RPS rows a lane, applied to the pass's rows of x
      for (var k = s * U + u; k < UNITS; k += STRIDE * ${s.unroll}u) {
        ${body}
      }
      ${steps.join('\n').split('\n').join('\n      ')}
      ${parts.join('\n').split('\n').join('\n      ')}
      workgroupBarrier();
      for (var i = lid; i < RW * NB; i += ${batchedWorkgroupSize(s)}u) {
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

/** The split decode attention's records (kernels/fused-attention.ts): per (row, head, chunk) HD + 2 floats. */
export interface AttentionRecords {
  numHeads: number;
  headDim: number;
  splits: number;
}

/**
 * x (T rows of COLS floats) to the int8 blocks the batched product reads: per row t and unit k,
 * unit t UNITS + k (STORE_UNIT). One invocation a unit. Two producers fused in front where the
 * decode-row plan has them:
 *   'swiglu': x = silu(gate) * up of gate_up rows (T, 2 COLS) (as kernels/swiglu.ts), also stored to X;
 *   'combine': x = the split decode attention's merge of its chunks' records (PART, as
 *              kernels/fused-attention.ts decodeCombineWgsl, the same operations in the same order) for
 *              the unit's 32 dims of one head, also stored to X (one dispatch instead of two);
 *   'plain':  x as stored.
 */
export function quantizeRowsWgsl(units: number, f: { packedDot: boolean }, source: 'plain' | 'swiglu' | 'combine' = 'plain', attention?: AttentionRecords): string {
  if (source === 'combine' && !(attention && attention.headDim % 32 === 0)) throw new Error('quantize rows: the attention merge needs whole units of 32 in a head');
  const load = source === 'plain'
    ? 'for (var e = 0u; e < 8u; e++) { v[e] = X[i * 8u + e]; }'
    : source === 'combine'
    ? `let t = i / UNITS;
  let h = ((i % UNITS) * 32u) / HD;
  let d0 = ((i % UNITS) * 32u) % HD;
  let ph = t * HEADS + h;
  var mx = -3.0e38;
  for (var c = 0u; c < SPLITS; c++) { mx = max(mx, PART[(ph * SPLITS + c) * (HD + 2u) + HD]); }
  var l = 0.0;
  var a: array<f32, 32>;
  for (var e = 0u; e < 32u; e++) { a[e] = 0.0; }
  for (var c = 0u; c < SPLITS; c++) {
    let o = (ph * SPLITS + c) * (HD + 2u);
    let w = exp(PART[o + HD] - mx);
    l += w * PART[o + HD + 1u];
    for (var e = 0u; e < 32u; e++) { a[e] += w * PART[o + d0 + e]; }
  }
  for (var e = 0u; e < 8u; e++) {
    v[e] = vec4<f32>(a[4u * e], a[4u * e + 1u], a[4u * e + 2u], a[4u * e + 3u]) / l;
    X[i * 8u + e] = v[e];
  }`
    : `let t = i / UNITS;
  let c0 = (i % UNITS) * 8u; // vec4 of the row
  for (var e = 0u; e < 8u; e++) {
    let g = GU[t * 2u * UNITS * 8u + c0 + e];
    let u = GU[t * 2u * UNITS * 8u + UNITS * 8u + c0 + e];
    v[e] = g / (vec4<f32>(1.0) + exp(-g)) * u;
    X[i * 8u + e] = v[e];
  }`;
  return `${COMMON}
${int8DotWgsl(f.packedDot)}
const UNITS = ${units}u;
@group(0) @binding(0) var<storage, ${source === 'plain' ? 'read' : 'read_write'}> X: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> XQ: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> XD: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> STEP: array<u32>;
${source === 'swiglu' ? '@group(0) @binding(4) var<storage, read> GU: array<vec4<f32>>;' : ''}
${source === 'combine' ? `@group(0) @binding(4) var<storage, read> PART: array<f32>;
const HEADS = ${attention!.numHeads}u;
const HD = ${attention!.headDim}u;
const SPLITS = ${attention!.splits}u;` : ''}
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
${int8DotWgsl(f.packedDot)}
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
