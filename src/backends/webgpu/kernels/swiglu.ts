/**
 * SwiGLU activation per row: out = silu(gate) * up, gateUp rows holding [gate (ffn) | up (ffn)].
 *   gateUp: (T, 2 ffn);  out: (T, ffn)
 */
import { COMMON } from './prelude.js';

export function swigluWgsl(ffn: number): string {
  return `${COMMON}
const FFN = ${ffn}u;
@group(0) @binding(0) var<storage, read> gate_up: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> step: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wid, nwg) * 256u + lid;
  if (i >= step[0] * FFN) { return; }
  let t = i / FFN;
  let g = gate_up[t * 2u * FFN + i % FFN];
  let u = gate_up[t * 2u * FFN + FFN + i % FFN];
  out[i] = g / (1.0 + exp(-g)) * u;
}
`;
}
