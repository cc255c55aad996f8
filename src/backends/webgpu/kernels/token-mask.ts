/**
 * A grammar's token mask applied to one row of logits on the GPU, before argmax/sample: the logit of
 * every token whose bit is clear becomes the lowest f32, so argmax never picks it and its sampling
 * weight exp((x - max) / T) is 0 (the sample kernel keeps only tokens of weight > 0).
 * mask: ceil(vocab / 32) u32 words, bit (i & 31) of word (i >> 5) set where token i is allowed
 * (runtime/token-filter.ts), uploaded each constrained step.
 */
import { header, type KernelFeatures } from './prelude.js';

export const TOKEN_MASK_WG = 256;

export function tokenMaskWgsl(vocab: number, f: KernelFeatures): string {
  return `${header(f)}
const V = ${vocab}u;
@group(0) @binding(0) var<storage, read_write> logits: array<f32>;
@group(0) @binding(1) var<storage, read> mask: array<u32>;

@compute @workgroup_size(${TOKEN_MASK_WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x;
  if (i < V && ((mask[i >> 5u] >> (i & 31u)) & 1u) == 0u) { logits[i] = bitcast<f32>(0xff7fffffu); } // the lowest f32
}
`;
}
