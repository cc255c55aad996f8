/**
 * Dense matrix-vector products y = W x for W stored f32 or bf16/f16 (two values per u32 word), rows
 * padded to whole vec4<u32> chunks: one token (decode; x at row 0), a workgroup per RPW rows,
 * reduction across the workgroup. The prefill's T-token products are matmul-tiled.ts's.
 * Epilogues: + bias[yOffset + r] (qkv biases), y += (residual add fused into o_proj and down).
 *   y[t * yStride + yOffset + r] (+)= sum_c W[r, c] x[t * cols + c]
 */
import { COMMON, header, reductions, subgroupLet, subgroupParam, unpackPair, valuesPerChunk, workgroupSizeFor, type DenseDtype, type KernelFeatures } from './prelude.js';

export interface DenseMatmulShape {
  dtype: DenseDtype;
  /** Rows of this segment. */
  rows: number;
  cols: number;
  /** vec4<u32> chunks per stored row. */
  rowChunks: number;
  yStride: number;
  /** Column of y (and of bias) where row 0 of this segment lands. */
  yOffset: number;
  bias: boolean;
  residual: boolean;
}

/** Rows each matvec workgroup computes (each x chunk loaded once serves them all). */
export const MATVEC_ROWS = 4;

export function matvecWorkgroupSize(rowChunks: number): number {
  return workgroupSizeFor(rowChunks, 32, 256);
}

/** Expression: dot of stored chunk `w` with x elements starting at element e0 (x bound as vec4). */
function chunkDot(dtype: DenseDtype, guarded: boolean): string {
  const x = (i: string) => (guarded ? `masked_x4(${i}, e0)` : `x[${i}]`);
  if (dtype === 'f32') return `dot(bitcast<vec4<f32>>(w), ${x('e0 / 4u')})`;
  return `dot(chunk_lo(w), ${x('e0 / 4u')}) + dot(chunk_hi(w), ${x('e0 / 4u + 1u')})`;
}

export function matvecDenseWgsl(s: DenseMatmulShape, f: KernelFeatures): string {
  const wg = matvecWorkgroupSize(s.rowChunks);
  const vpc = valuesPerChunk(s.dtype);
  const fullChunks = Math.floor(s.cols / vpc);
  return `${header(f)}${COMMON}${unpackPair(s.dtype)}${reductions(wg, f)}
const ROWS = ${s.rows}u;
const COLS = ${s.cols}u;
const ROW_CHUNKS = ${s.rowChunks}u;
const FULL_CHUNKS = ${fullChunks}u;
const RPW = ${MATVEC_ROWS}u;
@group(0) @binding(0) var<storage, read> W: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
${s.bias ? '@group(0) @binding(3) var<storage, read> bias: array<f32>;' : ''}

// x elements 4i..4i+3, zero past COLS (the padded tail of the last chunk)
fn masked_x4(i: u32, e0: u32) -> vec4<f32> {
  let v = x[i];
  let e = vec4<u32>(4u * i) + vec4<u32>(0u, 1u, 2u, 3u);
  return select(vec4<f32>(0.0), v, e < vec4<u32>(COLS));
}

@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32${subgroupParam(f)}) {
  ${subgroupLet(f)}
  let r0 = linear_workgroup(wid, nwg) * RPW;
  var acc: array<f32, ${MATVEC_ROWS}>;
  // hot loop: each invocation walks the row's chunks with stride WG; rows past ROWS are clamped
  // (computed and discarded) so every invocation takes part in the reductions below.
  for (var k = lid; k < ROW_CHUNKS; k += ${wg}u) {
    let e0 = k * ${vpc}u;
    let full = k < FULL_CHUNKS;
    for (var i = 0u; i < RPW; i++) {
      let r = min(r0 + i, ROWS - 1u);
      let w = W[r * ROW_CHUNKS + k];
      if (full) { acc[i] += ${chunkDot(s.dtype, false)}; } else { acc[i] += ${chunkDot(s.dtype, true)}; }
    }
  }
  for (var i = 0u; i < RPW; i++) {
    let total = wg_sum(acc[i], lid, sg_size);
    let r = r0 + i;
    if (lid == 0u && r < ROWS) {
      let o = ${s.yOffset}u + r;
      var v = total${s.bias ? ' + bias[o]' : ''};
      ${s.residual ? 'v += y[o];' : ''}
      y[o] = v;
    }
  }
}
`;
}
