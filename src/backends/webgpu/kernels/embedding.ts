/**
 * Embedding lookup for the step's token ids: x[t] = embed[ids[t]] as f32, one workgroup per token.
 * A table split into segments (over maxStorageBufferBindingSize) runs one dispatch per segment; each
 * copies only the ids in its row range.
 *   table segment: (rows, rowChunks vec4<u32>) f32 or 16-bit;  x: (T, hidden)
 */
import { COMMON, valuesPerChunk, type DenseDtype } from './prelude.js';
import { STEP_HEADER_WORDS } from '../dispatch.js';

export interface EmbeddingShape {
  dtype: DenseDtype;
  hidden: number;
  rowStart: number;
  rows: number;
  rowChunks: number;
}

export function embeddingWgsl(s: EmbeddingShape): string {
  const wordsPerRow = s.rowChunks * 4;
  const read =
    s.dtype === 'f32'
      ? 'bitcast<f32>(table[base + i])'
      : `${s.dtype}_pair(table[base + i / 2u])[i & 1u]`;
  if (valuesPerChunk(s.dtype) * s.rowChunks < s.hidden) throw new Error('embeddingWgsl: rowChunks too small');
  return `${COMMON}
@group(0) @binding(0) var<storage, read> table: array<u32>;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> step: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let t = linear_workgroup(wid, nwg);
  if (t >= step[0]) { return; }
  let id = step[${STEP_HEADER_WORDS}u + t];
  if (id < ${s.rowStart}u || id >= ${s.rowStart + s.rows}u) { return; }
  let base = (id - ${s.rowStart}u) * ${wordsPerRow}u;
  for (var i = lid; i < ${s.hidden}u; i += 64u) { x[t * ${s.hidden}u + i] = ${read}; }
}
`;
}
