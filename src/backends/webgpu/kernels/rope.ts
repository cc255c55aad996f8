/**
 * RoPE on the new tokens' q (in place) and k (written to the KV cache), plus v copied to the cache:
 * one workgroup per token t at position p = pos0 + t. Pairs (i, i + rotaryDim/2) as transformers'
 * rotate_half:  x * cos + rotate_half(x) * sin; dims past rotaryDim pass through. cos/sin tables are
 * (contextLength, rotaryDim/2), computed on the CPU by ropeTables (default, linear or llama3 scaling).
 * Row t's slot and position come from the step's row table (kernels/kv.ts); the rotated k and v are
 * written there by pairs (two f16 in a word).
 *   qkv: (T, qDim + 2 kvDim);  kCache, vCache: KV pool buffers (slots, contextLength, kvDim)
 */
import { kvHeader, kvWriteDecls, rowTable, type KvLayout } from './kv.js';
import { COMMON } from './prelude.js';

export interface RopeShape {
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rotaryDim: number;
}

/**
 * `parts` > 1 (batched decode rows, at most 65535 of them): workgroup (t, j) takes every parts-th
 * pair of token t from the j-th on, so a token's work spreads over `parts` workgroups (a lone
 * workgroup a token is latency-bound when the step has few tokens); each pair's arithmetic is the same.
 */
export function ropeKvWgsl(s: RopeShape, kv: KvLayout, parts = 1): string {
  const qDim = s.numHeads * s.headDim;
  const kvDim = s.numKvHeads * s.headDim;
  const half = s.rotaryDim / 2;
  return `${kvHeader(kv)}${COMMON}
const HD = ${s.headDim}u;
const HALF = ${half}u;
const ROT = ${s.rotaryDim}u;
const Q_DIM = ${qDim}u;
const KV_DIM = ${kvDim}u;
const STRIDE = ${qDim + 2 * kvDim}u;
@group(0) @binding(0) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(1) var<storage, read> cos_table: array<f32>;
@group(0) @binding(2) var<storage, read> sin_table: array<f32>;
${kvWriteDecls(kv, 3, 4)}
@group(0) @binding(5) var<storage, read> step: array<u32>;
${rowTable(kv)}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let t = ${parts > 1 ? 'wid.x' : 'linear_workgroup(wid, nwg)'};
  let first = ${parts > 1 ? 'wid.y * 64u + lid' : 'lid'};
  if (t >= step[0] || !row_here(t)) { return; }
  let p = row_pos(t);
  let base = t * STRIDE;
  let tab = p * HALF;
  for (var i = first; i < ${s.numHeads}u * HALF; i += ${64 * parts}u) {
    let o = base + (i / HALF) * HD + i % HALF;
    let c = cos_table[tab + i % HALF];
    let s = sin_table[tab + i % HALF];
    let a = qkv[o];
    let b = qkv[o + HALF];
    qkv[o] = a * c - b * s;
    qkv[o + HALF] = b * c + a * s;
  }
  let kb = base + Q_DIM;
  let row = slot_row(t, p) * KV_DIM;
  // pair w of a head: dims (w, w + HALF) rotated together, then pass-through dims two by two
  for (var e = first; e < KV_DIM / 2u; e += ${64 * parts}u) {
    let h0 = (e / (HD / 2u)) * HD;
    let w = e % (HD / 2u);
    var da = ROT + 2u * (w - min(w, HALF));
    var db = da + 1u;
    var a = 0.0;
    var b = 0.0;
    if (w < HALF) {
      da = w;
      db = w + HALF;
      let c = cos_table[tab + w];
      let s = sin_table[tab + w];
      let x = qkv[kb + h0 + da];
      let y = qkv[kb + h0 + db];
      a = x * c - y * s;
      b = y * c + x * s;
    } else {
      a = qkv[kb + h0 + da];
      b = qkv[kb + h0 + db];
    }
    store_kpair(row + h0, w, da, db, a, b);
    store_v(row + 2u * e, qkv[kb + KV_DIM + 2u * e], qkv[kb + KV_DIM + 2u * e + 1u]);
  }
}
`;
}
