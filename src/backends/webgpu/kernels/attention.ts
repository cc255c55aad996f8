/**
 * Causal grouped-query attention over the KV cache, one workgroup per (token, query head), in one
 * pass with an online softmax over blocks of 64 keys (so any context length works without a scores
 * buffer). Query head h reads KV head h / (numHeads / numKvHeads); with a sliding window W, position
 * p sees keys max(0, p-W+1)..p.
 *   softmax(q k^T / sqrt(headDim) + mask) v
 * Row t's slot and position come from the step's row table (kernels/kv.ts), so the rows of one
 * dispatch may belong to different sequences.
 * qkv: (T, qDim + 2 kvDim), q at offset 0, already rotated; kCache, vCache: KV pool buffers
 * (slots, contextLength, kvDim); out: (T, qDim).
 */
import { kDimFn, kvHeader, kvReadDecls, rowTable, type KvLayout } from './kv.js';
import { COMMON, f32Literal, header, reductions, subgroupLet, subgroupParam, type KernelFeatures } from './prelude.js';

export interface AttentionShape {
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  slidingWindow: number | null;
  rotaryDim: number;
}

const BLOCK = 64;

export function attentionWgsl(s: AttentionShape, f: KernelFeatures, kv: KvLayout): string {
  const qDim = s.numHeads * s.headDim;
  const kvDim = s.numKvHeads * s.headDim;
  const dimsPerThread = Math.ceil(s.headDim / BLOCK);
  const first = s.slidingWindow ? `select(0u, p + 1u - ${s.slidingWindow}u, p + 1u > ${s.slidingWindow}u)` : '0u';
  return `${header(f)}${kvHeader(kv)}${COMMON}${reductions(BLOCK, f)}
const HD = ${s.headDim}u;
const HEADS = ${s.numHeads}u;
const GROUP = ${s.numHeads / s.numKvHeads}u;
const KV_DIM = ${kvDim}u;
const STRIDE = ${qDim + 2 * kvDim}u;
const DPT = ${dimsPerThread}u;
@group(0) @binding(0) var<storage, read> qkv: array<f32>;
${kvReadDecls(kv, 1, 2)}
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> step: array<u32>;
${rowTable(kv)}
${kDimFn(kv.storage, s.rotaryDim)}

var<workgroup> qs: array<f32, ${s.headDim}>;
var<workgroup> ps: array<f32, ${BLOCK}>;

@compute @workgroup_size(${BLOCK})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32${subgroupParam(f)}) {
  ${subgroupLet(f)}
  let idx = linear_workgroup(wid, nwg);
  let t = idx / HEADS;
  let h = idx % HEADS;
  if (t >= step[0] || !row_here(t)) { return; }
  let kv = (h / GROUP) * HD;
  let p = row_pos(t);
  let first = ${first};
  // q in the order the cache stores K's dims
  for (var d = lid; d < HD; d += ${BLOCK}u) { qs[d] = qkv[t * STRIDE + h * HD + k_dim(d)]; }
  workgroupBarrier();
  var m = -3.0e38; // running max of the scores
  var l = 0.0;     // running sum of exp(score - m)
  var acc: array<f32, ${dimsPerThread}>;
  for (var b = first; b <= p; b += ${BLOCK}u) {
    let j = b + lid;
    var score = -3.0e38;
    if (j <= p) {
      var dotp = 0.0;
      let kr = slot_row(t, j) * KV_DIM + kv;
      for (var d = 0u; d < HD; d++) { dotp += qs[d] * load_k(kr + d); }
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
        let vr = slot_row(t, b) * KV_DIM + kv + d;
        for (var jj = 0u; jj < n; jj++) { a += ps[jj] * load_v(vr + jj * KV_DIM); }
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

/**
 * Prompt attention in tiles of queries x keys (flash attention): one workgroup of 64 invocations per
 * (query head h, tile of BQ = 16 consecutive rows of one sequence); the keys the tile sees are walked
 * in tiles of BK = 16, each K tile and V tile read once from the cache into workgroup memory for all
 * BQ rows (instead of once per row), with an online softmax (running max m, sum l, output rescaled).
 *   invocation (row r = lid / 4, lane = lid % 4) keeps q's quarter lane*HD/4.. (pre-scaled, in K's
 *   stored dim order) and that quarter of the row's output; a score is the sum of 4 partial dots
 *   exchanged through workgroup memory.
 *   row t sees keys first_t..p_t of its slot (p_t its position, first_t = max(0, p_t - W + 1) with a
 *   sliding window W), so the causal mask and the window are per row; a key tile outside every row's
 *   range is never read.
 * Workgroup memory: BK x HD floats (K, then V) + BQ x BK x 4 partial scores: 12 KiB at HD 128, inside
 * WebGPU's default 16 KiB. Needs HD % 16 == 0 (attentionTiledFits); other head dims take attentionWgsl.
 * Rows of a tile must share a slot (one sequence's prompt); a batch of sequences takes attentionWgsl.
 */
export const TILE_Q = 16;
const TILE_K = 16;
const LANES = 4;

export function attentionTiledFits(s: AttentionShape): boolean {
  return s.headDim % (4 * LANES) === 0 && TILE_K * s.headDim * 4 + TILE_Q * TILE_K * LANES * 4 <= 16384;
}

export function attentionTiledWgsl(s: AttentionShape, kv: KvLayout): string {
  const qDim = s.numHeads * s.headDim, kvDim = s.numKvHeads * s.headDim;
  const HD4 = s.headDim / 4, PER = HD4 / LANES; // vec4s of a lane's quarter
  const each = (f: (i: number) => string) => Array.from({ length: PER }, (_, i) => f(i)).join('\n  ');
  const first = (p: string) => (s.slidingWindow ? `select(0u, ${p} + 1u - ${s.slidingWindow}u, ${p} + 1u > ${s.slidingWindow}u)` : '0u');
  return `${kvHeader(kv)}${COMMON}
const HD4 = ${HD4}u;
const PER = ${PER}u;
const HEADS = ${s.numHeads}u;
const GROUP = ${s.numHeads / s.numKvHeads}u;
const KV_DIM4 = ${kvDim / 4}u;
const STRIDE = ${qDim + 2 * kvDim}u;
const BQ = ${TILE_Q}u;
const BK = ${TILE_K}u;
@group(0) @binding(0) var<storage, read> qkv: array<f32>;
${kvReadDecls(kv, 1, 2)}
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> step: array<u32>;
${rowTable(kv)}
${kDimFn(kv.storage, s.rotaryDim)}
// q's dims d..d+3 of the row at qo, in K's stored order, pre-scaled by 1/sqrt(HD)
fn q_at(qo: u32, d: u32) -> vec4<f32> {
  return vec4<f32>(qkv[qo + k_dim(d)], qkv[qo + k_dim(d + 1u)], qkv[qo + k_dim(d + 2u)], qkv[qo + k_dim(d + 3u)]) * ${f32Literal(1 / Math.sqrt(s.headDim))};
}

var<workgroup> tile: array<vec4<f32>, ${TILE_K * HD4}>;        // K rows, then V rows of the key tile
var<workgroup> partial: array<f32, ${TILE_Q * TILE_K * LANES}>; // (row, key, lane) partial dots
var<workgroup> probs: array<f32, ${TILE_Q * TILE_K}>;          // (row, key) e^(s - m), written by lane 0

@compute @workgroup_size(${TILE_Q * LANES})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let h = wid.x;
  let t0 = wid.y * BQ;
  let T = step[0];
  let r = lid / ${LANES}u;
  let lane = lid % ${LANES}u;
  let t = t0 + r;
  let live = t < T;
  let tl = min(t, T - 1u);
  let p = row_pos(tl);
  let firstKey = ${first('p')};
  // the tile's key range: from the first row's first key to the last live row's position
  let p0 = row_pos(t0);
  let kBegin = ${first('p0')};
  let kEnd = row_pos(min(t0 + BQ, T) - 1u);
  let sb = slot_row(t0, 0u);
  let kvh = h / GROUP;
  let qo = tl * STRIDE + h * ${s.headDim}u;
  ${each((i) => `let q${i} = q_at(qo, 4u * (lane * PER + ${i}u));`)}
  ${each((i) => `var acc${i} = vec4<f32>(0.0);`)}
  var m = -3.0e38;
  var l = 0.0;
  for (var k0 = kBegin; k0 <= kEnd; k0 += BK) {
    for (var i = lid; i < BK * HD4; i += ${TILE_Q * LANES}u) {
      let key = k0 + i / HD4;
      tile[i] = select(vec4<f32>(0.0), load4_k((sb + key) * KV_DIM4 + kvh * HD4 + i % HD4), key <= kEnd);
    }
    workgroupBarrier();
    for (var j = 0u; j < BK; j++) {
      let kb = j * HD4 + lane * PER;
      partial[(r * BK + j) * ${LANES}u + lane] = ${Array.from({ length: PER }, (_, i) => `dot(q${i}, tile[kb + ${i}u])`).join(' + ')};
    }
    workgroupBarrier();
    // every lane of a row finds the same max and sum; lane 0 publishes e^(s - m)
    var mt = m;
    for (var j = 0u; j < BK; j++) {
      let o = (r * BK + j) * ${LANES}u;
      let key = k0 + j;
      let ok = live && key >= firstKey && key <= p;
      mt = max(mt, select(-3.0e38, (partial[o] + partial[o + 1u]) + (partial[o + 2u] + partial[o + 3u]), ok));
    }
    let correction = exp(m - mt);
    var sum = 0.0;
    for (var j = 0u; j < BK; j++) {
      let o = (r * BK + j) * ${LANES}u;
      let key = k0 + j;
      let ok = live && key >= firstKey && key <= p;
      let e = select(0.0, exp((partial[o] + partial[o + 1u]) + (partial[o + 2u] + partial[o + 3u]) - mt), ok);
      sum += e;
      if (lane == 0u) { probs[r * BK + j] = e; }
    }
    l = l * correction + sum;
    m = mt;
    for (var i = lid; i < BK * HD4; i += ${TILE_Q * LANES}u) {
      let key = k0 + i / HD4;
      tile[i] = select(vec4<f32>(0.0), load4_v((sb + key) * KV_DIM4 + kvh * HD4 + i % HD4), key <= kEnd);
    }
    workgroupBarrier();
    ${each((i) => `acc${i} *= correction;`)}
    for (var j = 0u; j < BK; j++) {
      let pj = probs[r * BK + j];
      let vb = j * HD4 + lane * PER;
      ${each((i) => `acc${i} += pj * tile[vb + ${i}u];`)}
    }
    workgroupBarrier();
  }
  if (live) {
    let ob = (t * HEADS + h) * HD4 + lane * PER;
    ${each((i) => `out[ob + ${i}u] = acc${i} / l;`)}
  }
}
`;
}
