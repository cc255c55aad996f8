/**
 * Prompt attention on the tensor cores (f16 x f16 -> f32 16x16x16 subgroup matrices), where the
 * device's self-tests passed (device.ts): one workgroup of BQ / 16 subgroups per (query head h, tile of
 * BQ = 128 consecutive rows of one sequence; 64 in the older variants), each subgroup 16 of the rows;
 * keys walked in tiles of BK = 32, each K and V tile read once from the cache into workgroup memory (f16)
 * for the BQ rows. Where the attention's time goes (fetching and putting each tile, the barriers, the
 * scalar softmax, not the products), 128 rows share each of those steps: 1.6x faster than 64 at 16k keys.
 *   softmax(q k^T / sqrt(HD) + mask) v
 * One pass over the keys (the engine's default; PDVM_ATTENTION_PASSES=2 asks for two): each key tile's
 * scores S = Q K^T (subgroup matrices), then each
 * row's P = exp(s - m) as f16 and O += P V (subgroup matrices), with m a reference max per row that is
 * raised only where a tile's max passes it by more than RESCALE_ABOVE (8: P stays below e^8, well inside
 * f16), l = sum P in f32. A subgroup matrix cannot be scaled row by row, so where some row's reference
 * moved and it already has a sum, the workgroup (a flag a row, read uniformly) stores its O through
 * workgroup memory, scales the rows by exp(m_old - m_new) and loads it back: rare after a row's first
 * tiles. Between the scores and the products every lane takes the same path (selects, no branches):
 * on an H100 and an H200 a first version with branches there gave wrong outputs that the same code
 * with emulated subgroup matrices did not. The output is O / l, scaled as it is written.
 * Two passes (the older kernel, where one pass fails its self-test): pass 1 the scores and each row's
 * max and sum, pass 2 the scores again and P already normalised (1.5x the products, no rescale).
 *   Q (pre-scaled by 1/sqrt(HD), in K's stored dim order) stays in registers as HD/16 left matrices a
 *   subgroup; row t sees keys first_t..p_t of its slot (causal mask, sliding window per row).
 * Workgroup memory at HD 128: Q 17 KiB, a K or V tile 8.5 KiB, scores 9 KiB, P 5 KiB (40 KiB), the
 * rows' scale factors 256 B.
 * Rows of a tile share a slot (one sequence's prompt). Needs HD % 16 == 0, HD <= 256.
 * Split over keys (AttentionSplit, the default where its partial results fit a binding): workgroup z
 * takes only keys z SK .. z SK + SK - 1 of its tile's range and writes its rows' output normalised by
 * its own sum, with its max m and sum l, to `parts`; attention_merge (attentionMergeWgsl) combines the
 * splits of a row: out = sum_z O_z l_z exp(m_z - M) / sum_z l_z exp(m_z - M). A workgroup walks at
 * most SK keys, so a long prompt's last tiles run as many workgroups as splits instead of one long
 * loop, and the tiles of a causal prompt are no longer as uneven as their key ranges.
 */
import type { AttentionShape } from './attention.js';
import { kDimFn, kvHeader, kvReadDecls, kvReadHalfDecls, rowTable, type KvLayout } from './kv.js';
import { subgroupMatrixLoadWgsl, subgroupMatrixStoreWgsl, type SubgroupIndexing, type SubgroupMatrixSyntax } from './matmul-tiled.js';
import { COMMON, f32Literal } from './prelude.js';

export const TC_TILE_Q = 64;
const TC_TILE_K = 32;

/** Keys a workgroup takes (a multiple of the key tile) and splits of the context (grid z). */
export interface AttentionSplit {
  keys: number;
  splits: number;
}

/**
 * The split for a context: about `target` splits (8 unless PDVM_ATTENTION_SPLITS says: parseAttentionSplits)
 * of at least 512 keys, fewer where their partial outputs for maxTokens rows (T x heads x splits x HD f32)
 * would pass maxBytes; null where one split is all (the kernel writes out directly). On the H100 a 512-token prompt in splits of 128 keys took longer
 * than one pass (8B: 203 + 22 µs of merge against 141 µs), a 16,384-token one far less (docs/PERFORMANCE.md):
 * the engine splits a step only where its last key is at least two splits in.
 */
export function attentionSplitFor(s: AttentionShape, contextLength: number, maxTokens: number, maxBytes: number, target = 8): AttentionSplit | null {
  let keys = Math.max(512, Math.ceil(contextLength / target / TC_TILE_K) * TC_TILE_K);
  while (Math.ceil(contextLength / keys) > 1 && maxTokens * s.numHeads * Math.ceil(contextLength / keys) * s.headDim * 4 > maxBytes) keys *= 2;
  const splits = Math.ceil(contextLength / keys);
  return splits > 1 ? { keys, splits } : null;
}

/** Bytes of the partial outputs (O) and (m, l) pairs of a split for maxTokens rows. */
export function attentionPartsBytes(s: AttentionShape, split: AttentionSplit, maxTokens: number): { o: number; ml: number } {
  const n = maxTokens * s.numHeads * split.splits;
  return { o: n * s.headDim * 4, ml: n * 8 };
}

export function attentionTensorCoreFits(s: AttentionShape): boolean {
  return s.headDim % 16 === 0 && s.headDim <= 256;
}

/** Workgroup memory of the kernel, bytes. */
export function attentionTensorCoreBytes(s: AttentionShape, passes: 1 | 2 = 2, kvBuffers: 1 | 2 = 1, rows: AttentionRows = 64): number {
  const SQ = s.headDim + 8;
  // Q's block and one K-or-V tile, or (kvBuffers 2) a K and a V tile that hold Q before the loop
  const tiles = passes === 1 && kvBuffers === 2 ? 2 * TC_TILE_K * SQ * 2 : rows * SQ * 2 + TC_TILE_K * SQ * 2;
  return tiles + rows * (TC_TILE_K + 4) * 4 + rows * (TC_TILE_K + 8) * 2 + (passes === 1 ? rows * 8 : 0);
}

/**
 * Query rows a workgroup: 64 (4 subgroups of 16 rows, 128 invocations), or 128 (8 subgroups, 256
 * invocations: each K and V tile fetched and put once for twice the rows, a barrier serving twice the
 * rows; 46 KiB of workgroup memory at HD 128). 128 only for one pass with K and V in two buffers
 * (the variant that fits them; Q is staged 32 dims a round through the probabilities' blocks) and HD a
 * multiple of 32.
 */
export type AttentionRows = 64 | 128;

export function attentionRowsFit(s: AttentionShape, o: AttentionTensorCoreOptions): boolean {
  return (o.rows ?? 64) === 64 || (o.passes === 1 && o.kvBuffers === 2 && s.headDim % 32 === 0);
}

/** The variant in words (the device's self-tests and `bench`'s prefill path name it). */
export function attentionVariantName(o: AttentionTensorCoreOptions): string {
  if ((o.passes ?? 2) === 2) return 'two passes';
  return o.kvBuffers === 2 ? `one pass, K and V in two buffers${o.rows === 128 ? ', 128 rows a workgroup' : ''}` : 'one pass';
}

/**
 * PDVM_ATTENTION_ROWS: unset or 128, the default since 2026-12-07 night (with K and V in two buffers:
 * the attention at positions 15,872..16,383 of phi-4 1.6x faster than 64 rows on the H100); 64 for the
 * 64-row kernels. Self-tested at device creation (a failure falls back to 64).
 */
export function parseAttentionRows(v: string | undefined): AttentionRows {
  if (v === undefined || v === '' || v === '128') return 128;
  if (v === '64') return 64;
  throw new Error(`PDVM_ATTENTION_ROWS must be 64 or 128, not '${v}'`);
}

/** The kernel's variant: one pass with lazy rescaling or the older two passes. */
export interface AttentionTensorCoreOptions {
  /** Default 2 here (the engine asks for parseAttentionPasses's: one unless PDVM_ATTENTION_PASSES=2). */
  passes?: 1 | 2;
  /** One pass: a row's reference max moves only where a tile's max passes it by more than this (0: whenever it grows). */
  rescaleAbove?: number;
  /**
   * One pass: 2 puts K and V in separate workgroup buffers (three barriers a key tile instead of four; Q
   * staged through them, no buffer of its own; 32 KiB of workgroup memory at HD 128 instead of 40). The
   * engine's with 128 rows (the default since 2026-12-07 night); at 64 rows as fast as one buffer
   * (docs/PERFORMANCE.md).
   */
  kvBuffers?: 1 | 2;
  /** Query rows a workgroup (AttentionRows; 64 unless said here; the engine asks for 128, parseAttentionRows). */
  rows?: AttentionRows;
}

/**
 * The passes of PDVM_ATTENTION_PASSES: unset or 1, one (the default since 2026-12-07: lazy rescaling,
 * self-tested on the H100, 1.33x faster than two at 16,384 keys); 2, the older two-pass kernel. The
 * device's self-test decides either way (device.ts falls back to two where one fails).
 */
export function parseAttentionPasses(v: string | undefined): 1 | 2 {
  if (v === undefined || v === '' || v === '1') return 1;
  if (v === '2') return 2;
  throw new Error(`PDVM_ATTENTION_PASSES must be 1 or 2, not '${v}'`);
}

/**
 * PDVM_ATTENTION_KV_BUFFERS: unset or 1, the one-pass kernel's K and V share a workgroup buffer; 2, each
 * has its own (kvBuffers 2 above), self-tested at device creation like the rest (a failure falls back to 1).
 */
export function parseAttentionKvBuffers(v: string | undefined): 1 | 2 {
  if (v === undefined || v === '' || v === '1') return 1;
  if (v === '2') return 2;
  throw new Error(`PDVM_ATTENTION_KV_BUFFERS must be 1 or 2, not '${v}'`);
}

/**
 * PDVM_ATTENTION_SPLITS: the number of splits over keys a long context aims at (attentionSplitFor), 8
 * unset (16 before 2026-12-07 night: 8 measured 7% faster at 16k positions with 128 rows, 32 slower);
 * each split's workgroup loads its rows' Q and writes partial outputs that the merge reads: fewer
 * splits, less of that, and fewer workgroups at once.
 */
export function parseAttentionSplits(v: string | undefined): number {
  if (v === undefined || v === '') return 8;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 2 || n > 256) throw new Error(`PDVM_ATTENTION_SPLITS must be a whole number from 2 to 256, not '${v}'`);
  return n;
}

export function attentionTensorCoreWgsl(
  s: AttentionShape, kv: KvLayout, subgroupSize: number, indexing: SubgroupIndexing, syntax: SubgroupMatrixSyntax = 'template', split: AttentionSplit | null = null,
  options: AttentionTensorCoreOptions = {},
): string {
  const onePass = options.passes === 1, rescaleAbove = options.rescaleAbove ?? 8, twoBuffers = onePass && options.kvBuffers === 2;
  const BQ = options.rows ?? TC_TILE_Q, WG = 2 * BQ;
  if (!attentionRowsFit(s, options)) throw new Error(`attention (tensor cores): ${BQ} rows a workgroup need one pass, K and V in two buffers and HD a multiple of 32`);
  if (split && split.keys % TC_TILE_K !== 0) throw new Error(`attention (tensor cores): a split of ${split.keys} keys is not whole key tiles`);
  const PS = split ? `${s.numHeads * split.splits * s.headDim}u` : ''; // row stride of parts
  if (subgroupSize !== 32) throw new Error(`attention (tensor cores): needs subgroups of 32, not ${subgroupSize}`);
  const qDim = s.numHeads * s.headDim, kvDim = s.numKvHeads * s.headDim;
  const HD = s.headDim, ND = HD / 16, SQ = HD + 8, SS = TC_TILE_K + 4, SP = TC_TILE_K + 8;
  const first = (p: string) => (s.slidingWindow ? `select(0u, ${p} + 1u - ${s.slidingWindow}u, ${p} + 1u > ${s.slidingWindow}u)` : '0u');
  const byId = indexing === 'subgroup-id';
  const L = (p: string, off: string, stride: string) => subgroupMatrixLoadWgsl(syntax, 'subgroup_matrix_left<f16, 16, 16>', p, off, false, stride);
  const R = (p: string, off: string, stride: string, colMajor: boolean) => subgroupMatrixLoadWgsl(syntax, 'subgroup_matrix_right<f16, 16, 16>', p, off, colMajor, stride);
  const range = (n: number) => Array.from({ length: n }, (_, i) => i);
  // the scores of this subgroup's 16 rows x the tile's 32 keys, stored row-major into ss
  // where a tile's keys 16 j .. 16 j + 15 are: a pointer and the offset of their first element
  type Block = (j: number) => [string, number];
  const kvsBlock: Block = (j) => ['&kvs', 16 * j * SQ];
  const scoresFrom = (k: Block) => `    var s0 = subgroup_matrix_result<f32, 16, 16>();
    var s1 = subgroup_matrix_result<f32, 16, 16>();
${range(ND).map((i) => `    s0 = subgroupMatrixMultiplyAccumulate(q${i}, ${R(k(0)[0], `${k(0)[1] + 16 * i}u`, `${SQ}u`, true)}, s0);
    s1 = subgroupMatrixMultiplyAccumulate(q${i}, ${R(k(1)[0], `${k(1)[1] + 16 * i}u`, `${SQ}u`, true)}, s1);`).join('\n')}
    ${subgroupMatrixStoreWgsl(syntax, '&ss[g]', '0u', 's0', false, `${SS}u`)};
    ${subgroupMatrixStoreWgsl(syntax, '&ss[g]', '16u', 's1', false, `${SS}u`)};`;
  const scores = scoresFrom(kvsBlock);
  // a K or V tile (32 keys x HD) in HD / 16 vec4 units an invocation: fetched into registers (rg) a
  // step ahead, put into kvs after the barrier that frees it
  const NL = (TC_TILE_K * HD) / 4 / WG;
  const fetch = (fn: 'load4_k' | 'load4_v', k0: string, reg = 'rg') => range(NL).map((j) => `    {
      let i = lid + ${WG * j}u;
      let key = ${k0} + i / ${HD / 4}u;
      ${reg}[${j}] = select(vec4<f16>(0.0h), ${fn}h((sb + key) * KV_DIM4 + kvh * ${HD / 4}u + i % ${HD / 4}u), key <= kHi);
    }`).join('\n');
  // tile: kvs, or (kvBuffers 2) the first of the two blocks of 16 keys of kv2 it takes
  const putInto = (tile: 'kvs' | 0 | 2, reg = 'rg') => range(NL).map((j) => {
    const [keyLet, row, at] = tile === 'kvs' ? ['', `(i / ${HD / 4}u)`, 'kvs[o'] : [`\n      let key = i / ${HD / 4}u;`, '(key % 16u)', `kv2[${tile}u + key / 16u][o`];
    return `    {
      let i = lid + ${WG * j}u;${keyLet}
      let o = ${row} * ${SQ}u + (i % ${HD / 4}u) * 4u;
      let v = ${reg}[${j}];
      ${at}] = v.x; ${at} + 1u] = v.y; ${at} + 2u] = v.z; ${at} + 3u] = v.w;
    }`;
  }).join('\n');
  const put = putInto('kvs');
  // the second pass's (or the only pass's) loop head: O zeroed, the first K tile in flight; each tile
  // put, its V fetched, its scores into ss
  const tileStart = `${range(ND).map((n) => `  var o${n} = subgroup_matrix_result<f32, 16, 16>();`).join('\n')}
${fetch('load4_k', 'kLo')}
  for (var k0 = kLo; k0 <= kHi; k0 += ${TC_TILE_K}u) {
${put}
    workgroupBarrier();
${fetch('load4_v', 'k0')}
${scores}
    workgroupBarrier();
`;
  // O += P V for the tile's 32 keys
  const productsFrom = (v: Block) => `${range(2).map((kk) => `    {
      let pl = ${L('&ps[g]', `${16 * kk}u`, `${SP}u`)};
${range(ND).map((n) => `      o${n} = subgroupMatrixMultiplyAccumulate(pl, ${R(v(kk)[0], `${v(kk)[1] + 16 * n}u`, `${SQ}u`, false)}, o${n});`).join('\n')}
    }`).join('\n')}
`;
  const products = productsFrom(kvsBlock);
  const twoPassBody = `  // pass 1: each row's max and sum (the next K tile's loads in flight while this one's scores run)
${fetch('load4_k', 'kLo')}
  for (var k0 = kLo; k0 <= kHi; k0 += ${TC_TILE_K}u) {
${put}
    workgroupBarrier();
    if (k0 + ${TC_TILE_K}u <= kHi) {
${fetch('load4_k', `k0 + ${TC_TILE_K}u`)}
    }
${scores}
    workgroupBarrier();
    var tmax = -3.0e38;
    for (var c = 0u; c < 16u; c++) {
      let key = k0 + half * 16u + c;
      if (live && key >= firstKey && key <= lastKey) { tmax = max(tmax, ss[g][ro + c]); }
    }
    tmax = max(tmax, subgroupShuffleXor(tmax, 1u));
    let mNew = max(m, tmax);
    var sum = 0.0;
    for (var c = 0u; c < 16u; c++) {
      let key = k0 + half * 16u + c;
      if (live && key >= firstKey && key <= lastKey) { sum += exp(ss[g][ro + c] - mNew); }
    }
    sum += subgroupShuffleXor(sum, 1u);
    l = l * exp(m - mNew) + sum;
    m = mNew;
    // (no barrier: the next tile is put into kvs only after every scores read it, and ss is written
    // again only after the next barrier)
  }
  // pass 2: P = exp(s - m) / l, O += P V (V's loads in flight while the scores run, the next K's
  // while P V runs)
  let inv = select(0.0, 1.0 / l, l > 0.0);
${tileStart}    for (var c = 0u; c < 16u; c++) {
      let key = k0 + half * 16u + c;
      let ok = live && key >= firstKey && key <= lastKey;
      ps[g][po + c] = f16(select(0.0, exp(ss[g][ro + c] - m) * inv, ok));
    }
${put}
    if (k0 + ${TC_TILE_K}u <= kHi) {
${fetch('load4_k', `k0 + ${TC_TILE_K}u`)}
    }
    workgroupBarrier();
${products}    workgroupBarrier();
  }
  // out (T, HEADS * HD), or parts: whole subgroups of live rows straight, the last partial one through ss
  let whole = t0 + g * 16u + 16u <= T;
${split ? `  if (live && half == 0u) { ml[(t * HEADS + h) * ${split.splits}u + wid.z] = vec2<f32>(m, l); }
` : ''}${range(ND).map((n) => `  if (whole) {
    ${split
      ? subgroupMatrixStoreWgsl(syntax, '&out', `(t0 + g * 16u) * ${PS} + (h * ${split.splits}u + wid.z) * ${HD}u + ${16 * n}u`, `o${n}`, false, PS)
      : subgroupMatrixStoreWgsl(syntax, '&out', `(t0 + g * 16u) * ${qDim}u + h * ${HD}u + ${16 * n}u`, `o${n}`, false, `${qDim}u`)};
  } else {
    ${subgroupMatrixStoreWgsl(syntax, '&ss[g]', '0u', `o${n}`, false, `${SS}u`)};
  }
  workgroupBarrier();
  if (!whole) {
    for (var e = lane; e < 256u; e += 32u) {
      let tt = t0 + g * 16u + e / 16u;
      if (tt < T) { out[${split ? `tt * ${PS} + (h * ${split.splits}u + wid.z) * ${HD}u` : `tt * ${qDim}u + h * ${HD}u`} + ${16 * n}u + e % 16u] = ss[g][(e / 16u) * ${SS}u + e % 16u]; }
    }
  }
  workgroupBarrier();`).join('\n')}`;
  // one pass, after a tile's scores: each row's P against its reference max into ps, l, the rescale
  // factors and flags (read after the next barrier)
  const softmax = `    // no branch from here to the products: every lane of a subgroup takes the same path (selects only)
    // this lane's live columns of the tile: c0 ..= c1 (none where the row is past T)
    let kb = i32(k0 + half * 16u);
    let c0 = i32(firstKey) - kb;
    let c1 = select(-1, i32(lastKey) - kb, live);
    var tmax = -3.0e38;
    for (var c = 0u; c < 16u; c++) {
      tmax = max(tmax, select(-3.0e38, ss[g][ro + c], i32(c) >= c0 && i32(c) <= c1));
    }
    tmax = max(tmax, subgroupShuffleXor(tmax, 1u));
    // a new reference only past the old by more than ${rescaleAbove} (the first live tile always: m + ${rescaleAbove} is m
    // at -3e38); O, where the row has a sum already, is scaled below
    let raise = tmax > m + ${f32Literal(rescaleAbove)};
    let factor = select(1.0, exp(m - tmax), raise);
    flags[rr / 4u][rr % 4u] = u32(raise && l > 0.0); // both lanes of the row write the same
    l = l * factor;
    m = select(m, tmax, raise);
    var sum = 0.0;
    for (var c = 0u; c < 16u; c++) {
      let pv = select(0.0, exp(ss[g][ro + c] - m), i32(c) >= c0 && i32(c) <= c1);
      ps[g][po + c] = f16(pv);
      sum += pv;
    }
    l += sum + subgroupShuffleXor(sum, 1u);
    fs[rr] = factor;
`;
  // the uniform load (a barrier) after which P, the tile, the factors and the flags are visible; where
  // some row's reference moved, its O rescaled
  const rescale = `    // (the uniform load is the barrier after which P, the tile put, the factors and the flags are visible)
    let moved = workgroupUniformLoad(&flags);
    var anyMoved = vec4<u32>(0u);
    for (var i = 0u; i < ${BQ / 4}u; i++) { anyMoved |= moved[i]; }
    if (any(anyMoved != vec4<u32>(0u))) {
      // some row's reference moved: O through ss (two 16 x 16 halves taken in turn), rows scaled
${range(ND).map((n) => `      ${subgroupMatrixStoreWgsl(syntax, '&ss[g]', `${16 * (n % 2)}u`, `o${n}`, false, `${SS}u`)};
      workgroupBarrier();
      for (var e = lane; e < 256u; e += 32u) { ss[g][(e / 16u) * ${SS}u + ${16 * (n % 2)}u + e % 16u] *= fs[g * 16u + e / 16u]; }
      workgroupBarrier();
      o${n} = ${subgroupMatrixLoadWgsl(syntax, 'subgroup_matrix_result<f32, 16, 16>', '&ss[g]', `${16 * (n % 2)}u`, false, `${SS}u`)};`).join('\n')}
    }
`;
  // out (T, HEADS * HD), or parts: O / l, each matrix through a half of ss, scaled by row as written
  const onePassOut = `
  fs[rr] = select(0.0, 1.0 / l, l > 0.0);
${split ? `  if (live && half == 0u) { ml[(t * HEADS + h) * ${split.splits}u + wid.z] = vec2<f32>(m, l); }
` : ''}${range(ND).map((n) => `  ${subgroupMatrixStoreWgsl(syntax, '&ss[g]', `${16 * (n % 2)}u`, `o${n}`, false, `${SS}u`)};
  workgroupBarrier();
  for (var e = lane; e < 256u; e += 32u) {
    let tt = t0 + g * 16u + e / 16u;
    if (tt < T) { out[${split ? `tt * ${PS} + (h * ${split.splits}u + wid.z) * ${HD}u` : `tt * ${qDim}u + h * ${HD}u`} + ${16 * n}u + e % 16u] = ss[g][(e / 16u) * ${SS}u + ${16 * (n % 2)}u + e % 16u] * fs[g * 16u + e / 16u]; }
  }`).join('\n')}`;
  // Q into registers through workgroup memory: 64 rows x HD at once (into qs, or kv2's four blocks), or (128 rows) below
  const qValue = (row: string, d: string) => `f16(qkv[min(t0 + ${row}, T - 1u) * STRIDE + h * ${HD}u + k_dim(${d})] * ${f32Literal(1 / Math.sqrt(HD))})`;
  const qBlocks = twoBuffers ? 'kv2' : 'qs';
  const stageQ = `  for (var i = lid; i < ${BQ * HD}u; i += ${WG}u) {
    ${qBlocks}[(i / ${HD}u) / 16u][((i / ${HD}u) % 16u) * ${SQ}u + i % ${HD}u] = ${qValue(`i / ${HD}u`, `i % ${HD}u`)};
  }
  workgroupBarrier();
${range(ND).map((i) => `  let q${i} = ${L(`&${qBlocks}[g]`, `${16 * i}u`, `${SQ}u`)};`).join('\n')}`;
  // or (128 rows) 32 dims a round for all the rows, through ps: subgroup g's 16 rows x 32 dims are its
  // own block ps[g] (stride ${SP}), so every subgroup loads its own rows each round at constant offsets
  const qIn32 = range(HD / 32).map((r) => `${r > 0 ? '  workgroupBarrier(); // the last round\'s loads done\n' : ''}  for (var i = lid; i < ${BQ * 32}u; i += ${WG}u) {
    let row = i / 32u;
    ps[row / 16u][(row % 16u) * ${SP}u + i % 32u] = ${qValue('row', `${32 * r}u + i % 32u`)};
  }
  workgroupBarrier();
  let q${2 * r} = ${L('&ps[g]', '0u', `${SP}u`)};
  let q${2 * r + 1} = ${L('&ps[g]', '16u', `${SP}u`)};`).join('\n') + '\n  workgroupBarrier(); // every subgroup has its Q before P overwrites it\n';
  const onePassBody = `  // one pass: scores, P against the row's reference max, O += P V (V's loads in flight while the
  // scores run, the next K's while P V runs)
${tileStart}${softmax}${put}
    if (k0 + ${TC_TILE_K}u <= kHi) {
${fetch('load4_k', `k0 + ${TC_TILE_K}u`)}
    }
${rescale}${products}    workgroupBarrier();
  }
${onePassOut}`;
  // one pass with K and V in separate buffers (kvBuffers 2): the next tile's K put while this one's P V
  // waits, its V after the products: three barriers a tile instead of four
  const twoBufferBody = `  // one pass, K in kv2[0..1] and V in kv2[2..3]: both of a tile fetched a tile ahead
${range(ND).map((n) => `  var o${n} = subgroup_matrix_result<f32, 16, 16>();`).join('\n')}
  var rk: array<vec4<f16>, ${NL}>;
  var rv: array<vec4<f16>, ${NL}>;
${fetch('load4_k', 'kLo', 'rk')}
${fetch('load4_v', 'kLo', 'rv')}
${putInto(0, 'rk')}
${putInto(2, 'rv')}
  workgroupBarrier();
  for (var k0 = kLo; k0 <= kHi; k0 += ${TC_TILE_K}u) {
    if (k0 + ${TC_TILE_K}u <= kHi) {
${fetch('load4_k', `k0 + ${TC_TILE_K}u`, 'rk')}
${fetch('load4_v', `k0 + ${TC_TILE_K}u`, 'rv')}
    }
${scoresFrom((j) => [`&kv2[${j}]`, 0])}
    workgroupBarrier();
${softmax}    // every scores read of K is done: the next K in (visible after the uniform load)
${putInto(0, 'rk')}
${rescale}${productsFrom((kk) => [`&kv2[${2 + kk}]`, 0])}    workgroupBarrier();
    // every P V read of V and ps is done: the next V in (visible after the next tile's first barrier)
${putInto(2, 'rv')}
  }
${onePassOut}`;
  return `enable f16;
enable subgroups;
enable chromium_experimental_subgroup_matrix;
${byId ? 'requires subgroup_id;\n' : ''}diagnostic(off, subgroup_uniformity);
${kvHeader(kv).replace('enable f16;\n', '')}${COMMON}
const HEADS = ${s.numHeads}u;
const GROUP = ${s.numHeads / s.numKvHeads}u;
const KV_DIM4 = ${kvDim / 4}u;
const STRIDE = ${qDim + 2 * kvDim}u;
@group(0) @binding(0) var<storage, read> qkv: array<f32>;
${kvReadDecls(kv, 1, 2)}
@group(0) @binding(3) var<storage, read_write> out: array<f32>;${split ? ' // (T, HEADS, SPLITS, HD): each split\'s output' : ''}
@group(0) @binding(4) var<storage, read> step: array<u32>;
${split ? '@group(0) @binding(5) var<storage, read_write> ml: array<vec2<f32>>; // (T, HEADS, SPLITS): (m, l)' : ''}
${rowTable(kv)}
${kDimFn(kv.storage, s.rotaryDim)}
// four K or V elements as f16, without a round trip through f32
${kvReadHalfDecls(kv)}

${twoBuffers ? `var<workgroup> kv2: array<array<f16, ${16 * SQ}>, 4>; // blocks of 16 keys x HD: K's tile in [0..1], V's in [2..3]; with 64 rows, Q before the loop
` : `var<workgroup> qs: array<array<f16, ${16 * SQ}>, ${BQ / 16}>; // (${BQ} rows, HD) in blocks of 16 rows, stride ${SQ}
var<workgroup> kvs: array<f16, ${TC_TILE_K * SQ}>; // (32 keys, HD): K, then V
`}// scores and probabilities in blocks of a subgroup's 16 rows: its subgroup-matrix loads and stores
// then have constant offsets, which Tint's robustness leaves without a clamp
var<workgroup> ss: array<array<f32, ${16 * SS}>, ${BQ / 16}>; // (${BQ} rows, 32 keys) scores, stride ${SS}
var<workgroup> ps: array<array<f16, ${16 * SP}>, ${BQ / 16}>; // (${BQ} rows, 32 keys) probabilities, stride ${SP}
${onePass ? `var<workgroup> fs: array<f32, ${BQ}>; // a row's factor: its O's rescale in the loop, 1 / l at the end
var<workgroup> flags: array<vec4<u32>, ${BQ / 4}>; // a row's O needs its rescale this tile (row r at [r / 4][r % 4])
` : ''}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32${byId ? ', @builtin(subgroup_id) sg_id: u32, @builtin(subgroup_invocation_id) sg_lane: u32' : ''}) {
  let h = wid.x;
  let t0 = wid.y * ${BQ}u;
  let T = step[0];
  let g = ${byId ? 'sg_id' : 'lid / 32u'};
  let lane = ${byId ? 'sg_lane' : 'lid % 32u'};
  let kvh = h / GROUP;
  // the tile's key range: from the first row's first key to the last live row's position
  let p0 = row_pos(t0);
  let kBegin = ${first('p0')};
  let kEnd = row_pos(min(t0 + ${BQ}u, T) - 1u);
  let sb = slot_row(t0, 0u);
  // this workgroup's keys: all of them, or split z's
  let kLo = ${split ? `max(kBegin, wid.z * ${split.keys}u)` : 'kBegin'};
  let kHi = ${split ? `min(kEnd, wid.z * ${split.keys}u + ${split.keys - 1}u)` : 'kEnd'};
  if (kLo > kHi) { return; }
  // q, pre-scaled, in K's stored dim order (rows past T repeat the last: finite, never stored)
${BQ === 128 ? qIn32 : `${stageQ}
${twoBuffers ? '  workgroupBarrier(); // every subgroup has its Q before the tiles overwrite it\n' : ''}`}  // two lanes a row: row rr of the tile, keys half * 16 .. + 16 of a key tile
  let rr = g * 16u + lane / 2u;
  let half = lane % 2u;
  let ro = (lane / 2u) * ${SS}u + half * 16u; // the row's half in its subgroup's block of ss, and of ps
  let po = (lane / 2u) * ${SP}u + half * 16u;
  let t = t0 + rr;
  let live = t < T;
  let p = row_pos(min(t, T - 1u));
  let firstKey = max(${first('p')}, kLo);
  let lastKey = min(p, kHi);
  var m = -3.0e38;
  var l = 0.0;
${twoBuffers ? twoBufferBody : `  var rg: array<vec4<f16>, ${NL}>;
${onePass ? onePassBody : twoPassBody}`}
}
`;
}

/**
 * The splits of each (row, head) combined (a workgroup of 64 each): the max M of the splits' maxes,
 * then out = sum_z O_z l_z exp(m_z - M) / sum_z l_z exp(m_z - M) over the splits whose keys meet the
 * row's (first key .. position; every one of them was written by attentionTensorCoreWgsl).
 */
export function attentionMergeWgsl(s: AttentionShape, kv: KvLayout, split: AttentionSplit): string {
  const qDim = s.numHeads * s.headDim, HD = s.headDim, Z = split.splits, SK = split.keys;
  const first = s.slidingWindow ? `select(0u, p + 1u - ${s.slidingWindow}u, p + 1u > ${s.slidingWindow}u)` : '0u';
  return `${COMMON}
const HEADS = ${s.numHeads}u;
@group(0) @binding(0) var<storage, read> parts: array<f32>; // (T, HEADS, ${Z}, ${HD})
@group(0) @binding(1) var<storage, read> ml: array<vec2<f32>>; // (T, HEADS, ${Z})
@group(0) @binding(2) var<storage, read_write> out: array<f32>; // (T, HEADS * ${HD})
@group(0) @binding(3) var<storage, read> step: array<u32>;
${rowTable(kv)}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wid, nwg);
  let t = i / HEADS;
  let h = i % HEADS;
  if (t >= step[0]) { return; }
  let p = row_pos(t);
  let z0 = (${first}) / ${SK}u;
  let z1 = p / ${SK}u;
  let base = (t * HEADS + h) * ${Z}u;
  var mx = -3.0e38;
  for (var z = z0; z <= z1; z++) {
    let v = ml[base + z];
    if (v.y > 0.0) { mx = max(mx, v.x); }
  }
  var total = 0.0;
  for (var z = z0; z <= z1; z++) {
    let v = ml[base + z];
    if (v.y > 0.0) { total += v.y * exp(v.x - mx); }
  }
  let inv = select(0.0, 1.0 / total, total > 0.0);
  for (var d = lid; d < ${HD}u; d += 64u) {
    var acc = 0.0;
    for (var z = z0; z <= z1; z++) {
      let v = ml[base + z];
      if (v.y > 0.0) { acc += parts[(base + z) * ${HD}u + d] * (v.y * exp(v.x - mx)); }
    }
    out[t * ${qDim}u + h * ${HD}u + d] = acc * inv;
  }
}
`;
}
