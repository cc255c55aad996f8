/**
 * RoPE on the new tokens' q (in place) and k (written to the KV cache), plus v copied to the cache:
 * one workgroup per token t at position p = pos0 + t. Pairs (i, i + rotaryDim/2) as transformers'
 * rotate_half:  x * cos + rotate_half(x) * sin; dims past rotaryDim pass through. cos/sin tables are
 * (contextLength, rotaryDim/2), computed on the CPU by ropeTables (default, linear or llama3 scaling).
 *   qkv: (T, qDim + 2 kvDim);  kCache, vCache: (contextLength, kvDim)
 */
import { COMMON } from './prelude.js';

export interface RopeShape {
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rotaryDim: number;
}

export function ropeKvWgsl(s: RopeShape): string {
  const qDim = s.numHeads * s.headDim;
  const kvDim = s.numKvHeads * s.headDim;
  const half = s.rotaryDim / 2;
  return `${COMMON}
const HD = ${s.headDim}u;
const HALF = ${half}u;
const Q_DIM = ${qDim}u;
const KV_DIM = ${kvDim}u;
const STRIDE = ${qDim + 2 * kvDim}u;
@group(0) @binding(0) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(1) var<storage, read> cos_table: array<f32>;
@group(0) @binding(2) var<storage, read> sin_table: array<f32>;
@group(0) @binding(3) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<f32>;
@group(0) @binding(5) var<storage, read> step: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let t = linear_workgroup(wid, nwg);
  if (t >= step[0]) { return; }
  let p = step[1] + t;
  let base = t * STRIDE;
  let tab = p * HALF;
  for (var i = lid; i < ${s.numHeads}u * HALF; i += 64u) {
    let o = base + (i / HALF) * HD + i % HALF;
    let c = cos_table[tab + i % HALF];
    let s = sin_table[tab + i % HALF];
    let a = qkv[o];
    let b = qkv[o + HALF];
    qkv[o] = a * c - b * s;
    qkv[o + HALF] = b * c + a * s;
  }
  let kb = base + Q_DIM;
  for (var e = lid; e < KV_DIM; e += 64u) {
    let d = e % HD;
    let h0 = kb + e - d;
    var v = qkv[kb + e];
    if (d < HALF) {
      v = v * cos_table[tab + d] - qkv[h0 + d + HALF] * sin_table[tab + d];
    } else if (d < 2u * HALF) {
      v = v * cos_table[tab + d - HALF] + qkv[h0 + d - HALF] * sin_table[tab + d - HALF];
    }
    k_cache[p * KV_DIM + e] = v;
    v_cache[p * KV_DIM + e] = qkv[kb + KV_DIM + e];
  }
}
`;
}
