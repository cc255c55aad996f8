/**
 * RMSNorm, one workgroup per row:  out = x * rsqrt(mean(x^2) + eps) * w.
 * mode 'all': rows 0..T-1 to the same rows; 'last': row T-1 to row 0 (the final norm before lm_head
 * when only the last token's logits are wanted).
 */
import { COMMON, f32Literal, header, reductions, subgroupLet, subgroupParam, workgroupSizeFor, type KernelFeatures } from './prelude.js';

export interface RmsnormShape {
  hidden: number;
  eps: number;
  mode: 'all' | 'last';
  /**
   * Also write each row as f16 (clamped to +-65504, pairs packed in u32) into x16 (T, f16Cols), the
   * columns past hidden zero: the tensor-core products' operand (what convert_f16 writes), so that
   * they need no conversion of their own (mode 'all' only).
   */
  f16Cols?: number;
}

export function rmsnormWgsl(s: RmsnormShape, f: KernelFeatures): string {
  const wg = workgroupSizeFor(s.hidden, 32, 256);
  const kp = s.f16Cols;
  if (kp !== undefined && (s.mode !== 'all' || kp % 2 !== 0 || kp < s.hidden)) throw new Error(`rmsnorm: f16 output of ${kp} columns does not suit ${s.hidden} (mode ${s.mode})`);
  return `${header(f)}${COMMON}${reductions(wg, f)}
const H = ${s.hidden}u;
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> step: array<u32>;
${kp !== undefined ? '@group(0) @binding(4) var<storage, read_write> x16: array<u32>;' : ''}

@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32${subgroupParam(f)}) {
  ${subgroupLet(f)}
  ${s.mode === 'all' ? 'let row = linear_workgroup(wid, nwg);\n  if (row >= step[0]) { return; }\n  let src = row * H;\n  let dst = src;' : 'let src = (step[0] - 1u) * H;\n  let dst = 0u;'}
  var ss = 0.0;
  for (var i = lid; i < H; i += ${wg}u) { let v = x[src + i]; ss += v * v; }
  let scale = inverseSqrt(wg_sum(ss, lid, sg_size) / f32(H) + ${f32Literal(s.eps)});
${kp === undefined ? `  for (var i = lid; i < H; i += ${wg}u) { out[dst + i] = x[src + i] * scale * w[i]; }` : `  for (var j = lid; j < ${kp / 2}u; j += ${wg}u) {
    var v = vec2<f32>(0.0);
    for (var e = 0u; e < 2u; e++) {
      let i = 2u * j + e;
      if (i < H) {
        v[e] = x[src + i] * scale * w[i];
        out[dst + i] = v[e];
      }
    }
    x16[row * ${kp / 2}u + j] = pack2x16float(clamp(v, vec2<f32>(-65504.0), vec2<f32>(65504.0)));
  }`}
}
`;
}
