/**
 * Token selection on the GPU from one row of logits (vocab), in a single workgroup; the chosen id is
 * written to out[0], so only 4 bytes come back per token.
 *
 * argmax: the largest logit, lowest index on ties (as the CPU's argmax).
 * sample: temperature, top-k, min-p and top-p, then one draw with the step's uniform number u:
 *   weight_i = exp((x_i - max) / temperature)
 *   keep i if  rank(x_i) < k (values tied with the k-th are kept too),  weight_i >= minP and > 0
 *              (a token a grammar masked out has weight 0: kernels/token-mask.ts),
 *              and x_i >= the largest threshold whose kept mass still reaches topP of the total;
 *   return the first kept i, in index order, where the running kept weight exceeds u * kept total.
 * Thresholds are found over the bits of an order-preserving u32 key of the logit (top-k by radix
 * selection, 4 bits a pass; top-p by bisection), so no sort is needed. Every pass over the
 * vocabulary issues 8 loads an invocation before using any. `sampleReference` in test/backends/webgpu mirrors this on the CPU.
 */
import { COMMON, header, reductions, subgroupLet, subgroupParam, type KernelFeatures } from './prelude.js';

const WG = 256;
/** Kept logits an invocation holds for the top-p search (more anywhere: the search reads the vocabulary each step). */
const CAP = 16;

/** Chunks of a row the batched argmax splits the vocabulary into (one workgroup each). */
export const ARGMAX_PARTS = 64;

/**
 * Per row t (workgroup y) and chunk c (workgroup x) of a (rows, vocab) logits buffer: the chunk's
 * largest logit and its lowest index, as (f32 bits, index) in parts[t * ARGMAX_PARTS + c]; index
 * 0xffffffff for an empty chunk.
 */
export function argmaxPartsWgsl(vocab: number): string {
  const chunk = Math.ceil(vocab / ARGMAX_PARTS);
  return `const V = ${vocab}u;
const CHUNK = ${chunk}u;
@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read_write> parts: array<vec2<u32>>;

var<workgroup> best_v: array<f32, ${WG}>;
var<workgroup> best_i: array<u32, ${WG}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let base = wid.y * V;
  let end = min(V, (wid.x + 1u) * CHUNK);
  var bv = -3.4e38;
  var bi = 0xffffffffu;
  for (var i = wid.x * CHUNK + lid; i < end; i += ${WG}u) {
    let v = logits[base + i];
    if (v > bv || bi == 0xffffffffu) { bv = v; bi = i; }
  }
${workgroupArgmax()}
  if (lid == 0u) { parts[wid.y * ${ARGMAX_PARTS}u + wid.x] = vec2<u32>(bitcast<u32>(best_v[0]), best_i[0]); }
}
`;
}

/**
 * The workgroup's (value, index) maximum into best_v[0] / best_i[0] from each invocation's (bv, bi):
 * the larger value wins, the lower index on ties, 0xffffffff marks none.
 */
function workgroupArgmax(): string {
  return `  best_v[lid] = bv;
  best_i[lid] = bi;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) {
      let ov = best_v[lid + s];
      let oi = best_i[lid + s];
      if (oi != 0xffffffffu && (ov > best_v[lid] || (ov == best_v[lid] && oi < best_i[lid]) || best_i[lid] == 0xffffffffu)) {
        best_v[lid] = ov;
        best_i[lid] = oi;
      }
    }
    workgroupBarrier();
  }`;
}

export function argmaxWgsl(vocab: number, f: KernelFeatures): string {
  return `${header(f)}${COMMON}
const V = ${vocab}u;
@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;

var<workgroup> best_v: array<f32, ${WG}>;
var<workgroup> best_i: array<u32, ${WG}>;

@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) lid: u32) {
  var bv = -3.4e38;
  var bi = 0xffffffffu;
  for (var i = lid; i < V; i += ${WG}u) {
    let v = logits[i];
    if (v > bv || bi == 0xffffffffu) { bv = v; bi = i; }
  }
${workgroupArgmax()}
  if (lid == 0u) { out[0] = best_i[0]; }
}
`;
}

/**
 * `rows`: one workgroup per row of a (rows, vocab) logits buffer (a batched decode step), row i's
 * values in params[8i + 2 .. 8i + 6]: u, top-k, temperature, top-p, min-p (as the step header's words 2..6);
 * temperature 0 takes the argmax (largest logit, lowest index on ties) from the row's ARGMAX_PARTS
 * partial maxima (`argmaxPartsWgsl`, dispatched first); the id goes to out[i].
 */
/** Workgroup memory of the sampling kernel with WG invocations (the reductions' scratch and the draw's prefix). */
export function sampleWorkgroupBytes(wg: number): number {
  return 4 * wg * 4 + wg * 4 + 256;
}

/** Invocations of the sampling kernel: 1024 where the device grants them (four times the loads in flight a pass), else 256. */
export function sampleWorkgroupSize(limits: { maxComputeInvocationsPerWorkgroup: number; maxComputeWorkgroupSizeX: number; maxComputeWorkgroupStorageSize: number }): number {
  return limits.maxComputeInvocationsPerWorkgroup >= 1024 && limits.maxComputeWorkgroupSizeX >= 1024 && sampleWorkgroupBytes(1024) <= limits.maxComputeWorkgroupStorageSize ? 1024 : WG;
}

/**
 * WGSL: \`body\` for each logit x at index i of this invocation, i = lid, lid + WG, ... in order, with
 * LOADS loads issued before any is used (a loop of one load at a time waits out each load's latency:
 * about 100 µs a pass over 128k logits on the H100 with 256 invocations).
 */
function eachLogit(wg: number, body: string): string {
  const L = 8;
  const loads = Array.from({ length: L }, (_, j) => `lg(min(i0 + ${j * wg}u, V - 1u))`).join(', ');
  return `for (var i0 = lid; i0 < V; i0 += ${L * wg}u) {
    let xs = array<f32, ${L}>(${loads});
    for (var j = 0u; j < ${L}u; j++) {
      let i = i0 + j * ${wg}u;
      if (i < V) {
        let x = xs[j];
        ${body}
      }
    }
  }`;
}

/** WGSL: \`body\` for each logit x at index i in lo..hi-1 in order, eight loads issued together. */
function eachInRange(body: string): string {
  const loads = Array.from({ length: 8 }, (_, j) => `lg(min(i0 + ${j}u, V - 1u))`).join(', ');
  return `for (var i0 = lo; i0 < hi; i0 += 8u) {
    let xs = array<f32, 8>(${loads});
    for (var j = 0u; j < 8u; j++) {
      let i = i0 + j;
      if (i < hi) {
        let x = xs[j];
        ${body}
      }
    }
  }`;
}

/**
 * The top-k threshold by radix selection: the key of the k-th largest logit, 4 bits a level from the
 * top (8 passes over the vocabulary instead of the 32 of a bisection over the key's bits). Each level
 * counts, among the keys that share the bits fixed so far, how many have each value of the next 4 bits
 * (16 counters an invocation, summed by subgroups and then by workgroup atomics), and fixes the
 * largest value below which at least k of those keys remain. Same result as the bisection: the
 * largest threshold that keeps at least k logits.
 */
function radixTopK(wg: number, f: KernelFeatures): string {
  const bins = Array.from({ length: 16 }, (_, b) => b);
  const level = (l: number) => {
    const shift = 28 - 4 * l;
    const mask = l === 0 ? '0u' : `0x${((0xffffffff << (32 - 4 * l)) >>> 0).toString(16)}u`;
    const count = bins.map((b) => `c${b} += select(0u, 1u, same && d == ${b}u);`).join(' ');
    const add = bins.map((b) => (f.subgroups
      ? `{ let t = subgroupAdd(c${b}); if (sg_lane == 0u && t > 0u) { atomicAdd(&bin_count[${b}], t); } }`
      : `if (c${b} > 0u) { atomicAdd(&bin_count[${b}], c${b}); }`)).join('\n      ');
    return `{
      // level ${l}: bits ${shift + 3}..${shift} among the keys whose higher bits equal prefix's
      if (lid < 16u) { atomicStore(&bin_count[lid], 0u); }
      workgroupBarrier();
      ${bins.map((b) => `var c${b} = 0u;`).join(' ')}
      ${eachLogit(wg, `let kx = key(x);
        let same = (kx & ${mask}) == prefix;
        let d = (kx >> ${shift}u) & 15u;
        ${count}`)}
      ${add}
      workgroupBarrier();
      if (lid == 0u) {
        var above = 0u;
        var b = 15u;
        loop {
          let c = atomicLoad(&bin_count[b]);
          if (above + c >= need || b == 0u) { break; }
          above += c;
          b -= 1u;
        }
        radix_pick = vec2<u32>(b, above);
      }
      let pick = workgroupUniformLoad(&radix_pick);
      prefix |= pick.x << ${shift}u;
      need -= pick.y;
    }`;
  };
  return `var prefix = 0u;
    var need = top_k;
    ${Array.from({ length: 8 }, (_, l) => level(l)).join('\n    ')}
    k_min = prefix;`;
}

export function sampleWgsl(vocab: number, f: KernelFeatures, rows = false, WG = 256): string {
  const per = Math.ceil(vocab / WG);
  return `${header(f)}${COMMON}${reductions(WG, f)}
const V = ${vocab}u;
const PER = ${per}u; // contiguous logits per invocation in the final draw
@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<storage, read> step: array<u32>;
${rows ? `@group(0) @binding(3) var<storage, read> parts: array<vec2<u32>>; // (value bits, index) of each chunk\n` : ''}${rows ? 'var<private> base: u32;\nfn lg(i: u32) -> f32 { return logits[base + i]; }' : 'fn lg(i: u32) -> f32 { return logits[i]; }'}

var<workgroup> prefix: array<f32, ${WG}>;
var<workgroup> total: f32;
var<workgroup> chosen: u32;
var<workgroup> passing_all: u32;
var<workgroup> most_all: u32;
// the radix selection's counts of the next 4 key bits, and its pick (bin, keys in the bins above)
var<workgroup> bin_count: array<atomic<u32>, 16>;
var<workgroup> radix_pick: vec2<u32>;

// order-preserving map of f32 to u32: a < b  <=>  key(a) < key(b)
fn key(x: f32) -> u32 {
  let b = bitcast<u32>(x);
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32${subgroupParam(f)}${f.subgroups ? ', @builtin(subgroup_invocation_id) sg_lane: u32' : ''}) {
  ${subgroupLet(f)}
  ${rows ? 'base = wid.x * V;\n  let P = wid.x * 8u;' : 'let P = 0u;'}
  let u = bitcast<f32>(step[P + 2u]);
  let top_k = step[P + 3u];
  let temperature = bitcast<f32>(step[P + 4u]);
  let inv_temp = 1.0 / temperature;
  let top_p = bitcast<f32>(step[P + 5u]);
  let min_p = bitcast<f32>(step[P + 6u]);
${rows ? `  if (temperature == 0.0) {
    // argmax over the chunks' maxima: the largest value, the lowest index on ties (chunks are in index order)
    if (lid == 0u) {
      var best = parts[wid.x * ${ARGMAX_PARTS}u];
      for (var c = 1u; c < ${ARGMAX_PARTS}u; c++) {
        let p = parts[wid.x * ${ARGMAX_PARTS}u + c];
        if (p.y != 0xffffffffu && (best.y == 0xffffffffu || bitcast<f32>(p.x) > bitcast<f32>(best.x))) { best = p; }
      }
      out[wid.x] = best.y;
    }
    return;
  }
` : ''}
  var mx = -3.0e38;
  ${eachLogit(WG, 'mx = max(mx, x);')}
  mx = wg_max(mx, lid, sg_size);

  // top-k: the largest key threshold that still keeps at least k logits. Skipped where at most k
  // logits pass min-p (weights fall with the key, so those are the top ones and k_min would keep them
  // all: the kept set, and everything below, is the same with k_min = 0)
  var k_min = 0u;
  var passing = 0u;
  if (top_k > 0u && top_k < V) {
    ${eachLogit(WG, `let w = exp((x - mx) * inv_temp);
        passing += select(0u, 1u, w > 0.0 && w >= min_p);`)}
    let all = wg_sum_u(passing, lid, sg_size);
    if (lid == 0u) { passing_all = all; }
  }
  // (a workgroup-uniform value, for the loop below calls barriers)
  passing = workgroupUniformLoad(&passing_all);
  if (top_k > 0u && top_k < V && passing > top_k) {
    ${radixTopK(WG, f)}
  }

  // top-p: the largest key threshold whose kept mass still reaches top_p of the total
  var p_min = k_min;
  // top-p over the kept logits each invocation holds in registers (its indices in order, at most CAP):
  // the same sums in the same order as the loops over the vocabulary below, without reading it 33 times
  var cw: array<f32, ${CAP}>;
  var ck: array<u32, ${CAP}>;
  var cn = 0u;
  var most = ${CAP + 1}u;
  if (top_p < 1.0) {
    ${eachLogit(WG, `let w = exp((x - mx) * inv_temp);
        if (key(x) >= k_min && w > 0.0 && w >= min_p) {
          if (cn < ${CAP}u) { cw[cn] = w; ck[cn] = key(x); }
          cn += 1u;
        }`)}
    let m = wg_max_u(cn, lid, sg_size);
    if (lid == 0u) { most_all = m; }
  }
  most = workgroupUniformLoad(&most_all);
  if (top_p < 1.0 && most <= ${CAP}u) {
    var z = 0.0;
    for (var j = 0u; j < cn; j++) { z += cw[j]; }
    let goal = top_p * wg_sum(z, lid, sg_size);
    var theta = 0u;
    for (var bit = 32u; bit > 0u; bit--) {
      let cand = theta | (1u << (bit - 1u));
      var mass = 0.0;
      for (var j = 0u; j < cn; j++) { if (ck[j] >= max(cand, k_min)) { mass += cw[j]; } }
      if (wg_sum(mass, lid, sg_size) >= goal) { theta = cand; }
    }
    p_min = max(theta, k_min);
  } else if (top_p < 1.0) {
    var z = 0.0;
    ${eachLogit(WG, `let w = exp((x - mx) * inv_temp);
        if (key(x) >= k_min && w > 0.0 && w >= min_p) { z += w; }`)}
    let goal = top_p * wg_sum(z, lid, sg_size);
    var theta = 0u;
    for (var bit = 32u; bit > 0u; bit--) {
      let cand = theta | (1u << (bit - 1u));
      var mass = 0.0;
      ${eachLogit(WG, `let w = exp((x - mx) * inv_temp);
        if (key(x) >= max(cand, k_min) && w > 0.0 && w >= min_p) { mass += w; }`)}
      if (wg_sum(mass, lid, sg_size) >= goal) { theta = cand; }
    }
    p_min = max(theta, k_min);
  }

  // the draw, in index order: each invocation owns PER consecutive logits
  let lo = min(lid * PER, V);
  let hi = min(lo + PER, V);
  var local = 0.0;
  var last = 0u;
  ${eachInRange(`let w = exp((x - mx) * inv_temp);
        if (key(x) >= p_min && w > 0.0 && w >= min_p) { local += w; last = i + 1u; }`)}
  let last_kept = wg_max_u(last, lid, sg_size);
  prefix[lid] = local;
  workgroupBarrier();
  if (lid == 0u) {
    var run = 0.0;
    for (var i = 0u; i < ${WG}u; i++) { let v = prefix[i]; prefix[i] = run; run += v; }
    total = run;
    chosen = last_kept - 1u; // if rounding leaves the draw unplaced: the last kept token
  }
  workgroupBarrier();
  let r = u * total;
  var run = prefix[lid];
  if (local > 0.0 && r >= run && r < run + local) {
    var found = false;
    ${eachInRange(`let w = exp((x - mx) * inv_temp);
        if (!found && key(x) >= p_min && w > 0.0 && w >= min_p) {
          run += w;
          if (run > r) { chosen = i; found = true; }
        }`)}
  }
  workgroupBarrier();
  if (lid == 0u) { out[${rows ? 'wid.x' : '0u'}] = chosen; }
}
`;
}
