/**
 * WGSL for reading and writing the KV cache (kv-cache.ts, docs/KV-CACHE.md) and its per-step row
 * table. Every kernel that touches the cache takes a KvLayout among its defines.
 *
 * Element (slot, position, e) of a layer's K or V pool buffer is at (slot * CTX + position) * KV_DIM + e.
 * Storage:
 *   'f32'         array<vec4<f32>> reads, f32 writes
 *   'f16'         array<vec4<f16>> reads (shader-f16), vec2<f16> writes of a pair
 *   'f16-packed'  array<vec2<u32>> reads with unpack2x16float, u32 writes of pack2x16float(pair)
 * In f16 caches the K dims of a head are stored in RoPE pair order (kStoredDim): stored element 2w,
 * 2w + 1 are dims (w, w + HALF) for w < HALF, then dims ROT.. in order. Readers of whole rows permute
 * q the same way instead of K (a dot product does not care about the order).
 *
 * The row table: in the step buffer (array<u32>) at word ROWS (`rowsAt`), row t has two words:
 *   slot word: buffer group << 16 | slot within the group;  position
 * A dispatch bound to one buffer group of a pool split across several takes only the rows whose group
 * is BUFFER (kvBuffer >= 0); -1 takes every row (all rows are in the bound group).
 */

export type KvStorage = 'f32' | 'f16' | 'f16-packed';

export interface KvLayout {
  storage: KvStorage;
  contextLength: number;
  /** Word of the step buffer where the row table starts. */
  rowsAt: number;
  /** Buffer group this dispatch serves when rows may be in several (-1: every row). */
  kvBuffer: number;
}

/** Where the row table starts in a step buffer sized for maxTokens token ids. */
export function rowsAt(headerWords: number, maxTokens: number): number {
  return headerWords + maxTokens;
}

/** Words a step buffer needs: header, token ids, row table. */
export function stepWords(headerWords: number, maxTokens: number): number {
  return headerWords + 3 * maxTokens;
}

/** Defines a pipeline is keyed on. */
export function kvDefines(k: KvLayout): Record<string, string | number> {
  return { kvStorage: k.storage, kvCtx: k.contextLength, kvRows: k.rowsAt, kvBuffer: k.kvBuffer };
}

/** `enable f16;` where the kernel declares f16 storage. */
export function kvHeader(k: KvLayout): string {
  return k.storage === 'f16' ? 'enable f16;\n' : '';
}

/**
 * The dim of a head stored at element j of its K row (identity for f32 caches; RoPE pair order for
 * f16 caches, see the module comment).
 */
export function kStoredDim(storage: KvStorage, headDim: number, rotaryDim: number, j: number): number {
  if (storage === 'f32') return j;
  const half = rotaryDim / 2;
  if (j >= rotaryDim) return j;
  const w = j >> 1;
  return (j & 1) === 0 ? w : w + half;
}

/** The stored element of dim d (inverse of kStoredDim). */
export function kStoredIndex(storage: KvStorage, rotaryDim: number, d: number): number {
  if (storage === 'f32' || d >= rotaryDim) return d;
  const half = rotaryDim / 2;
  return d < half ? 2 * d : 2 * (d - half) + 1;
}

/** WGSL fn k_dim(j) -> u32: kStoredDim. */
export function kDimFn(storage: KvStorage, rotaryDim: number): string {
  if (storage === 'f32') return 'fn k_dim(j: u32) -> u32 { return j; }';
  return `fn k_dim(j: u32) -> u32 {
  if (j >= ${rotaryDim}u) { return j; }
  return select((j >> 1u) + ${rotaryDim / 2}u, j >> 1u, (j & 1u) == 0u);
}`;
}

/** WGSL fn k_index(d) -> u32: kStoredIndex. */
export function kIndexFn(storage: KvStorage, rotaryDim: number): string {
  if (storage === 'f32') return 'fn k_index(d: u32) -> u32 { return d; }';
  const half = rotaryDim / 2;
  return `fn k_index(d: u32) -> u32 {
  if (d >= ${rotaryDim}u) { return d; }
  return select(2u * (d - ${half}u) + 1u, 2u * d, d < ${half}u);
}`;
}

/**
 * Declarations for reading K and V as vec4 units, with fns load4_k(i), load4_v(i) -> vec4<f32> (i in
 * units of 4 elements) and load_k(e), load_v(e) -> f32 (one element).
 */
export function kvReadDecls(k: KvLayout, kBinding: number, vBinding: number, group = 0): string {
  const ty = k.storage === 'f32' ? 'vec4<f32>' : k.storage === 'f16' ? 'vec4<f16>' : 'vec2<u32>';
  const decl = (b: number, n: string) => `@group(${group}) @binding(${b}) var<storage, read> ${n}: array<${ty}>;`;
  const load4 = (n: string) =>
    k.storage === 'f32' ? `return ${n}[i];` : k.storage === 'f16' ? `return vec4<f32>(${n}[i]);` : `let w = ${n}[i]; return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));`;
  const load1 = (n: string) =>
    k.storage === 'f32' ? `return ${n}[e >> 2u][e & 3u];` : k.storage === 'f16' ? `return f32(${n}[e >> 2u][e & 3u]);` : `return unpack2x16float(${n}[e >> 2u][(e >> 1u) & 1u])[e & 1u];`;
  return `${decl(kBinding, 'K')}
${decl(vBinding, 'V')}
fn load4_k(i: u32) -> vec4<f32> { ${load4('K')} }
fn load4_v(i: u32) -> vec4<f32> { ${load4('V')} }
fn load_k(e: u32) -> f32 { ${load1('K')} }
fn load_v(e: u32) -> f32 { ${load1('V')} }`;
}

/**
 * With kvReadDecls, in a kernel that enables f16: load4_kh(i), load4_vh(i) -> vec4<f16>, the same units
 * without a round trip through f32.
 */
export function kvReadHalfDecls(k: KvLayout): string {
  const load4 = (n: string) =>
    k.storage === 'f32' ? `return vec4<f16>(${n}[i]);` : k.storage === 'f16' ? `return ${n}[i];` : `let w = ${n}[i]; return vec4<f16>(bitcast<vec2<f16>>(w.x), bitcast<vec2<f16>>(w.y));`;
  return `fn load4_kh(i: u32) -> vec4<f16> { ${load4('K')} }
fn load4_vh(i: u32) -> vec4<f16> { ${load4('V')} }`;
}

/**
 * Declarations for writing K and V by pairs: store_kpair(base, w, da, db, a, b) writes dims da and db
 * (the pair w of a head: (w, w + HALF) rotated together, or two pass-through dims) of the head whose
 * row starts at element `base` (even); store_v(e, a, b) puts a at element e and b at e + 1 (e even).
 * Buffers named KC and VC.
 */
export function kvWriteDecls(k: KvLayout, kBinding: number, vBinding: number): string {
  const ty = k.storage === 'f32' ? 'f32' : k.storage === 'f16' ? 'vec2<f16>' : 'u32';
  const decl = (b: number, n: string) => `@group(0) @binding(${b}) var<storage, read_write> ${n}: array<${ty}>;`;
  const pair = (n: string, at: string) => (k.storage === 'f16' ? `${n}[${at}] = vec2<f16>(vec2<f32>(a, b));` : `${n}[${at}] = pack2x16float(vec2<f32>(a, b));`);
  const kStore = k.storage === 'f32' ? 'KC[base + da] = a; KC[base + db] = b;' : pair('KC', '(base >> 1u) + w');
  const vStore = k.storage === 'f32' ? 'VC[e] = a; VC[e + 1u] = b;' : pair('VC', 'e >> 1u');
  return `${decl(kBinding, 'KC')}
${decl(vBinding, 'VC')}
fn store_kpair(base: u32, w: u32, da: u32, db: u32, a: f32, b: f32) { ${kStore} }
fn store_v(e: u32, a: f32, b: f32) { ${vStore} }
`;
}

/**
 * Row-table accessors over the step buffer `step` (array<u32>): row_slot(t), row_pos(t),
 * row_here(t) (whether the bound buffer group holds row t's slot), slot_row(t, p): the cache row of
 * position p of row t's slot (multiply by KV_DIM for elements, KV_DIM / 4 for vec4 units).
 */
export function rowTable(k: KvLayout, step = 'step'): string {
  return `const KV_CTX = ${k.contextLength}u;
fn row_slot(t: u32) -> u32 { return ${step}[${k.rowsAt}u + 2u * t] & 0xffffu; }
fn row_pos(t: u32) -> u32 { return ${step}[${k.rowsAt}u + 2u * t + 1u]; }
fn row_here(t: u32) -> bool { ${k.kvBuffer < 0 ? 'return true;' : `return (${step}[${k.rowsAt}u + 2u * t] >> 16u) == ${k.kvBuffer}u;`} }
fn slot_row(t: u32, p: u32) -> u32 { return row_slot(t) * KV_CTX + p; }`;
}

/** Writes the row table of `rows` (slot word, position) into step words at `at`. */
export function writeRows(words: Uint32Array, at: number, rows: readonly { slotWord: number; position: number }[]): void {
  for (let t = 0; t < rows.length; t++) {
    words[at + 2 * t] = rows[t]!.slotWord;
    words[at + 2 * t + 1] = rows[t]!.position;
  }
}
