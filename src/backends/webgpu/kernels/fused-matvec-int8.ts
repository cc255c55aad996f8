/**
 * The fused q4 matrix-vector kernel with int8 activations (`activations: 'int8'`, subgroup workers).
 *
 * The f32 kernel spends about three instructions a nibble (LOP3, FADD, FMA), so on the H200 its
 * arithmetic, not memory, bounds the large matrices. Here each workgroup first quantizes x (after
 * rmsnorm for 'norm' input, as read for 'global' input) into shared memory, in blocks of one unit (32
 * columns) with one f32 scale each, like llama.cpp's q8_1:
 *   d = max|x| / 127,  xq = round(x / d)  (int8, -127..127),  xsum = sum(x)  (f32, unquantized)
 * and the hot loop takes a unit's 32 nibbles u of one row with 8 dot4I8Packed (the nibbles of each word
 * split into its even and odd ones, 0x0F0F0F0F masks, are four non-negative int8 each; xq is stored in
 * the same even/odd order):
 *   sum_c W[r, c] x[c] ~= scale * d * sum(u xq) + min * xsum            (W = u * scale + min per group)
 * which is about 6 instructions for 32 nibbles instead of 96. xsum stays exact, so only the rounding of
 * x to 8 bits changes the result (measured through the decoder in docs/PERFORMANCE.md).
 * Without WGSL's packed_4x8_integer_dot_product, dot4I8Packed and pack4xI8 are polyfilled.
 *
 * Shared memory: UNITS x 40 bytes (the int8 x in two vec4<u32> a unit, then (d, xsum)), so phi-4's
 * down_proj (17920 columns) needs 22.4 KB: `int8Fits` checks the device's limit.
 */
import { COMMON, f32Literal, header, int8DotWgsl, reductions } from './prelude.js';
import { argmaxTracking, blockRow, blocksFor, declarations, epilogue, f16Enable, firstGroup, SG_RPT, type FusedMatvecShape, type MatvecFeatures } from './fused-matvec.js';

const WG = 256;

/** Shared-memory bytes of the int8 kernel (plus the reduction scratch). */
export function int8WorkgroupBytes(units: number): number {
  return units * 40 + 4 * WG * 4;
}

/** Whether the int8 variant applies to a matrix (q4, subgroups, x fits in shared memory). */
export function int8Applies(encoding: string, units: number, subgroups: boolean, maxWorkgroupBytes: number): boolean {
  return encoding === 'q4' && subgroups && int8WorkgroupBytes(units) <= maxWorkgroupBytes;
}

/**
 * Units a lane loads per pass by default: about one per 128 units of the row (1 to 4), so that long
 * rows (down_proj: 448-560 units) take about 4-5 dependent passes of loads instead of 14-18, with
 * more bytes in flight per worker. A worker's passes are a chain of memory latencies: its next loads
 * issue only once this pass's arithmetic has its data.
 */
export function int8Unroll(units: number): number {
  return Math.max(1, Math.min(4, Math.ceil(units / 128)));
}

/**
 * The octet prologue of a norm input (`int8Octets`): 8 lanes a unit, lane e of an octet holding vec4 e
 * of it, so each load instruction reads 4 whole units of x and of the norm weight (the one-invocation-
 * a-unit prologue reads 32 units' 128-byte rows a lane at a time, and x twice: once for the sum of
 * squares, once to quantize). x * normWeight is quantized before rmsnorm's scale is known: the scale
 * 1/rms is one number for the whole row, so it moves neither a block's int8 values nor its scale's
 * ratio, and it multiplies the finished sums instead (both terms of a unit, d sum(u xq) and
 * min sum(x), are linear in x). One L2 round trip and one barrier before the first weight load,
 * instead of two round trips and three barriers. The octet's max and sum go through subgroup
 * shuffles (subgroups of at least 8 lanes: the decoder checks subgroupMinSize). Not for a global x
 * (o_proj, down_proj): the same octets there, every load issued at once, measured slower on the H100
 * (phi-4 down_proj 33.2 against 27.0 µs, o_proj 9.9 against 8.3; llama-3.2-1b down_proj 12.3 against
 * 8.4: docs/PERFORMANCE.md).
 */
function octetPrologue(s: FusedMatvecShape): string {
  const sweeps = Math.ceil(s.units / (WG / 8));
  const range = (n: number) => Array.from({ length: n }, (_, i) => i);
  const loads = range(sweeps).map((i) => `let kx${i} = min(${i * (WG / 8)}u + lid / 8u, UNITS - 1u) * 8u + e;
  let x${i} = select(vec4<f32>(0.0), X[kx${i}], ${i * (WG / 8)}u + lid / 8u < UNITS && kx${i} * 4u < COLS);
  let n${i} = NW[kx${i}];`).join('\n  ');
  const quantize = range(sweeps).map((i) => `{
    let k = ${i * (WG / 8)}u + lid / 8u;
    ss += dot(x${i}, x${i});
    let v = x${i} * n${i};
    let av = abs(v);
    var amax = max(max(av.x, av.y), max(av.z, av.w));
    var sum = (v.x + v.y) + (v.z + v.w);
    for (var m = 1u; m < 8u; m <<= 1u) {
      amax = max(amax, subgroupShuffleXor(amax, m));
      sum += subgroupShuffleXor(sum, m);
    }
    let q = vec4<i32>(round(v * select(0.0, 127.0 / amax, amax > 0.0)));
    // lanes 2p and 2p + 1 hold columns 8p..8p+7: the even lane packs their even columns, the odd lane the odd ones
    let nb = subgroupShuffleXor(q, 1u);
    let qa = select(q, nb, odd);
    let qb = select(nb, q, odd);
    let w = select(pack4xI8_(vec4<i32>(qa.x, qa.z, qb.x, qb.z)), pack4xI8_(vec4<i32>(qa.y, qa.w, qb.y, qb.w)), odd);
    if (k < UNITS) {
      if (e < 4u) { XQA[k][e] = w; } else { XQB[k][e - 4u] = w; }
      if (e == 0u) { XD[k] = vec2<f32>(amax / 127.0, sum); }
    }
  }`).join('\n  ');
  return `// x * normWeight quantized by octets of lanes (all loads first); rmsnorm's scale 1/rms from the sum of
  // squares each subgroup leaves in SS, applied to the finished sums
  let e = lid % 8u;
  let odd = (e & 1u) == 1u;
  ${loads}
  var ss = 0.0;
  ${quantize}
  let sst = subgroupAdd(ss);
  if (lane == 0u) { SS[lid / sg_size] = sst; }
  workgroupBarrier();
  var total = 0.0;
  for (var i = 0u; i < ${WG}u / sg_size; i++) { total += SS[i]; }
  let inv = inverseSqrt(total / f32(COLS) + ${f32Literal(s.eps)});`;
}

export function int8MatvecWgsl(s: FusedMatvecShape, f: MatvecFeatures): string {
  if (s.encoding !== 'q4' || !f.subgroups) throw new Error('int8 activations: q4 with subgroups only');
  const groups = blocksFor(s, SG_RPT);
  const norm = s.input === 'norm';
  // `normOneRead` (a norm input of at most WG units): each invocation reads its unit of x and of the
  // norm weight once, for the sum of squares and then the quantization, instead of x twice. Off by
  // default: slower on the H200 (llama-3.2-1b qkv 10.0 against 8.0 µs, phi-4 lm_head 90 against 80;
  // docs/PERFORMANCE.md)
  const oneRead = norm && s.units <= WG && s.normOneRead === true && s.int8Octets !== true;
  // `int8Octets` (a norm input, subgroups of at least 8): octetPrologue below
  const octets = norm && s.int8Octets === true;
  // vec4 e of unit k of a global x: unit-major where a producer wrote it so
  const xAt = (e: number) => {
    const at = norm ? `X[k * 8u + ${e}u]` : s.xUnitMajor ? `X[${e}u * UNITS + k]` : `X[k * 8u + ${e}u]`;
    return s.xF16 && !norm ? `x16(${at})` : at;
  };
  const load = Array.from({ length: 8 }, (_, e) =>
    norm ? `v[${e}] = select(vec4<f32>(0.0), X[k * 8u + ${e}u] * NW[k * 8u + ${e}u] * inv, k * 32u + ${4 * e}u < COLS);` : `v[${e}] = ${xAt(e)};`,
  ).join('\n      ');
  const rows = Array.from({ length: SG_RPT }, (_, j) => j);
  const M = '0x0F0F0F0Fu';
  const wordDot = (w: string, a: string, b: string) => `dot4I8(${w} & ${M}, ${a}) + dot4I8((${w} >> 4u) & ${M}, ${b})`;
  const pass = Math.max(1, Math.min(s.unroll ?? 1, Math.ceil(s.units / 32)));
  const lines: string[] = [];
  for (let i = 0; i < pass; i++) {
    lines.push(`let on${i} = kb + ${i}u * sg_size + lane < UNITS;`, `let k${i} = min(kb + ${i}u * sg_size + lane, UNITS - 1u);`);
    for (const j of rows) lines.push(`let w${i}_${j} = Q[r${j} * UNITS + k${i}];`, `let sm${i}_${j} = SM[r${j} * GROUPS + (k${i} * 32u) / GROUP];`);
  }
  for (let i = 0; i < pass; i++) {
    lines.push(`let xa${i} = XQA[k${i}];`, `let xb${i} = XQB[k${i}];`, `let xd${i} = select(vec2<f32>(0.0), XD[k${i}], on${i});`);
    for (const j of rows) {
      const w = `w${i}_${j}`;
      lines.push(`{
  let p = (${wordDot(`${w}.x`, `xa${i}.x`, `xa${i}.y`)}) + (${wordDot(`${w}.y`, `xa${i}.z`, `xa${i}.w`)})
    + (${wordDot(`${w}.z`, `xb${i}.x`, `xb${i}.y`)}) + (${wordDot(`${w}.w`, `xb${i}.z`, `xb${i}.w`)});
  let sm = unpack2x16float(sm${i}_${j});
  acc[${j}] += sm.x * (xd${i}.x * f32(p)) + sm.y * xd${i}.y;
}`);
    }
  }
  const hot = lines.join('\n').split('\n').join('\n      ');
  const am = argmaxTracking(s, WG);
  const decl = declarations(s).replace(/var<storage, read> X: array<f32>;/, 'var<storage, read> X: array<vec4<f32>>;').replace(/var<storage, read> NW: array<f32>;/, 'var<storage, read> NW: array<vec4<f32>>;');
  return `${header(f)}${f16Enable(s)}diagnostic(off, subgroup_uniformity);
${COMMON}
${norm && !octets ? reductions(WG, f) : ''}
${int8DotWgsl(f.packedDot)}${s.xF16 && !norm ? `
fn x16(w: vec2<u32>) -> vec4<f32> { return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)); }` : ''}
const ROWS = ${s.rows}u;
const COLS = ${s.cols}u;
const UNITS = ${s.units}u;
const NGROUPS = ${groups}u;
const GROUP = ${s.group}u;
const GROUPS = ${Math.ceil(s.cols / s.group)}u;
${decl}
// unit k of x as int8, even and odd columns of each 8 apart (the order of a nibble word's two masks):
// XQA[k] = (even 0..7, odd 0..7, even 8..15, odd 8..15), XQB[k] the same for columns 16..31
var<workgroup> XQA: array<vec4<u32>, ${s.units}>;
var<workgroup> XQB: array<vec4<u32>, ${s.units}>;
// (d, sum of x) of unit k
var<workgroup> XD: array<vec2<f32>, ${s.units}>;${octets ? `
// each subgroup's sum of squares of x (subgroups of at least 8 lanes)
var<workgroup> SS: array<f32, ${WG / 8}>;` : ''}
${blockRow(s, SG_RPT)}${am.decl}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(subgroup_size) sg_size: u32, @builtin(subgroup_invocation_id) lane: u32) {
  ${octets ? octetPrologue(s) : oneRead ? `// rmsnorm's scale from the unit each invocation then quantizes (x and the norm weight read once)
  var v: array<vec4<f32>, 8>;
  var nw: array<vec4<f32>, 8>;
  var ss = 0.0;
  let ku = min(lid, UNITS - 1u);
  for (var e = 0u; e < 8u; e++) {
    v[e] = select(vec4<f32>(0.0), X[ku * 8u + e], lid < UNITS && ku * 32u + 4u * e < COLS);
    nw[e] = NW[ku * 8u + e];
    ss += dot(v[e], v[e]);
  }
  let inv = inverseSqrt(wg_sum(ss, lid, sg_size) / f32(COLS) + ${f32Literal(s.eps)});
  for (var e = 0u; e < 8u; e++) { v[e] = v[e] * nw[e] * inv; }
  for (var k = lid; k < UNITS; k += ${WG}u) {` : norm ? `// rmsnorm's scale: the sum of squares over x (zero past COLS)
  var ss = 0.0;
  for (var i = lid; i < COLS / 4u; i += ${WG}u) { let v = X[i]; ss += dot(v, v); }
  let inv = inverseSqrt(wg_sum(ss, lid, sg_size) / f32(COLS) + ${f32Literal(s.eps)});` : ''}${octets ? '' : `${oneRead ? '' : `
  // x quantized a unit (32 columns) an invocation
  for (var k = lid; k < UNITS; k += ${WG}u) {
    var v: array<vec4<f32>, 8>;
    ${load}`}
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
    XQA[k] = vec4<u32>(
      pack4xI8_(vec4<i32>(q[0].x, q[0].z, q[1].x, q[1].z)), pack4xI8_(vec4<i32>(q[0].y, q[0].w, q[1].y, q[1].w)),
      pack4xI8_(vec4<i32>(q[2].x, q[2].z, q[3].x, q[3].z)), pack4xI8_(vec4<i32>(q[2].y, q[2].w, q[3].y, q[3].w)));
    XQB[k] = vec4<u32>(
      pack4xI8_(vec4<i32>(q[4].x, q[4].z, q[5].x, q[5].z)), pack4xI8_(vec4<i32>(q[4].y, q[4].w, q[5].y, q[5].w)),
      pack4xI8_(vec4<i32>(q[6].x, q[6].z, q[7].x, q[7].z)), pack4xI8_(vec4<i32>(q[6].y, q[6].w, q[7].y, q[7].w)));
    XD[k] = vec2<f32>(d, sum);
  }
  workgroupBarrier();`}
  let per = ${WG}u / sg_size;
  let workers = ${s.workgroups}u * per;
  ${am.init}
  for (var b = ${firstGroup(s)}; b < NGROUPS; b += workers) {
    ${rows.map((j) => `let r${j} = block_row(b, ${j}u).x;`).join('\n    ')}
    var acc = array<f32, ${SG_RPT}>(${rows.map(() => '0.0').join(', ')});
    // hot loop: PASS units a lane, every load issued before any arithmetic
    for (var kb = 0u; kb < UNITS; kb += ${pass}u * sg_size) {
      ${hot}
    }
    ${rows.map((j) => `let u${j} = subgroupAdd(acc[${j}])${octets ? ' * inv' : ''};`).join('\n    ')}
    if (lane < ${SG_RPT / 2}u) {
      let t = lane;
      var s0 = u0;
      var s1 = u1;
      ${Array.from({ length: SG_RPT / 2 - 1 }, (_, i) => `if (t == ${i + 1}u) { s0 = u${2 * i + 2}; s1 = u${2 * i + 3}; }`).join('\n      ')}
      ${(epilogue(s, SG_RPT) + am.track).split('\n').join('\n      ')}
    }
  }${am.finish}
}
`;
}
