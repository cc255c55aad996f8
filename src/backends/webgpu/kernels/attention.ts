/**
 * Causal grouped-query attention over the KV cache, one workgroup per (token, query head), in one
 * pass with an online softmax over blocks of 64 keys (so any context length works without a scores
 * buffer). Query head h reads KV head h / (numHeads / numKvHeads); with a sliding window W, position
 * p sees keys max(0, p-W+1)..p.
 *   softmax(q k^T / sqrt(headDim) + mask) v
 * qkv: (T, qDim + 2 kvDim), q at offset 0, already rotated; kCache, vCache: (contextLength, kvDim);
 * out: (T, qDim).
 */
import { COMMON, f32Literal, header, reductions, subgroupLet, subgroupParam, type KernelFeatures } from './prelude.js';

export interface AttentionShape {
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  slidingWindow: number | null;
}

const BLOCK = 64;

export function attentionWgsl(s: AttentionShape, f: KernelFeatures): string {
  const qDim = s.numHeads * s.headDim;
  const kvDim = s.numKvHeads * s.headDim;
  const dimsPerThread = Math.ceil(s.headDim / BLOCK);
  const first = s.slidingWindow ? `select(0u, p + 1u - ${s.slidingWindow}u, p + 1u > ${s.slidingWindow}u)` : '0u';
  return `${header(f)}${COMMON}${reductions(BLOCK, f)}
const HD = ${s.headDim}u;
const HEADS = ${s.numHeads}u;
const GROUP = ${s.numHeads / s.numKvHeads}u;
const KV_DIM = ${kvDim}u;
const STRIDE = ${qDim + 2 * kvDim}u;
const DPT = ${dimsPerThread}u;
@group(0) @binding(0) var<storage, read> qkv: array<f32>;
@group(0) @binding(1) var<storage, read> k_cache: array<f32>;
@group(0) @binding(2) var<storage, read> v_cache: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> step: array<u32>;

var<workgroup> qs: array<f32, ${s.headDim}>;
var<workgroup> ps: array<f32, ${BLOCK}>;

@compute @workgroup_size(${BLOCK})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32${subgroupParam(f)}) {
  ${subgroupLet(f)}
  let idx = linear_workgroup(wid, nwg);
  let t = idx / HEADS;
  let h = idx % HEADS;
  if (t >= step[0]) { return; }
  let kv = (h / GROUP) * HD;
  let p = step[1] + t;
  let first = ${first};
  for (var d = lid; d < HD; d += ${BLOCK}u) { qs[d] = qkv[t * STRIDE + h * HD + d]; }
  workgroupBarrier();
  var m = -3.0e38; // running max of the scores
  var l = 0.0;     // running sum of exp(score - m)
  var acc: array<f32, ${dimsPerThread}>;
  for (var b = first; b <= p; b += ${BLOCK}u) {
    let j = b + lid;
    var score = -3.0e38;
    if (j <= p) {
      var dotp = 0.0;
      for (var d = 0u; d < HD; d++) { dotp += qs[d] * k_cache[j * KV_DIM + kv + d]; }
      score = dotp * ${f32Literal(1 / Math.sqrt(s.headDim))};
    }
    let mNew = max(m, wg_max(score, lid, sg_size));
    let e = select(0.0, exp(score - mNew), j <= p);
    let correction = exp(m - mNew);
    l = l * correction + wg_sum(e, lid, sg_size);
    ps[lid] = e;
    workgroupBarrier();
    let n = min(${BLOCK}u, p + 1u - b);
    for (var i = 0u; i < DPT; i++) {
      let d = lid + i * ${BLOCK}u;
      if (d < HD) {
        var a = acc[i] * correction;
        for (var jj = 0u; jj < n; jj++) { a += ps[jj] * v_cache[(b + jj) * KV_DIM + kv + d]; }
        acc[i] = a;
      }
    }
    m = mNew;
  }
  for (var i = 0u; i < DPT; i++) {
    let d = lid + i * ${BLOCK}u;
    if (d < HD) { out[t * HEADS * HD + h * HD + d] = acc[i] / l; }
  }
}
`;
}
