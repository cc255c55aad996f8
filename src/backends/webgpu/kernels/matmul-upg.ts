/**
 * Products and embedding lookups for the UPG compressed encodings (docs/upg-format.md), reading the
 * packed buffers as uploaded (u32 words). One workgroup per output row: its invocations walk the
 * row's units (q8 / q4: a word; bitmap: a mask word; nm: a block; csr: an entry, with a workgroup
 * scan of the column deltas), decode each stored value once, and apply it to TB tokens at a time:
 *   y[t * yStride + yOffset + r] (+)= sum_c W[r, c] x[t * cols + c]      (+ bias[yOffset + r])
 * The embedding variant writes the decoded row of each token's id instead (zeros where not stored).
 */
import { COMMON } from './prelude.js';
import { STEP_HEADER_WORDS } from '../dispatch.js';

export type UpgShape =
  | { encoding: 'q8'; rows: number; cols: number; wordsPerRow: number }
  | { encoding: 'q4'; rows: number; cols: number; group: number; groups: number; wordsPerRow: number }
  | { encoding: 'bitmap'; rows: number; cols: number; tile: number; bits: 4 | 8; tiles: number; maskWordsPerRow: number }
  | { encoding: 'nm'; rows: number; cols: number; n: number; m: number; bits: 4 | 8; group: number; width: number; maskWords: number; valueStride: number; groups: number }
  | { encoding: 'csr'; rows: number; cols: number };

/** The encoding's buffer roles, in binding order (the order the spec lists them). */
export function upgRoles(encoding: UpgShape['encoding']): string[] {
  switch (encoding) {
    case 'q8': return ['qweight', 'scales'];
    case 'q4': return ['qweight', 'scale_min'];
    case 'bitmap': return ['mask', 'offsets', 'values', 'scales'];
    case 'nm': return ['mask', 'values', 'scales'];
    case 'csr': return ['row_ptr', 'entries', 'scales'];
  }
}

const WG = 64;

/** Byte i (sign-extended int8), nibble i, half i (f16) of u32-word buffers. */
const ACCESS = /* wgsl */ `
fn int8_at(word: u32, i: u32) -> f32 { return f32(extractBits(bitcast<i32>(word), (i & 3u) * 8u, 8u)); }
fn nibble_at(word: u32, i: u32) -> u32 { return (word >> ((i & 7u) * 4u)) & 15u; }
fn half_at(word: u32, i: u32) -> f32 { return unpack2x16float(word)[i & 1u]; }
`;

/** WGSL that calls emit(col, value) for every stored value of row r (in a function with lid). */
function rowWalk(s: UpgShape): string {
  switch (s.encoding) {
    case 'q8':
      return `
  let scale = bitcast<f32>(scales[r]);
  for (var w = lid; w < ${s.wordsPerRow}u; w += ${WG}u) {
    let word = qweight[r * ${s.wordsPerRow}u + w];
    for (var b = 0u; b < 4u; b++) {
      let c = w * 4u + b;
      if (c < COLS) { emit(c, int8_at(word, b) * scale); }
    }
  }`;
    case 'q4':
      return `
  for (var w = lid; w < ${s.wordsPerRow}u; w += ${WG}u) {
    let word = qweight[r * ${s.wordsPerRow}u + w];
    let sm = unpack2x16float(scale_min[r * ${s.groups}u + (w * 8u) / ${s.group}u]); // (scale, min)
    for (var b = 0u; b < 8u; b++) {
      let c = w * 8u + b;
      if (c < COLS) { emit(c, f32(nibble_at(word, b)) * sm.x + sm.y); }
    }
  }`;
    case 'bitmap': {
      const wordsPerTile = s.tile / 32;
      const value = s.bits === 8 ? 'int8_at(values[idx / 4u], idx)' : 'f32(i32(nibble_at(values[idx / 8u], idx)) - 8)';
      const scale = s.bits === 8 ? 'bitcast<f32>(scales[r])' : `half_at(scales[(r * ${s.tiles}u + t) / 2u], r * ${s.tiles}u + t)`;
      return `
  for (var w = lid; w < ${s.maskWordsPerRow}u; w += ${WG}u) {
    var bits = mask[r * ${s.maskWordsPerRow}u + w];
    if (bits == 0u) { continue; }
    let t = w / ${wordsPerTile}u;
    var idx = offsets[r * ${s.tiles}u + t];
    for (var p = t * ${wordsPerTile}u; p < w; p++) { idx += countOneBits(mask[r * ${s.maskWordsPerRow}u + p]); }
    let scale = ${scale};
    while (bits != 0u) {
      let bit = firstTrailingBit(bits);
      bits &= bits - 1u;
      emit(w * 32u + bit, ${value} * scale);
      idx++;
    }
  }`;
    }
    case 'nm': {
      const blocks = s.width / s.m;
      const perGroup = s.bits === 4 ? (s.group / s.m) * s.n : 0;
      const value =
        s.bits === 8
          ? `int8_at(values[(r * ${s.valueStride}u + i) / 4u], r * ${s.valueStride}u + i) * bitcast<f32>(scales[r])`
          : `f32(i32(nibble_at(values[r * ${s.valueStride}u + i / 8u], i)) - 8) * half_at(scales[(r * ${s.groups}u + i / ${perGroup}u) / 2u], r * ${s.groups}u + i / ${perGroup}u)`;
      return `
  for (var b = lid; b < ${blocks}u; b += ${WG}u) {
    let c0 = b * ${s.m}u;
    var bits = (mask[r * ${s.maskWords}u + c0 / 32u] >> (c0 % 32u)) & ${(1 << s.m) - 1}u;
    var i = b * ${s.n}u; // value index within the row
    while (bits != 0u) {
      let c = c0 + firstTrailingBit(bits);
      bits &= bits - 1u;
      if (c < COLS) { emit(c, ${value}); }
      i++;
    }
  }`;
    }
    case 'csr':
      return `
  let e0 = row_ptr[r];
  let e1 = row_ptr[r + 1u];
  let scale = bitcast<f32>(scales[r]);
  var carry = 0u; // column reached before this block of entries
  for (var base = e0; base < e1; base += ${WG}u) {
    let e = base + lid;
    var delta = 0u;
    var q = 0.0;
    if (e < e1) {
      let entry = (entries[e / 2u] >> ((e & 1u) * 16u)) & 0xffffu;
      delta = entry & 255u;
      q = f32(extractBits(bitcast<i32>(entry), 8u, 8u));
    }
    // inclusive scan of the deltas across the workgroup gives each entry's column
    scan[lid] = delta;
    workgroupBarrier();
    for (var off = 1u; off < ${WG}u; off <<= 1u) {
      let v = select(0u, scan[lid - off], lid >= off);
      workgroupBarrier();
      scan[lid] += v;
      workgroupBarrier();
    }
    if (e < e1 && q != 0.0) { emit(carry + scan[lid], q * scale); }
    carry += scan[${WG - 1}u];
    workgroupBarrier();
  }`;
  }
}

function bindings(s: UpgShape): string {
  return upgRoles(s.encoding).map((role, i) => `@group(0) @binding(${i}) var<storage, read> ${role}: array<u32>;`).join('\n');
}

export interface UpgMatmulIo {
  yStride: number;
  yOffset: number;
  bias: boolean;
  residual: boolean;
  /** Tokens per pass: 1 for decode (matvec), more for prefill. */
  tokensPerPass: number;
}

/** The row sums go through shared memory in one step for all TB tokens, so no subgroup path is needed. */
export function matmulUpgWgsl(s: UpgShape, io: UpgMatmulIo): string {
  const nb = upgRoles(s.encoding).length;
  const TB = io.tokensPerPass;
  return `${COMMON}${ACCESS}
const COLS = ${s.cols}u;
const TB = ${TB}u;
${bindings(s)}
@group(0) @binding(${nb}) var<storage, read> x: array<f32>;
@group(0) @binding(${nb + 1}) var<storage, read_write> y: array<f32>;
${TB > 1 ? `@group(0) @binding(${nb + 2}) var<storage, read> step: array<u32>;` : ''}
${io.bias ? `@group(0) @binding(${nb + (TB > 1 ? 3 : 2)}) var<storage, read> bias: array<f32>;` : ''}
${s.encoding === 'csr' ? `var<workgroup> scan: array<u32, ${WG}>;` : ''}

var<private> acc: array<f32, ${TB}>;
var<workgroup> partial: array<f32, ${TB * WG}>;
var<private> t0: u32;
var<private> n_tok: u32; // tokens in this pass

fn emit(c: u32, v: f32) {
  for (var j = 0u; j < TB; j++) {
    if (j < n_tok) { acc[j] += v * x[(t0 + j) * COLS + c]; }
  }
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let r = linear_workgroup(wid, nwg);
  if (r >= ${s.rows}u) { return; }
  let T = ${TB === 1 ? '1u' : 'step[0]'};
  for (var start = 0u; start < T; start += TB) {
    t0 = start;
    n_tok = min(TB, T - start);
    for (var j = 0u; j < TB; j++) { acc[j] = 0.0; }
    ${rowWalk(s)}
    // all TB sums at once: one barrier, then invocation j folds token j's partials
    for (var j = 0u; j < TB; j++) { partial[j * ${WG}u + lid] = acc[j]; }
    workgroupBarrier();
    if (lid < n_tok) {
      var total = 0.0;
      for (var i = 0u; i < ${WG}u; i++) { total += partial[lid * ${WG}u + i]; }
      let o = (start + lid) * ${io.yStride}u + ${io.yOffset}u + r;
      var v = total${io.bias ? ` + bias[${io.yOffset}u + r]` : ''};
      ${io.residual ? 'v += y[o];' : ''}
      y[o] = v;
    }
    workgroupBarrier();
  }
}
`;
}

/** x[t] = row ids[t] of the encoded table, one workgroup per token. */
/** The lookup of token rows; for a row block of a table split across bindings (rows rowStart ..), only the ids in its rows. */
export function embeddingUpgWgsl(s: UpgShape, rowStart = 0, rows = 0xffffffff): string {
  const nb = upgRoles(s.encoding).length;
  return `${COMMON}${ACCESS}
const COLS = ${s.cols}u;
${bindings(s)}
@group(0) @binding(${nb}) var<storage, read_write> out: array<f32>;
@group(0) @binding(${nb + 1}) var<storage, read> step: array<u32>;
${s.encoding === 'csr' ? `var<workgroup> scan: array<u32, ${WG}>;` : ''}
var<private> base: u32;

fn emit(c: u32, v: f32) { out[base + c] = v; }

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let t = linear_workgroup(wid, nwg);
  if (t >= step[0]) { return; }
  let id = step[${STEP_HEADER_WORDS}u + t];
  if (id < ${rowStart}u || id - ${rowStart}u >= ${rows}u) { return; }
  let r = id - ${rowStart}u;
  base = t * COLS;
  for (var c = lid; c < COLS; c += ${WG}u) { out[base + c] = 0.0; }
  storageBarrier();
  ${rowWalk(s)}
}
`;
}
