/**
 * Prompt attention on the tensor cores (f16 x f16 -> f32 16x16x16 subgroup matrices), where the
 * device's self-tests passed (device.ts): one workgroup of 4 subgroups per (query head h, tile of
 * BQ = 64 consecutive rows of one sequence), each subgroup 16 of the rows; keys walked in tiles of
 * BK = 32, each K and V tile read once from the cache into workgroup memory (f16) for the 64 rows.
 *   softmax(q k^T / sqrt(HD) + mask) v
 * Two passes over the keys, so that no output is ever rescaled (a subgroup matrix cannot be scaled
 * row by row): pass 1 computes the scores S = Q K^T (subgroup matrices) and each row's max m and sum
 * l = sum exp(s - m) (online, two lanes a row); pass 2 recomputes S, writes P = exp(s - m) / l as f16
 * and accumulates O += P V (subgroup matrices), already normalised. 1.5x the products of one pass,
 * all of them on the tensor cores.
 *   Q (pre-scaled by 1/sqrt(HD), in K's stored dim order) stays in registers as HD/16 left matrices a
 *   subgroup; row t sees keys first_t..p_t of its slot (causal mask, sliding window per row).
 * Workgroup memory at HD 128: Q 17 KiB, a K or V tile 8.5 KiB, scores 9 KiB, P 5 KiB (40 KiB).
 * Rows of a tile share a slot (one sequence's prompt). Needs HD % 16 == 0, HD <= 256.
 */
import type { AttentionShape } from './attention.js';
import { kDimFn, kvHeader, kvReadDecls, rowTable, type KvLayout } from './kv.js';
import { subgroupMatrixLoadWgsl, subgroupMatrixStoreWgsl, type SubgroupIndexing, type SubgroupMatrixSyntax } from './matmul-tiled.js';
import { COMMON, f32Literal } from './prelude.js';

export const TC_TILE_Q = 64;
const TC_TILE_K = 32;

export function attentionTensorCoreFits(s: AttentionShape): boolean {
  return s.headDim % 16 === 0 && s.headDim <= 256;
}

/** Workgroup memory of the kernel, bytes. */
export function attentionTensorCoreBytes(s: AttentionShape): number {
  const SQ = s.headDim + 8;
  return TC_TILE_Q * SQ * 2 + TC_TILE_K * SQ * 2 + TC_TILE_Q * (TC_TILE_K + 4) * 4 + TC_TILE_Q * (TC_TILE_K + 8) * 2;
}

export function attentionTensorCoreWgsl(s: AttentionShape, kv: KvLayout, subgroupSize: number, indexing: SubgroupIndexing, syntax: SubgroupMatrixSyntax = 'template'): string {
  if (subgroupSize !== 32) throw new Error(`attention (tensor cores): needs subgroups of 32, not ${subgroupSize}`);
  const qDim = s.numHeads * s.headDim, kvDim = s.numKvHeads * s.headDim;
  const HD = s.headDim, ND = HD / 16, SQ = HD + 8, SS = TC_TILE_K + 4, SP = TC_TILE_K + 8;
  const first = (p: string) => (s.slidingWindow ? `select(0u, ${p} + 1u - ${s.slidingWindow}u, ${p} + 1u > ${s.slidingWindow}u)` : '0u');
  const byId = indexing === 'subgroup-id';
  const L = (p: string, off: string, stride: string) => subgroupMatrixLoadWgsl(syntax, 'subgroup_matrix_left<f16, 16, 16>', p, off, false, stride);
  const R = (p: string, off: string, stride: string, colMajor: boolean) => subgroupMatrixLoadWgsl(syntax, 'subgroup_matrix_right<f16, 16, 16>', p, off, colMajor, stride);
  const range = (n: number) => Array.from({ length: n }, (_, i) => i);
  // the scores of this subgroup's 16 rows x the tile's 32 keys, stored row-major into ss
  const scores = `    var s0 = subgroup_matrix_result<f32, 16, 16>();
    var s1 = subgroup_matrix_result<f32, 16, 16>();
${range(ND).map((i) => `    s0 = subgroupMatrixMultiplyAccumulate(q${i}, ${R('&kvs', `${16 * i}u`, `${SQ}u`, true)}, s0);
    s1 = subgroupMatrixMultiplyAccumulate(q${i}, ${R('&kvs', `${16 * SQ + 16 * i}u`, `${SQ}u`, true)}, s1);`).join('\n')}
    ${subgroupMatrixStoreWgsl(syntax, '&ss', `g * ${16 * SS}u`, 's0', false, `${SS}u`)};
    ${subgroupMatrixStoreWgsl(syntax, '&ss', `g * ${16 * SS}u + 16u`, 's1', false, `${SS}u`)};`;
  const loadTile = (fn: 'load4_k' | 'load4_v') => `    for (var i = lid; i < ${TC_TILE_K * (HD / 4)}u; i += 128u) {
      let key = k0 + i / ${HD / 4}u;
      let d = (i % ${HD / 4}u) * 4u;
      let v = vec4<f16>(select(vec4<f32>(0.0), ${fn}((sb + key) * KV_DIM4 + kvh * ${HD / 4}u + d / 4u), key <= kEnd));
      let o = (i / ${HD / 4}u) * ${SQ}u + d;
      kvs[o] = v.x; kvs[o + 1u] = v.y; kvs[o + 2u] = v.z; kvs[o + 3u] = v.w;
    }`;
  return `enable f16;
enable subgroups;
enable chromium_experimental_subgroup_matrix;
${byId ? 'requires subgroup_id;\n' : ''}diagnostic(off, subgroup_uniformity);
${kvHeader(kv).replace('enable f16;\n', '')}${COMMON}
const HEADS = ${s.numHeads}u;
const GROUP = ${s.numHeads / s.numKvHeads}u;
const KV_DIM4 = ${kvDim / 4}u;
const STRIDE = ${qDim + 2 * kvDim}u;
@group(0) @binding(0) var<storage, read> qkv: array<f32>;
${kvReadDecls(kv, 1, 2)}
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> step: array<u32>;
${rowTable(kv)}
${kDimFn(kv.storage, s.rotaryDim)}

var<workgroup> qs: array<f16, ${TC_TILE_Q * SQ}>;  // (64 rows, HD), stride ${SQ}
var<workgroup> kvs: array<f16, ${TC_TILE_K * SQ}>; // (32 keys, HD): K, then V
var<workgroup> ss: array<f32, ${TC_TILE_Q * SS}>;  // (64 rows, 32 keys) scores, stride ${SS}
var<workgroup> ps: array<f16, ${TC_TILE_Q * SP}>;  // (64 rows, 32 keys) probabilities, stride ${SP}

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32${byId ? ', @builtin(subgroup_id) sg_id: u32, @builtin(subgroup_invocation_id) sg_lane: u32' : ''}) {
  let h = wid.x;
  let t0 = wid.y * ${TC_TILE_Q}u;
  let T = step[0];
  let g = ${byId ? 'sg_id' : 'lid / 32u'};
  let lane = ${byId ? 'sg_lane' : 'lid % 32u'};
  let kvh = h / GROUP;
  // the tile's key range: from the first row's first key to the last live row's position
  let p0 = row_pos(t0);
  let kBegin = ${first('p0')};
  let kEnd = row_pos(min(t0 + ${TC_TILE_Q}u, T) - 1u);
  let sb = slot_row(t0, 0u);
  // q, pre-scaled, in K's stored dim order (rows past T repeat the last: finite, never stored)
  for (var i = lid; i < ${TC_TILE_Q * HD}u; i += 128u) {
    let t = min(t0 + i / ${HD}u, T - 1u);
    qs[(i / ${HD}u) * ${SQ}u + i % ${HD}u] = f16(qkv[t * STRIDE + h * ${HD}u + k_dim(i % ${HD}u)] * ${f32Literal(1 / Math.sqrt(HD))});
  }
  workgroupBarrier();
${range(ND).map((i) => `  let q${i} = ${L('&qs', `g * ${16 * SQ}u + ${16 * i}u`, `${SQ}u`)};`).join('\n')}
  // two lanes a row: row rr of the tile, keys half * 16 .. + 16 of a key tile
  let rr = g * 16u + lane / 2u;
  let half = lane % 2u;
  let t = t0 + rr;
  let live = t < T;
  let p = row_pos(min(t, T - 1u));
  let firstKey = ${first('p')};
  var m = -3.0e38;
  var l = 0.0;
  // pass 1: each row's max and sum
  for (var k0 = kBegin; k0 <= kEnd; k0 += ${TC_TILE_K}u) {
${loadTile('load4_k')}
    workgroupBarrier();
${scores}
    workgroupBarrier();
    var tmax = -3.0e38;
    for (var c = 0u; c < 16u; c++) {
      let key = k0 + half * 16u + c;
      if (live && key >= firstKey && key <= p) { tmax = max(tmax, ss[rr * ${SS}u + half * 16u + c]); }
    }
    tmax = max(tmax, subgroupShuffleXor(tmax, 1u));
    let mNew = max(m, tmax);
    var sum = 0.0;
    for (var c = 0u; c < 16u; c++) {
      let key = k0 + half * 16u + c;
      if (live && key >= firstKey && key <= p) { sum += exp(ss[rr * ${SS}u + half * 16u + c] - mNew); }
    }
    sum += subgroupShuffleXor(sum, 1u);
    l = l * exp(m - mNew) + sum;
    m = mNew;
    workgroupBarrier();
  }
  // pass 2: P = exp(s - m) / l, O += P V
  let inv = select(0.0, 1.0 / l, l > 0.0);
${range(ND).map((n) => `  var o${n} = subgroup_matrix_result<f32, 16, 16>();`).join('\n')}
  for (var k0 = kBegin; k0 <= kEnd; k0 += ${TC_TILE_K}u) {
${loadTile('load4_k')}
    workgroupBarrier();
${scores}
    workgroupBarrier();
    for (var c = 0u; c < 16u; c++) {
      let key = k0 + half * 16u + c;
      let ok = live && key >= firstKey && key <= p;
      ps[rr * ${SP}u + half * 16u + c] = f16(select(0.0, exp(ss[rr * ${SS}u + half * 16u + c] - m) * inv, ok));
    }
${loadTile('load4_v')}
    workgroupBarrier();
${range(2).map((kk) => `    {
      let pl = ${L('&ps', `g * ${16 * SP}u + ${16 * kk}u`, `${SP}u`)};
${range(ND).map((n) => `      o${n} = subgroupMatrixMultiplyAccumulate(pl, ${R('&kvs', `${16 * kk * SQ + 16 * n}u`, `${SQ}u`, false)}, o${n});`).join('\n')}
    }`).join('\n')}
    workgroupBarrier();
  }
  // out (T, HEADS * HD): whole subgroups of live rows straight, the last partial one through ss
  let whole = t0 + g * 16u + 16u <= T;
${range(ND).map((n) => `  if (whole) {
    ${subgroupMatrixStoreWgsl(syntax, '&out', `(t0 + g * 16u) * ${qDim}u + h * ${HD}u + ${16 * n}u`, `o${n}`, false, `${qDim}u`)};
  } else {
    ${subgroupMatrixStoreWgsl(syntax, '&ss', `g * ${16 * SS}u`, `o${n}`, false, `${SS}u`)};
  }
  workgroupBarrier();
  if (!whole) {
    for (var e = lane; e < 256u; e += 32u) {
      let tt = t0 + g * 16u + e / 16u;
      if (tt < T) { out[tt * ${qDim}u + h * ${HD}u + ${16 * n}u + e % 16u] = ss[(g * 16u + e / 16u) * ${SS}u + e % 16u]; }
    }
  }
  workgroupBarrier();`).join('\n')}
}
`;
}
