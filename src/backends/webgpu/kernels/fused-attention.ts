/**
 * Decode-step kernels of the fused path (one token at position p = STEP[1]):
 *
 * attention: one workgroup per query head h (KV head h / (heads / kvHeads)), WG invocations.
 *   scores: invocation i takes keys first + i, first + i + WG, ...; each key's HD-dot is read as
 *           whole vec4 rows (HD/4 loads, all independent) into shared `sc`
 *   softmax over sc (workgroup max and sum), then
 *   out[d] = sum_k e_k V[k][d] / sum_k e_k: invocation (g, lane) adds vec4 lane of keys g, g + G, ...
 *           (coalesced rows of V), the G partial vectors summed through shared memory
 *   Keys first..p, first = max(0, p - window + 1) with a sliding window. Scores live in shared
 *   memory, so the context length is bounded (attentionFits); past it the engine's attention runs.
 *     qkv: q at 0..qDim (already rotated); kCache, vCache: (contextLength, kvDim); out: (qDim)
 *
 * argmax: one workgroup of WG (1024, or what the device grants) over vec4s of logits; lowest index on
 * ties (as the CPU's argmax).
 */
import { unitMajorIndex } from './fused-matvec.js';
import { kDimFn, kvHeader, kvReadDecls, rowTable, type KvLayout } from './kv.js';
import { COMMON, f32Literal, header, reductions, subgroupLet, subgroupParam, type KernelFeatures } from './prelude.js';

export interface DecodeAttentionShape {
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  slidingWindow: number | null;
  contextLength: number;
  /** Dims of a head that RoPE rotates (the f16 cache stores K's dims in pair order, kernels/kv.ts); default headDim. */
  rotaryDim?: number;
  /** Write the output unit-major for an o_proj of these units a row and vec4s a unit (0: in order). */
  outUnits?: number;
  outVecs?: number;
}

/** Float i of the attention output's index in `out` (unit-major for the consumer where asked). */
function outIndex(s: DecodeAttentionShape, i: string): string {
  return s.outUnits && s.outVecs ? unitMajorIndex(i, s.outUnits, s.outVecs) : i;
}

/** Invocations a workgroup by default (the measured one; 1024 is an option where the scores fit). */
export const ATTENTION_WG = 256;

function keysOf(s: DecodeAttentionShape): number {
  return s.slidingWindow ? Math.min(s.slidingWindow, s.contextLength) : s.contextLength;
}

/** Workgroup memory the kernel needs (scores, partial vectors, reduction scratch). */
export function attentionWorkgroupBytes(s: DecodeAttentionShape, wg = ATTENTION_WG): number {
  return keysOf(s) * 4 + wg * 16 + 2 * wg * 4;
}

/** Whether the shared-memory scores and the lane mapping suit this shape. */
export function attentionFits(s: DecodeAttentionShape, wg = ATTENTION_WG): boolean {
  const lanes = s.headDim / 4;
  return s.headDim % 4 === 0 && lanes <= wg && (lanes & (lanes - 1)) === 0 && keysOf(s) <= 8192;
}

/**
 * The kernels' bindings: q (in qkv), the K and V pool buffers, the output (`out` or the chunks'
 * `part`), the step (with the row table); plus q_at(e) (float e of qkv) and k_dim (kernels/kv.ts).
 * Row r = wid.y of a dispatch is row r of the table: its q at r * QKV_STRIDE4 vec4s of qkv.
 */
function attentionBindings(s: DecodeAttentionShape, kv: KvLayout, output: 'out' | 'part'): string {
  return `@group(0) @binding(0) var<storage, read> qkv: array<vec4<f32>>;
${kvReadDecls(kv, 1, 2)}
@group(0) @binding(3) var<storage, read_write> ${output}: array<f32>;
@group(0) @binding(4) var<storage, read> step: array<u32>;
${rowTable(kv)}
${kDimFn(kv.storage, s.rotaryDim ?? s.headDim)}
const QKV_STRIDE4 = ${((s.numHeads + 2 * s.numKvHeads) * s.headDim) / 4}u;
fn q_at(e: u32) -> f32 { return qkv[e >> 2u][e & 3u]; }`;
}

/** WGSL: q4[i] (vec4 i of head `head` of row r, in K's stored dim order) times `scale`. */
function loadQ4(kv: KvLayout, hd: number, head: string, i: string, scale: string): string {
  if (kv.storage === 'f32') return `qkv[r * QKV_STRIDE4 + ${head} * ${hd / 4}u + ${i}] * ${scale}`;
  const qo = `r * QKV_STRIDE4 * 4u + ${head} * ${hd}u`;
  return `vec4<f32>(q_at(${qo} + k_dim(4u * ${i})), q_at(${qo} + k_dim(4u * ${i} + 1u)), q_at(${qo} + k_dim(4u * ${i} + 2u)), q_at(${qo} + k_dim(4u * ${i} + 3u))) * ${scale}`;
}

/**
 * The keys position p = step[1] attends to: `first` .. `first + n - 1` (a sliding window moves
 * `first`); with `chunk`, chunk c's share of them: `k0` .. `k0 + cn - 1` (relative to `first`).
 */
function keyRange(s: DecodeAttentionShape, chunk: boolean): string {
  const first = s.slidingWindow ? `select(0u, p + 1u - ${s.slidingWindow}u, p + 1u > ${s.slidingWindow}u)` : '0u';
  return `let r = wid.y;
  if (!row_here(r)) { return; }
  let p = row_pos(r);
  let sb = slot_row(r, 0u);
  let first = ${first};
  let n = p + 1u - first;${chunk ? `
  let len = (n + SPLITS - 1u) / SPLITS;
  let k0 = min(n, c * len);
  let cn = min(n, k0 + len) - k0;` : ''}`;
}

/**
 * WGSL shared by the attention kernels: q of head h (pre-scaled by 1/sqrt(HD)), then for keys
 * key0 .. key0 + count - 1 of KV head kvh the scores into shared `sc` (invocation i takes keys i,
 * i + WG, ...; a whole HD-dot each, its vec4 loads all independent), softmax's max `m`, sc turned into
 * e^(s - m) and their sum `total`, published to the workgroup.
 */
function softmaxScores(kv: KvLayout, hd: number, WG: number, count: string, key0: string): string {
  const lanes = hd / 4;
  const dot = Array.from({ length: lanes }, (_, i) => `dot(q4[${i}], load4_k(base + ${i}u))`);
  // pairwise sums keep the dependency chain short
  const tree = (xs: string[]): string => (xs.length === 1 ? xs[0]! : `(${tree(xs.slice(0, xs.length / 2))} + ${tree(xs.slice(xs.length / 2))})`);
  return `var q4: array<vec4<f32>, ${lanes}>;
  for (var i = 0u; i < HD4; i++) { q4[i] = ${loadQ4(kv, hd, 'h', 'i', f32Literal(1 / Math.sqrt(hd)))}; }
  var m = -3.0e38;
  for (var j = lid; j < ${count}; j += ${WG}u) {
    let base = (sb + ${key0} + j) * KV_DIM4 + kvh * HD4;
    let s = ${tree(dot)};
    sc[j] = s;
    m = max(m, s);
  }
  m = wg_max(m, lid, sg_size);
  var total = 0.0;
  for (var j = lid; j < ${count}; j += ${WG}u) {
    let e = exp(sc[j] - m);
    sc[j] = e;
    total += e;
  }
  total = wg_sum(total, lid, sg_size); // its barriers also publish sc`;
}

export function decodeAttentionWgsl(s: DecodeAttentionShape, kv: KvLayout, f: KernelFeatures, WG = ATTENTION_WG): string {
  const hd = s.headDim, lanes = hd / 4, groups = WG / lanes;
  const keys = s.slidingWindow ? Math.min(s.slidingWindow, s.contextLength) : s.contextLength;
  const kvDim4 = (s.numKvHeads * hd) / 4;
  return `${header(f)}${kvHeader(kv)}${COMMON}${reductions(WG, f)}
const HD4 = ${lanes}u;
const GROUP = ${s.numHeads / s.numKvHeads}u;
const KV_DIM4 = ${kvDim4}u;
${attentionBindings(s, kv, 'out')}

var<workgroup> sc: array<f32, ${keys}>;
var<workgroup> partial: array<vec4<f32>, ${WG}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32${subgroupParam(f)}) {
  ${subgroupLet(f)}
  let h = wid.x;
  let kvh = h / GROUP;
  ${keyRange(s, false)}
  ${softmaxScores(kv, hd, WG, 'n', 'first')}
  let g = lid / HD4;
  let lane = lid % HD4;
  var acc = vec4<f32>(0.0);
  for (var j = g; j < n; j += ${groups}u) { acc += sc[j] * load4_v((sb + first + j) * KV_DIM4 + kvh * HD4 + lane); }
  partial[lid] = acc;
  workgroupBarrier();
  if (lid < HD4) {
    var v = vec4<f32>(0.0);
    for (var i = 0u; i < ${groups}u; i++) { v += partial[i * HD4 + lid]; }
    let o = v / total;
    for (var e = 0u; e < 4u; e++) { out[r * ${s.numHeads * hd}u + ${outIndex(s, '4u * (h * HD4 + lid) + e')}] = o[e]; }
  }
}
`;
}

export function decodeArgmaxWgsl(vocab: number, WG = 1024): string {
  if ((WG & (WG - 1)) !== 0) throw new Error(`argmax: workgroup size ${WG} is not a power of two`);
  const n4 = Math.ceil(vocab / 4);
  return `${COMMON}
const V = ${vocab}u;
@group(0) @binding(0) var<storage, read> logits: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
var<workgroup> best_v: array<f32, ${WG}>;
var<workgroup> best_i: array<u32, ${WG}>;

@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) lid: u32) {
  var bv = -3.4e38;
  var bi = 0xffffffffu;
  // invocation lid sees vec4s lid, lid + WG, ...: indices in increasing order, so '>' keeps the lowest on
  // ties; 8 loads issued together (one loop of dependent loads cost about 14 µs on the H200)
  var i = lid;
  for (; i + ${7 * WG}u < ${n4}u; i += ${8 * WG}u) {
    let vs = array<vec4<f32>, 8>(${Array.from({ length: 8 }, (_, k) => `logits[i + ${k * WG}u]`).join(', ')});
    for (var k = 0u; k < 8u; k++) {
      for (var e = 0u; e < 4u; e++) {
        let idx = 4u * (i + k * ${WG}u) + e;
        if (idx < V && (vs[k][e] > bv || bi == 0xffffffffu)) { bv = vs[k][e]; bi = idx; }
      }
    }
  }
  for (; i < ${n4}u; i += ${WG}u) {
    let v = logits[i];
    for (var e = 0u; e < 4u; e++) {
      let idx = 4u * i + e;
      if (idx < V && (v[e] > bv || bi == 0xffffffffu)) { bv = v[e]; bi = idx; }
    }
  }
  best_v[lid] = bv;
  best_i[lid] = bi;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) {
      let ov = best_v[lid + s];
      let oi = best_i[lid + s];
      if (oi != 0xffffffffu && (best_i[lid] == 0xffffffffu || ov > best_v[lid] || (ov == best_v[lid] && oi < best_i[lid]))) {
        best_v[lid] = ov;
        best_i[lid] = oi;
      }
    }
    workgroupBarrier();
  }
  if (lid == 0u) { out[0] = best_i[0]; }
}
`;
}

/**
 * Split decode attention (flash-decoding): the keys of head h are cut into SPLITS chunks, one
 * workgroup each (grid heads x SPLITS), so a 512-key context keeps hundreds of workgroups busy
 * instead of one per head. A chunk's workgroup writes its unnormalised output o_c (HD), its max
 * score m_c and its sum of exponentials l_c; `decodeCombineWgsl` then gives
 *   out = sum_c e^(m_c - M) o_c / sum_c e^(m_c - M) l_c,  M = max_c m_c.
 *   scores: invocation i takes the chunk's keys i, i + WG, ... (a whole HD-dot each, vec4 loads)
 *   values: invocation (g, lane) adds vec4 lane of keys g, g + G, ... four at a time
 * Buffers: qkv, K, V as decodeAttentionWgsl; part: (heads, SPLITS, HD + 2) floats (o, then m, l).
 */
export interface SplitAttentionShape extends DecodeAttentionShape {
  splits: number;
}

/** Chunks of keys per head: about 64 keys each, at most 32. */
export function attentionSplits(s: DecodeAttentionShape): number {
  return Math.max(1, Math.min(32, Math.ceil(keysOf(s) / 64)));
}

export const SPLIT_WG = 128;

/** Whether the split kernel suits this shape (its chunk's scores in shared memory, lanes mapping). */
export function splitAttentionFits(s: DecodeAttentionShape, WG = SPLIT_WG): boolean {
  const lanes = s.headDim / 4;
  return s.headDim % 4 === 0 && lanes <= WG && (lanes & (lanes - 1)) === 0 && Math.ceil(keysOf(s) / attentionSplits(s)) <= 4096;
}

export function decodeAttentionPartWgsl(s: SplitAttentionShape, kv: KvLayout, f: KernelFeatures, WG = SPLIT_WG): string {
  const hd = s.headDim, lanes = hd / 4, groups = WG / lanes;
  const chunkMax = Math.ceil(keysOf(s) / s.splits);
  const kvDim4 = (s.numKvHeads * hd) / 4;
  return `${header(f)}${kvHeader(kv)}${COMMON}${reductions(WG, f)}
const HD4 = ${lanes}u;
const GROUP = ${s.numHeads / s.numKvHeads}u;
const KV_DIM4 = ${kvDim4}u;
const SPLITS = ${s.splits}u;
${attentionBindings(s, kv, 'part')}

var<workgroup> sc: array<f32, ${chunkMax}>;
var<workgroup> partial: array<vec4<f32>, ${WG}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32${subgroupParam(f)}) {
  ${subgroupLet(f)}
  let h = wid.x / SPLITS;
  let c = wid.x % SPLITS;
  let kvh = h / GROUP;
  ${keyRange(s, true)}
  ${softmaxScores(kv, hd, WG, 'cn', 'first + k0')}
  let g = lid / HD4;
  let lane = lid % HD4;
  var a0 = vec4<f32>(0.0);
  var a1 = vec4<f32>(0.0);
  var a2 = vec4<f32>(0.0);
  var a3 = vec4<f32>(0.0);
  let vb = (sb + first + k0) * KV_DIM4 + kvh * HD4 + lane;
  var j = g;
  for (; j + ${3 * groups}u < cn; j += ${4 * groups}u) {
    a0 += sc[j] * load4_v(vb + j * KV_DIM4);
    a1 += sc[j + ${groups}u] * load4_v(vb + (j + ${groups}u) * KV_DIM4);
    a2 += sc[j + ${2 * groups}u] * load4_v(vb + (j + ${2 * groups}u) * KV_DIM4);
    a3 += sc[j + ${3 * groups}u] * load4_v(vb + (j + ${3 * groups}u) * KV_DIM4);
  }
  for (; j < cn; j += ${groups}u) { a0 += sc[j] * load4_v(vb + j * KV_DIM4); }
  partial[lid] = (a0 + a1) + (a2 + a3);
  workgroupBarrier();
  let o = ((r * ${s.numHeads}u + h) * SPLITS + c) * ${hd + 2}u;
  if (lid < HD4) {
    var v = vec4<f32>(0.0);
    for (var i = 0u; i < ${groups}u; i++) { v += partial[i * HD4 + lid]; }
    for (var e = 0u; e < 4u; e++) { part[o + 4u * lid + e] = v[e]; }
  }
  if (lid == 0u) {
    part[o + ${hd}u] = select(-3.0e38, m, cn > 0u);
    part[o + ${hd + 1}u] = total;
  }
}
`;
}

/**
 * The chunked attention with the query heads that share a KV head together (grouped-query attention):
 * one workgroup per (KV head, chunk) reads each key and value row once for all G = heads / kvHeads
 * query heads, instead of once per query head (at 4096 keys the per-head kernel re-read the cache G
 * times and was bound by that). Same `part` output as decodeAttentionPartWgsl, so the same combine.
 *   q of the G heads in shared memory; scores: invocation i takes keys i, i + WG, ... (a whole key row
 *   of HD/4 vec4 loads, dotted with the G queries); per-head max and sum by shared-memory trees over
 *   L = pow2 <= WG / G lanes a head; values: invocation (grp, lane) adds vec4 lane of keys grp,
 *   grp + WG / HD4, ... into G accumulators, the groups summed through shared memory.
 */
export function gqaPartWorkgroupBytes(s: SplitAttentionShape, WG = SPLIT_WG): number {
  const G = s.numHeads / s.numKvHeads, chunk = Math.ceil(keysOf(s) / s.splits);
  return G * (s.headDim / 4) * 16 + G * chunk * 4 + WG * 4 + G * 4 + G * WG * 16;
}

export function decodeAttentionPartGqaWgsl(s: SplitAttentionShape, kv: KvLayout, WG = SPLIT_WG): string {
  const hd = s.headDim, HD4 = hd / 4, G = s.numHeads / s.numKvHeads, NG = WG / HD4;
  const CH = Math.ceil(keysOf(s) / s.splits);
  let L = 1;
  while (L * 2 <= WG / G) L *= 2;
  const gs = Array.from({ length: G }, (_, g) => g);
  const kLoads = Array.from({ length: HD4 }, (_, i) => `let k${i} = load4_k(base + ${i}u);`).join('\n    ');
  const dots = gs.map((g) => `sc[${g * CH}u + j] = ${Array.from({ length: HD4 }, (_, i) => `dot(k${i}, qs[${g * HD4 + i}u])`).join(' + ')};`).join('\n    ');
  // per-head tree over L lanes a head, entries red[idx * G + g]
  const tree = (op: string) => `for (var st = ${L / 2}u; st > 0u; st >>= 1u) {
    if (lid < ${G * L}u && idx < st) { red[lid] = ${op}(red[lid], red[lid + st * ${G}u]); }
    workgroupBarrier();
  }`;
  return `${kvHeader(kv)}
const HD4 = ${HD4}u;
const KV_DIM4 = ${(s.numKvHeads * hd) / 4}u;
const SPLITS = ${s.splits}u;
const G = ${G}u;
${attentionBindings(s, kv, 'part')}

var<workgroup> qs: array<vec4<f32>, ${G * HD4}>;
var<workgroup> sc: array<f32, ${G * CH}>;
var<workgroup> red: array<f32, ${WG}>;
var<workgroup> mx: array<f32, ${G}>;
var<workgroup> partial: array<vec4<f32>, ${G * WG}>;

fn add(a: f32, b: f32) -> f32 { return a + b; }

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let kvh = wid.x / SPLITS;
  let c = wid.x % SPLITS;
  ${keyRange(s, true)}
  for (var i = lid; i < G * HD4; i += ${WG}u) { qs[i] = ${loadQ4(kv, hd, '(kvh * G + i / HD4)', '(i % HD4)', f32Literal(1 / Math.sqrt(hd)))}; }
  workgroupBarrier();
  // scores of every head of the group: one key row read once
  for (var j = lid; j < cn; j += ${WG}u) {
    let base = (sb + first + k0 + j) * KV_DIM4 + kvh * HD4;
    ${kLoads}
    ${dots}
  }
  workgroupBarrier();
  // per-head max, then e^(s - m) and its sum
  let g = lid % G;
  let idx = lid / G;
  var m = -3.0e38;
  if (lid < ${G * L}u) { for (var j = idx; j < cn; j += ${L}u) { m = max(m, sc[g * ${CH}u + j]); } }
  red[lid] = m;
  workgroupBarrier();
  ${tree('max')}
  if (lid < G) { mx[lid] = red[lid]; }
  workgroupBarrier();
  m = mx[g];
  var t = 0.0;
  if (lid < ${G * L}u) {
    for (var j = idx; j < cn; j += ${L}u) { let e = exp(sc[g * ${CH}u + j] - m); sc[g * ${CH}u + j] = e; t += e; }
  }
  red[lid] = t;
  workgroupBarrier();
  ${tree('add')}
  // values: every head's accumulator from one value row load
  let lane = lid % HD4;
  let grp = lid / HD4;
  ${gs.map((h) => `var a${h} = vec4<f32>(0.0);`).join(' ')}
  let vb = (sb + first + k0) * KV_DIM4 + kvh * HD4 + lane;
  var j = grp;
  for (; j + ${NG}u < cn; j += ${2 * NG}u) {
    let v0 = load4_v(vb + j * KV_DIM4);
    let v1 = load4_v(vb + (j + ${NG}u) * KV_DIM4);
    ${gs.map((h) => `a${h} += sc[${h * CH}u + j] * v0 + sc[${h * CH}u + j + ${NG}u] * v1;`).join('\n    ')}
  }
  if (j < cn) {
    let v0 = load4_v(vb + j * KV_DIM4);
    ${gs.map((h) => `a${h} += sc[${h * CH}u + j] * v0;`).join('\n    ')}
  }
  ${gs.map((h) => `partial[${h * WG}u + lid] = a${h};`).join('\n  ')}
  workgroupBarrier();
  if (lid < G * HD4) {
    let gh = lid / HD4;
    let ln = lid % HD4;
    var v = vec4<f32>(0.0);
    for (var q = 0u; q < ${NG}u; q++) { v += partial[gh * ${WG}u + q * HD4 + ln]; }
    let o = ((r * ${s.numHeads}u + kvh * G + gh) * SPLITS + c) * ${hd + 2}u;
    for (var e = 0u; e < 4u; e++) { part[o + 4u * ln + e] = v[e]; }
  }
  if (lid < G) {
    let o = ((r * ${s.numHeads}u + kvh * G + lid) * SPLITS + c) * ${hd + 2}u;
    part[o + ${hd}u] = select(-3.0e38, mx[lid], cn > 0u);
    part[o + ${hd + 1}u] = red[lid];
  }
}
`;
}

/** out[h] from the chunks of head h (one workgroup of HD invocations a head). */
export function decodeCombineWgsl(s: SplitAttentionShape): string {
  const hd = s.headDim;
  return `
const SPLITS = ${s.splits}u;
const HD = ${hd}u;
@group(0) @binding(0) var<storage, read> part: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(${hd})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) d: u32) {
  let h = wid.x;
  let r = wid.y;
  let ph = r * ${s.numHeads}u + h;
  var mx = -3.0e38;
  for (var c = 0u; c < SPLITS; c++) { mx = max(mx, part[(ph * SPLITS + c) * ${hd + 2}u + HD]); }
  var l = 0.0;
  var v = 0.0;
  for (var c = 0u; c < SPLITS; c++) {
    let o = (ph * SPLITS + c) * ${hd + 2}u;
    let w = exp(part[o + HD] - mx);
    l += w * part[o + HD + 1u];
    v += w * part[o + d];
  }
  out[r * ${s.numHeads * hd}u + ${outIndex(s, 'h * HD + d')}] = v / l;
}
`;
}

/**
 * Flash-decoding in two kernels built for bandwidth (the decoder's default where its configuration fits):
 *
 * decode_attention_chunks: one workgroup per (KV head, chunk of at most CH keys), for all G query
 *   heads of that KV head (each K and V row read once). Every K and V load of the chunk is issued
 *   before any is used (CH x HD / WG values a lane of each), so a dispatch has its whole KV in flight:
 *   K: Q lanes a key row, lane q reading vec4s q, q + Q, ... (Q consecutive lanes cover consecutive
 *      words of the row: every 32-byte sector a load instruction touches is used whole for Q = 4, f16);
 *      their partial dots summed through shared memory into the G x CH scores
 *   V: teams of HD/4 lanes, lane ln reading vec4 ln of keys team, team + NG, ...; each team keeps its
 *      own max and sum of exponentials per head (no workgroup-wide max pass), the teams merged at the end
 *   Writes per (row, head, chunk) one record of HD + 4 floats: o (unnormalised), then (m, l, 0, 0).
 * decode_attention_merge: one workgroup per (head, row) over the chunks' records, lanes across chunks
 *   and vec4s of the head: out = sum_c e^(m_c - M) o_c / sum_c e^(m_c - M) l_c.
 * Any head dim that is a multiple of 4 with HD/4 <= WG (96 included), any G, sliding windows, rows on
 * the grid's y as the other attention kernels.
 */
export interface ChunkedAttentionConfig {
  /** Invocations of the chunk kernel. */
  wg: number;
  /** Keys a chunk at most. */
  chunk: number;
  /** Lanes a key row in the score phase. */
  lanesPerKey: number;
}

export interface ChunkedAttentionShape extends DecodeAttentionShape {
  splits: number;
  config: ChunkedAttentionConfig;
}


function chunkedLayout(s: DecodeAttentionShape, cfg: ChunkedAttentionConfig) {
  const HD4 = s.headDim / 4, G = s.numHeads / s.numKvHeads, Q = cfg.lanesPerKey;
  const KPP = cfg.wg / Q, P = Math.ceil(cfg.chunk / KPP), NG = Math.floor(cfg.wg / HD4), T = Math.ceil(cfg.chunk / NG);
  return { HD4, G, Q, KPP, P, NG, T, CH: P * KPP };
}

/** Workgroup memory of the chunk kernel: q / team partials, dot partials, scores, team (m, l). */
export function chunkedAttentionWorkgroupBytes(s: DecodeAttentionShape, cfg: ChunkedAttentionConfig): number {
  const { HD4, G, NG, P, CH } = chunkedLayout(s, cfg);
  return Math.max(G * HD4, G * NG * HD4) * 16 + P * G * cfg.wg * 4 + G * CH * 4 + G * NG * 8;
}

/**
 * The chunk kernel's configuration for this shape within the device's limits (workgroup memory,
 * invocations), or null where it does not apply (head dim not a multiple of 4, or too large).
 */
export function chunkedAttentionConfig(s: DecodeAttentionShape, limits: { maxComputeWorkgroupStorageSize: number; maxComputeInvocationsPerWorkgroup: number }): ChunkedAttentionConfig | null {
  const HD4 = s.headDim / 4;
  if (s.headDim % 4 !== 0 || s.numHeads % s.numKvHeads !== 0) return null;
  const lanesPerKey = HD4 % 4 === 0 ? 4 : HD4 % 2 === 0 ? 2 : 1;
  for (const wg of [128, 64]) {
    if (wg > limits.maxComputeInvocationsPerWorkgroup || HD4 > wg) continue;
    for (const chunk of [64, 32]) {
      const cfg = { wg, chunk: Math.max(chunk, wg / lanesPerKey), lanesPerKey };
      if (chunkedAttentionWorkgroupBytes(s, cfg) + 256 <= limits.maxComputeWorkgroupStorageSize) return { ...cfg, chunk: chunkedLayout(s, cfg).CH };
    }
  }
  return null;
}

/** Chunks of keys a head for this configuration (at least `splits` where asked). */
export function chunkedAttentionSplits(s: DecodeAttentionShape, cfg: ChunkedAttentionConfig, splits?: number): number {
  return Math.max(Math.ceil(keysOf(s) / cfg.chunk), splits ?? 1);
}

/** Floats of the chunk records for `rows` rows. */
export function chunkedAttentionPartFloats(s: ChunkedAttentionShape, rows = 1): number {
  return rows * s.numHeads * s.splits * (s.headDim + 4);
}

export function decodeAttentionChunksWgsl(s: ChunkedAttentionShape, kv: KvLayout): string {
  const { HD4, G, Q, KPP, P, NG, T, CH } = chunkedLayout(s, s.config);
  const WG = s.config.wg;
  const range = (n: number) => Array.from({ length: n }, (_, i) => i);
  const perKey = HD4 / Q;
  // every load first: K of passes pp (key kk + pp * KPP, vec4s q + Q * i), V of keys grp + NG * t
  const kLoads = range(P).flatMap((pp) => range(perKey).map((i) => `let k${pp}_${i} = load4_k(kb + min(kk + ${pp * KPP}u, last) * KV_DIM4 + q + ${Q * i}u);`));
  const vLoads = range(T).map((t) => `let v${t} = load4_v(vb + min(grp + ${NG * t}u, last) * KV_DIM4);`);
  const dots = range(P).flatMap((pp) => range(G).map((g) =>
    `red[${(pp * G + g) * WG}u + lid] = ${range(perKey).map((i) => `dot(k${pp}_${i}, scratch[${g * HD4}u + q + ${Q * i}u])`).join(' + ')};`));
  const heads = range(G).map((g) => {
    const scores = range(T).map((t) => `let s${g}_${t} = select(-3.0e38, sc[${g * CH}u + grp + ${NG * t}u], grp + ${NG * t}u < cn);`).join('\n      ');
    const max = range(T).map((t) => `s${g}_${t}`).reduce((a, b) => `max(${a}, ${b})`);
    const exps = range(T).map((t) => `let e${g}_${t} = select(0.0, exp(s${g}_${t} - m${g}), grp + ${NG * t}u < cn);`).join('\n      ');
    const acc = range(T).map((t) => `e${g}_${t} * v${t}`).join(' + ');
    const sum = range(T).map((t) => `e${g}_${t}`).join(' + ');
    return `${scores}
      let m${g} = ${max};
      ${exps}
      scratch[${g * NG * HD4}u + grp * HD4 + ln] = ${acc};
      if (ln == 0u) { ml[${g * NG}u + grp] = vec2<f32>(m${g}, ${sum}); }`;
  }).join('\n      ');
  return `${kvHeader(kv)}
const HD4 = ${HD4}u;
const KV_DIM4 = ${(s.numKvHeads * s.headDim) / 4}u;
const SPLITS = ${s.splits}u;
const G = ${G}u;
const NG = ${NG}u;
const REC4 = ${HD4 + 1}u;
@group(0) @binding(0) var<storage, read> qkv: array<vec4<f32>>;
${kvReadDecls(kv, 1, 2)}
@group(0) @binding(3) var<storage, read_write> part: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> step: array<u32>;
${rowTable(kv)}
${kDimFn(kv.storage, s.rotaryDim ?? s.headDim)}
const QKV_STRIDE4 = ${((s.numHeads + 2 * s.numKvHeads) * s.headDim) / 4}u;
fn q_at(e: u32) -> f32 { return qkv[e >> 2u][e & 3u]; }

// q of the G heads (K's stored dim order, scaled by 1/sqrt(HD)), later the teams' partial outputs
var<workgroup> scratch: array<vec4<f32>, ${Math.max(G * HD4, G * NG * HD4)}>;
// partial dots: (pass, head, lane)
var<workgroup> red: array<f32, ${P * G * WG}>;
// scores: (head, key of the chunk)
var<workgroup> sc: array<f32, ${G * CH}>;
// each team's (max, sum of exponentials) a head
var<workgroup> ml: array<vec2<f32>, ${G * NG}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let kvh = wid.x / SPLITS;
  let c = wid.x % SPLITS;
  ${keyRange(s, true)}
  if (cn == 0u) {
    // no keys in this chunk (early positions): an empty record for each head
    for (var i = lid; i < G * REC4; i += ${WG}u) {
      let rec = (r * ${s.numHeads}u + kvh * G + i / REC4) * SPLITS + c;
      part[rec * REC4 + i % REC4] = select(vec4<f32>(0.0), vec4<f32>(-3.0e38, 0.0, 0.0, 0.0), i % REC4 == HD4);
    }
    return;
  }
  let last = cn - 1u;
  let q = lid % ${Q}u;
  let kk = lid / ${Q}u;
  let grp = min(lid / HD4, NG - 1u);
  let ln = lid % HD4;
  let kb = (sb + first + k0) * KV_DIM4 + kvh * HD4;
  let vb = kb + ln;
  ${kLoads.join('\n  ')}
  ${vLoads.join('\n  ')}
  for (var i = lid; i < G * HD4; i += ${WG}u) { scratch[i] = ${loadQ4(kv, s.headDim, '(kvh * G + i / HD4)', '(i % HD4)', f32Literal(1 / Math.sqrt(s.headDim)))}; }
  workgroupBarrier();
  ${dots.join('\n  ')}
  workgroupBarrier();
  for (var i = lid; i < G * ${CH}u; i += ${WG}u) {
    let j = i % ${CH}u;
    let at = ((j / ${KPP}u) * G + i / ${CH}u) * ${WG}u + (j % ${KPP}u) * ${Q}u;
    sc[i] = ${range(Q).map((qq) => `red[at + ${qq}u]`).join(' + ')};
  }
  workgroupBarrier();
  if (lid < NG * HD4) {
      ${heads}
  }
  workgroupBarrier();
  for (var i = lid; i < G * HD4; i += ${WG}u) {
    let gh = i / HD4;
    let l4 = i % HD4;
    var mx = -3.0e38;
    for (var t = 0u; t < NG; t++) { mx = max(mx, ml[gh * NG + t].x); }
    var o = vec4<f32>(0.0);
    var l = 0.0;
    for (var t = 0u; t < NG; t++) {
      let w = exp(ml[gh * NG + t].x - mx);
      o += w * scratch[(gh * NG + t) * HD4 + l4];
      l += w * ml[gh * NG + t].y;
    }
    let rec = (r * ${s.numHeads}u + kvh * G + gh) * SPLITS + c;
    part[rec * REC4 + l4] = o;
    if (l4 == 0u) { part[rec * REC4 + HD4] = vec4<f32>(mx, l, 0.0, 0.0); }
  }
}
`;
}

/**
 * The merge's layout: NC groups of HD/4 lanes, each lane folding R = ceil(SPLITS / NC) records (at most
 * 16 a lane: every record's loads issued together, one L2 round trip), NC * HD/4 <= maxInvocations.
 */
export function mergeLayout(s: ChunkedAttentionShape, maxInvocations = 256): { nc: number; r: number; wg: number } {
  const HD4 = s.headDim / 4;
  const most = Math.max(1, Math.floor(maxInvocations / HD4));
  const nc = Math.min(most, Math.max(1, Math.ceil(s.splits / 16)));
  return { nc, r: Math.ceil(s.splits / nc), wg: nc * HD4 };
}

/**
 * out of head h, row r from its chunks' records (decodeAttentionChunksWgsl): lane (group cg, vec4 ln)
 * loads records cg, cg + NC, ... all at once, folds them against their own max; the NC groups are
 * merged through shared memory (none where NC = 1).
 */
export function decodeAttentionMergeWgsl(s: ChunkedAttentionShape, maxInvocations = 256): string {
  const HD4 = s.headDim / 4;
  const { nc: NC, r: R, wg: WG } = mergeLayout(s, maxInvocations);
  const range = (n: number) => Array.from({ length: n }, (_, i) => i);
  const unrolled = R <= 16;
  const fold = unrolled
    ? `${range(R).map((t) => `let c${t} = min(cg + ${NC * t}u, SPLITS - 1u);
  let ml${t} = select(vec2<f32>(-3.0e38, 0.0), part[(rec0 + c${t}) * REC4 + HD4].xy, cg + ${NC * t}u < SPLITS);
  let o${t} = part[(rec0 + c${t}) * REC4 + ln];`).join('\n  ')}
  let mx = ${range(R).map((t) => `ml${t}.x`).reduce((x, y) => `max(${x}, ${y})`)};
  ${range(R).map((t) => `let w${t} = exp(ml${t}.x - mx);`).join('\n  ')}
  let o = ${range(R).map((t) => `w${t} * o${t}`).join(' + ')};
  let l = ${range(R).map((t) => `w${t} * ml${t}.y`).join(' + ')};`
    : `var mx = -3.0e38;
  for (var c = cg; c < SPLITS; c += ${NC}u) { mx = max(mx, part[(rec0 + c) * REC4 + HD4].x); }
  var o = vec4<f32>(0.0);
  var l = 0.0;
  for (var c = cg; c < SPLITS; c += ${NC}u) {
    let ml = part[(rec0 + c) * REC4 + HD4].xy;
    let w = exp(ml.x - mx);
    o += w * part[(rec0 + c) * REC4 + ln];
    l += w * ml.y;
  }`;
  const store = (o: string) => `for (var e = 0u; e < 4u; e++) { out[r * ${s.numHeads * s.headDim}u + ${outIndex(s, `h * ${s.headDim}u + 4u * ln + e`)}] = ${o}[e]; }`;
  return `
const SPLITS = ${s.splits}u;
const HD4 = ${HD4}u;
const REC4 = ${HD4 + 1}u;
@group(0) @binding(0) var<storage, read> part: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
${NC > 1 ? `var<workgroup> acc: array<vec4<f32>, ${NC * HD4}>;
var<workgroup> sums: array<vec2<f32>, ${NC}>;` : ''}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let h = wid.x;
  let r = wid.y;
  let rec0 = (r * ${s.numHeads}u + h) * SPLITS;
  let cg = lid / HD4;
  let ln = lid % HD4;
  ${fold}
  ${NC === 1 ? `let v = o / l;
  ${store('v')}` : `acc[lid] = o;
  if (ln == 0u) { sums[cg] = vec2<f32>(mx, l); }
  workgroupBarrier();
  if (lid < HD4) {
    var m = -3.0e38;
    for (var i = 0u; i < ${NC}u; i++) { m = max(m, sums[i].x); }
    var v = vec4<f32>(0.0);
    var t = 0.0;
    for (var i = 0u; i < ${NC}u; i++) {
      let w = exp(sums[i].x - m);
      v += w * acc[i * HD4 + ln];
      t += w * sums[i].y;
    }
    v = v / t;
    ${store('v')}
  }`}
}
`;
}
