/**
 * SwiGLU activation per row: out = silu(gate) * up, gateUp rows holding [gate (ffn) | up (ffn)].
 *   gateUp: (T, 2 ffn);  out: (T, ffn)
 */
import { COMMON } from './prelude.js';

/**
 * The same, a pair of columns an invocation, also writing each row as f16 (clamped, pairs packed in
 * u32) into x16 (T, f16Cols), the columns past ffn zero: the down product's tensor-core operand.
 */
export function swigluF16Wgsl(ffn: number, f16Cols: number): string {
  if (f16Cols % 2 !== 0 || f16Cols < ffn) throw new Error(`swiglu: f16 output of ${f16Cols} columns does not suit ${ffn}`);
  return `${COMMON}
const FFN = ${ffn}u;
const PAIRS = ${f16Cols / 2}u;
@group(0) @binding(0) var<storage, read> gate_up: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> step: array<u32>;
@group(0) @binding(3) var<storage, read_write> x16: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wid, nwg) * 256u + lid;
  if (i >= step[0] * PAIRS) { return; }
  let t = i / PAIRS;
  let c0 = (i % PAIRS) * 2u;
  var v = vec2<f32>(0.0);
  for (var e = 0u; e < 2u; e++) {
    let c = c0 + e;
    if (c < FFN) {
      let g = gate_up[t * 2u * FFN + c];
      let u = gate_up[t * 2u * FFN + FFN + c];
      v[e] = g / (1.0 + exp(-g)) * u;
      out[t * FFN + c] = v[e];
    }
  }
  x16[i] = pack2x16float(clamp(v, vec2<f32>(-65504.0), vec2<f32>(65504.0)));
}
`;
}

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
