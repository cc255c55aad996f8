/**
 * WGSL shared by every kernel: 16-bit unpacking from u32 words (no shader-f16), the 2D workgroup
 * grid, workgroup reductions (subgroup operations where the device has them, shared memory without),
 * and float literals. Kernels are template functions of a small closed set of defines.
 */

/** What every kernel is specialised on besides its own shapes. */
export interface KernelFeatures {
  subgroups: boolean;
}

/** Storage of a dense matrix on the GPU: f32, or two 16-bit values per u32 word (low half first). */
export type DenseDtype = 'f32' | 'bf16' | 'f16';

/** Values in one vec4<u32> chunk of a stored row. */
export function valuesPerChunk(dtype: DenseDtype): number {
  return dtype === 'f32' ? 4 : 8;
}

/** A WGSL f32 literal that round-trips the JS number through f32. */
export function f32Literal(x: number): string {
  const v = Math.fround(x);
  if (!Number.isFinite(v)) throw new Error(`f32Literal: ${x} is not finite`);
  return `${v.toExponential(9)}f`;
}

export const MAX_GRID = 65535;

/** Workgroup counts for n workgroups over a 2D grid (x at most 65535). */
export function grid(n: number): [number, number, number] {
  if (n <= MAX_GRID) return [Math.max(1, n), 1, 1];
  return [MAX_GRID, Math.ceil(n / MAX_GRID), 1];
}

/** Entry-point header: `enable subgroups;` where used. */
export function header(f: KernelFeatures): string {
  return f.subgroups ? 'enable subgroups;\n' : '';
}

/** Extra entry-point parameter giving `sg_size` (the subgroup width), or a constant 1 without subgroups. */
export function subgroupParam(f: KernelFeatures): string {
  return f.subgroups ? ', @builtin(subgroup_size) sg_size: u32' : '';
}
export function subgroupLet(f: KernelFeatures): string {
  return f.subgroups ? '' : 'let sg_size = 1u;';
}

/** Helpers every kernel may call. */
export const COMMON = /* wgsl */ `
fn linear_workgroup(wid: vec3<u32>, nwg: vec3<u32>) -> u32 { return wid.x + wid.y * nwg.x; }
fn bf16_pair(w: u32) -> vec2<f32> { return vec2<f32>(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u)); }
fn f16_pair(w: u32) -> vec2<f32> { return unpack2x16float(w); }
`;

/** unpack_pair(w): the two 16-bit values of a word as f32, for the given storage dtype. */
export function unpackPair(dtype: DenseDtype): string {
  if (dtype === 'f32') return '';
  return `fn unpack_pair(w: u32) -> vec2<f32> { return ${dtype}_pair(w); }
fn chunk_lo(w: vec4<u32>) -> vec4<f32> { return vec4<f32>(unpack_pair(w.x), unpack_pair(w.y)); }
fn chunk_hi(w: vec4<u32>) -> vec4<f32> { return vec4<f32>(unpack_pair(w.z), unpack_pair(w.w)); }
`;
}

/**
 * Workgroup reductions over WG invocations (WG a power of two): wg_sum(v), wg_max(v), wg_sum_u(v),
 * wg_max_u(v). All invocations must call them (uniform control flow); all get the result.
 * With subgroups: one subgroup operation, then the subgroups' partials through shared memory (this
 * relies on subgroups being consecutive invocations of the 1D workgroup, as on every driver seen).
 */
export function reductions(wg: number, f: KernelFeatures): string {
  if ((wg & (wg - 1)) !== 0) throw new Error(`reductions: workgroup size ${wg} is not a power of two`);
  // without subgroups: two levels through shared memory (few barriers: each costs compile time and
  // speed on CPU drivers); `lanes` invocations each fold `per` values, then everyone folds the lanes
  const per = wg >= 256 ? 16 : wg >= 64 ? 8 : 4;
  const lanes = wg / per;
  const one = (name: string, ty: 'f32' | 'u32', op: (a: string, b: string) => string, sgOp: string, identity: string) =>
    f.subgroups
      ? `
var<workgroup> red_${name}: array<${ty}, ${wg}>;
fn wg_${name}(v: ${ty}, lid: u32, sg_size: u32) -> ${ty} {
  let s = ${sgOp}(v);
  workgroupBarrier();
  if (lid % sg_size == 0u) { red_${name}[lid / sg_size] = s; }
  workgroupBarrier();
  var r = ${identity};
  let n = (${wg}u + sg_size - 1u) / sg_size;
  for (var i = 0u; i < n; i++) { r = ${op('r', `red_${name}[i]`)}; }
  return r;
}`
      : `
var<workgroup> red_${name}: array<${ty}, ${wg}>;
var<workgroup> red2_${name}: array<${ty}, ${lanes}>;
fn wg_${name}(v: ${ty}, lid: u32, sg_size: u32) -> ${ty} {
  red_${name}[lid] = v;
  workgroupBarrier();
  if (lid < ${lanes}u) {
    var r = red_${name}[lid * ${per}u];
    for (var i = 1u; i < ${per}u; i++) { r = ${op('r', `red_${name}[lid * ${per}u + i]`)}; }
    red2_${name}[lid] = r;
  }
  workgroupBarrier();
  var r = red2_${name}[0];
  for (var i = 1u; i < ${lanes}u; i++) { r = ${op('r', `red2_${name}[i]`)}; }
  return r;
}`;
  return [
    one('sum', 'f32', (a, b) => `${a} + ${b}`, 'subgroupAdd', '0.0'),
    one('max', 'f32', (a, b) => `max(${a}, ${b})`, 'subgroupMax', '-3.0e38'),
    one('sum_u', 'u32', (a, b) => `${a} + ${b}`, 'subgroupAdd', '0u'),
    one('max_u', 'u32', (a, b) => `max(${a}, ${b})`, 'subgroupMax', '0u'),
  ].join('\n');
}

/** Smallest power of two >= n, clamped to [lo, hi]. */
export function workgroupSizeFor(n: number, lo = 32, hi = 256): number {
  let w = lo;
  while (w < n && w < hi) w *= 2;
  return w;
}

/**
 * `dot4I8(a, b)` (the dot product of four packed i8 pairs) and `pack4xI8_(v)`: WGSL's built-ins where the
 * adapter has `packed_4x8_integer_dot_product`, else the same arithmetic from extractBits and masks.
 */
export function int8DotWgsl(packedDot: boolean | undefined): string {
  return packedDot ? INT8_DOT_NATIVE : INT8_DOT_POLYFILL;
}

const INT8_DOT_NATIVE = /* wgsl */ `
fn dot4I8(a: u32, b: u32) -> i32 { return dot4I8Packed(a, b); }
fn pack4xI8_(v: vec4<i32>) -> u32 { return pack4xI8(v); }`;

const INT8_DOT_POLYFILL = /* wgsl */ `
fn dot4I8(a: u32, b: u32) -> i32 {
  let x = bitcast<i32>(a);
  let y = bitcast<i32>(b);
  return extractBits(x, 0u, 8u) * extractBits(y, 0u, 8u) + extractBits(x, 8u, 8u) * extractBits(y, 8u, 8u)
    + extractBits(x, 16u, 8u) * extractBits(y, 16u, 8u) + extractBits(x, 24u, 8u) * extractBits(y, 24u, 8u);
}
fn pack4xI8_(v: vec4<i32>) -> u32 {
  let b = vec4<u32>(bitcast<vec4<u32>>(v) & vec4<u32>(0xFFu));
  return b.x | (b.y << 8u) | (b.z << 16u) | (b.w << 24u);
}`;
