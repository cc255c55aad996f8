/**
 * The fused decode path's matrix-vector kernel family: y = W x for one token, with what surrounds the
 * product in a transformer layer folded into the same dispatch.
 *
 *   prologue  'norm':   each workgroup computes rmsnorm(x) * normWeight into shared memory once
 *             'global': x is read from a (zero-padded) activation buffer
 *   epilogue  'store':    y[r] = (W x)[r] (+ bias[r])
 *             'residual': y[r] += (W x)[r]                     (o_proj, down_proj: the residual add)
 *             'qkv':      + bias, RoPE on q/k pairs, q -> qkv[0..qDim), k/v -> the KV cache at pos
 *             'swiglu':   act[i] = silu(gate[i]) * up[i]     (gate row i and up row ffn + i together)
 *
 * Work split (fusedLayout): a block is BR output rows; a workgroup walks blocks with a stride of the
 * grid (so the norm prologue runs once per workgroup, not once per row). In a block, invocation
 * (quad = lid / TPR, lane = lid % TPR) computes RPT rows (one x load serves them all) over the row's units
 * with stride TPR; the TPR partial sums of each row meet in shared memory (after a subgroupAdd where
 * the device has subgroups). For RoPE and SwiGLU the block's rows come in pairs (the two rows that
 * rotate together, or gate and up), so one invocation finishes a pair without a second dispatch.
 *
 * Weight encodings (one "unit" is what an invocation reads at once):
 *   f32/bf16/f16  W vec4<u32> per unit: 4 or 8 columns            (rows padded to whole units)
 *   q4            Q vec4<u32> per unit: 32 nibbles; SM u32 per group: f16 (scale, min)
 *                 W[r, c] = u * scale + min, so a unit adds scale * sum(u x) + min * sum(x)
 *   q8            Q vec4<u32> per unit: 16 int8 (rows zero-padded to whole units); SCALE f32 per row
 *                 W[r, c] = q * scale[r]: the hot loop sums q x, the row's finished sum is scaled once
 *   bitmap4       one tile of TILE columns per unit: MASK bits, OFFS first value index, VALS nibbles
 *                 (q + 8), SC f16 scale per (row, tile); W[r, c] = (q) * scale where the bit is set
 */
import { int8MatvecWgsl, int8WorkgroupBytes } from './fused-matvec-int8.js';
import type { KvStorage } from './kv.js';
import { COMMON, f32Literal, header, reductions, subgroupLet, subgroupParam, type DenseDtype, type KernelFeatures } from './prelude.js';

/** The kernel features plus WGSL's packed_4x8_integer_dot_product (dot4I8Packed; polyfilled without it). */
export type MatvecFeatures = KernelFeatures & { packedDot?: boolean };

export type FusedEncoding = DenseDtype | 'q4' | 'q8' | 'bitmap4';

export interface FusedMatvecShape {
  encoding: FusedEncoding;
  rows: number;
  cols: number;
  /** Units per stored row (vec4<u32> chunks, or tiles for bitmap4). */
  units: number;
  /** q4 group or bitmap4 tile (columns); 0 for dense and q8. */
  group: number;
  input: 'norm' | 'global';
  epilogue: 'store' | 'residual' | 'qkv' | 'swiglu';
  bias: boolean;
  /** For 'norm'. */
  eps: number;
  /** For 'qkv'. */
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rotaryDim: number;
  /**
   * For 'qkv': the KV cache's storage ('f32' default; f16 caches take whole words of RoPE pairs,
   * kernels/kv.ts), its context length, and the step word of the row table (slot word, position).
   */
  kvStorage?: KvStorage;
  kvCtx?: number;
  kvRows?: number;
  /** Workgroups in the grid (each walks blocks with this stride). */
  workgroups: number;
  /** Subgroup variant: units each lane loads per pass before any arithmetic (default 1, fastest measured). */
  unroll?: number;
  /** Subgroup variant: invocations a workgroup (default 256). */
  workerWorkgroup?: number;
  /** 'global' input: x is stored unit-major (see unitMajorIndex), as a producer wrote it for this matrix. */
  xUnitMajor?: boolean;
  /** int8 'norm' input of at most 256 units: read x once for the norm and the quantization (default false: measured slower). */
  normOneRead?: boolean;
  /**
   * int8 'norm' input: quantize x * normWeight by octets of lanes (coalesced, x read once, one barrier)
   * and apply rmsnorm's scale to the finished sums (fused-matvec-int8.ts, octetPrologue). Needs
   * subgroups of at least 8 lanes.
   */
  int8Octets?: boolean;
  /** Subgroup workers: row groups dealt across workgroups first (firstGroup). */
  interleaveWorkers?: boolean;
  /** 'swiglu': write act unit-major for a consumer with these units a row and vec4s a unit (0: in order). */
  actUnits?: number;
  actVecs?: number;
  /**
   * 'swiglu' of the subgroup kernels: act as f16 pairs (ACT: array<u32>), lane 0 of a worker writing
   * its two act values as one word; for an int8 down_proj (xF16), whose every workgroup then reads half
   * the bytes of x in its quantization prologue.
   */
  actF16?: boolean;
  /** int8 kernel with a global x stored as f16 (ACT of an actF16 producer): X is array<vec2<u32>>, 4 values a vec2. */
  xF16?: boolean;
  /** The device's maxComputeInvocationsPerWorkgroup: caps the lanes a row (default 512, as measured). */
  maxInvocations?: number;
  /**
   * q4 with subgroups: 'int8' quantizes x once per workgroup into int8 blocks of 32 (one scale each)
   * and sums nibble x int8 products with dot4I8Packed (fused-matvec-int8.ts); 'f32' (default) keeps x in f32.
   */
  activations?: 'f32' | 'int8';
  /** 'store' and 'residual': the output row (and bias row) of row 0, for a row block of a split matrix. */
  rowOffset?: number;
  /**
   * 'store' without bias, subgroup workers (lm_head): each workgroup also writes the largest of the
   * rows it computed, (value bits, row) with the lowest row on ties, to AMAX[workgroup], so the next
   * step's embedding picks the greedy token without an argmax dispatch (argmaxTracking below).
   */
  argmaxPartials?: boolean;
}

/** vec4s of x one unit multiplies (0 for bitmap4, which reads x by column). */
export function vecsPerUnit(encoding: FusedEncoding): number {
  return encoding === 'bitmap4' ? 0 : columnsPerUnit(encoding, 0) / 4;
}

/**
 * x in unit-major order: vec4 e of unit k at e * UNITS + k, so that lanes reading consecutive units
 * read consecutive vec4s (in order, lanes 8 vec4s apart hit the same shared-memory banks and a new
 * cache line each). Float i of x goes to float unitMajorIndex(i) (a WGSL expression).
 */
export function unitMajorIndex(i: string, units: number, vecs: number): string {
  return `(((${i}) / 4u) % ${vecs}u * ${units}u + ((${i}) / 4u) / ${vecs}u) * 4u + (${i}) % 4u`;
}

/**
 * How a matrix is split: TPR invocations share each row (the units a row holds, stride TPR), each
 * invocation computes 4 rows, WG invocations a workgroup, so a block is BR = RPT WG / TPR rows. TPR
 * grows with the row length (about two units per invocation and row, all loads issued before any
 * arithmetic); WG shrinks for short matrices so that enough workgroups exist.
 */
/** Rows each invocation computes (x loads shared by them; more rows cost registers and occupancy). */
export const RPT = 4;

export interface FusedLayout {
  tpr: number;
  wg: number;
  br: number;
}

function pow2Floor(n: number): number {
  let p = 1;
  while (p * 2 <= n) p *= 2;
  return p;
}

export function fusedLayout(s: Pick<FusedMatvecShape, 'rows' | 'units' | 'epilogue' | 'numHeads' | 'numKvHeads' | 'headDim' | 'maxInvocations'>): FusedLayout {
  const tpr = invocationsPerRow(s.units, s.maxInvocations);
  // quads (row groups of RPT rows) a workgroup: up to 256 invocations, fewer while blocks are scarce
  let quads = Math.max(1, pow2Floor(Math.floor(256 / tpr)));
  while (quads > 1 && quads * tpr > 64 && blocksFor(s, RPT * quads) < 512) quads /= 2;
  return { tpr, wg: quads * tpr, br: RPT * quads };
}

/**
 * Invocations sharing a row: the power of two about half the row's units (32 to 256), unless a
 * multiple of 32 up to 512 covers the units in 2 or 3 passes with clearly fewer idle lanes in the
 * last pass. The power of two alone left lanes idle: phi-4's down_proj (560 units) ran 3 passes of
 * 256 with 48 lanes busy in the third (42.6 us a layer on the H100); 2 passes of 288 keep 97% busy
 * (40.4 us), and llama-3.1-8b decodes 5% faster (448 units: 224 lanes). One pass a lane measured
 * slower (phi-4 o_proj at 160 lanes: 18.1 against 14.3 us at 64), so at least 2.
 */
export function invocationsPerRow(units: number, maxInvocations = 512): number {
  const pow2 = Math.min(256, maxInvocations, Math.max(32, pow2Floor(Math.max(1, units / 2))));
  const busy = (tpr: number) => units / (Math.ceil(units / tpr) * tpr);
  let best = { tpr: 0, busy: 0 };
  for (let tpr = 32; tpr <= Math.min(512, maxInvocations); tpr += 32) {
    const passes = Math.ceil(units / tpr);
    if (passes < 2 || passes > 3) continue;
    // the busiest; 2 passes on ties
    if (busy(tpr) > best.busy + 1e-9 || (busy(tpr) > best.busy - 1e-9 && passes === 2)) best = { tpr, busy: busy(tpr) };
  }
  return best.busy > busy(pow2) + 0.05 ? best.tpr : pow2;
}

export function blocksFor(s: Pick<FusedMatvecShape, 'rows' | 'epilogue' | 'numHeads' | 'numKvHeads' | 'headDim'>, br: number): number {
  if (s.epilogue === 'qkv') {
    const pairs = ((s.numHeads + s.numKvHeads) * s.headDim) / 2;
    return Math.ceil(pairs / (br / 2)) + Math.ceil((s.numKvHeads * s.headDim) / br);
  }
  if (s.epilogue === 'swiglu') return Math.ceil(s.rows / 2 / (br / 2));
  return Math.ceil(s.rows / br);
}

/** Columns covered by one unit. */
export function columnsPerUnit(encoding: FusedEncoding, group: number): number {
  switch (encoding) {
    case 'f32': return 4;
    case 'bf16': case 'f16': return 8;
    case 'q8': return 16;
    case 'q4': return 32;
    case 'bitmap4': return group;
  }
}

/** Number of row blocks the grid walks. */
export function fusedBlocks(s: Pick<FusedMatvecShape, 'rows' | 'units' | 'epilogue' | 'numHeads' | 'numKvHeads' | 'headDim' | 'maxInvocations'>): number {
  return blocksFor(s, fusedLayout(s).br);
}

/**
 * Workgroup memory the kernel declares, in bytes, and its invocations a workgroup: the normalised x
 * (and q4's unit sums) for the 'norm' prologue with its reduction scratch, the rows' partial sums
 * of the block variant. The decoder compares them with the device's limits and takes the separate
 * rmsnorm where the prologue does not fit.
 */
export function fusedMatvecNeeds(s: FusedMatvecShape, f: KernelFeatures): { workgroupBytes: number; invocations: number } {
  // argmax partials: a value and a row a subgroup (subgroups of at least 4 lanes)
  const argmax = (wg: number) => (s.argmaxPartials ? 2 * wg : 0);
  if (s.activations === 'int8') return { workgroupBytes: int8WorkgroupBytes(s.units) + argmax(256), invocations: 256 };
  const subgroupVariant = f.subgroups && (s.input === 'norm' || s.encoding === 'bitmap4');
  const { tpr, wg: blockWg, br } = fusedLayout(s);
  const wg = subgroupVariant ? (s.workerWorkgroup ?? 256) : blockWg;
  const norm = s.input === 'norm' ? s.units * columnsPerUnit(s.encoding, s.group) * 4 + (s.encoding === 'q4' ? s.units * 4 : 0) + 4 * 2 * (wg + wg / 4) : 0;
  return { workgroupBytes: norm + (subgroupVariant ? argmax(wg) : br * tpr * 4), invocations: wg };
}

/** Binding names in binding order; the op binds buffers by these names. */
export function fusedMatvecBindings(s: FusedMatvecShape): string[] {
  const weights =
    s.encoding === 'q4' ? ['Q', 'SM'] : s.encoding === 'q8' ? ['Q', 'SCALE'] : s.encoding === 'bitmap4' ? ['MASK', 'OFFS', 'VALS', 'SC'] : ['W'];
  const input = s.input === 'norm' ? ['X', 'NW'] : ['X'];
  const out =
    s.epilogue === 'qkv' ? ['QKV', 'KC', 'VC', 'COS', 'SIN', 'STEP'] : s.epilogue === 'swiglu' ? ['ACT'] : ['Y'];
  return [...weights, ...input, ...out, ...(s.bias ? ['BIAS'] : []), ...(s.argmaxPartials ? ['AMAX'] : [])];
}

export function f16Enable(s: FusedMatvecShape): string {
  return s.epilogue === 'qkv' && s.kvStorage === 'f16' ? 'enable f16;\n' : '';
}

function kvType(s: FusedMatvecShape): string {
  return s.kvStorage === 'f16' ? 'array<vec2<f16>>' : s.kvStorage === 'f16-packed' ? 'array<u32>' : 'array<f32>';
}

/** WGSL: the KV pair (a, b) as one f16 word of the cache. */
function kvWord(s: FusedMatvecShape, a: string, b: string): string {
  return s.kvStorage === 'f16' ? `vec2<f16>(vec2<f32>(${a}, ${b}))` : `pack2x16float(vec2<f32>(${a}, ${b}))`;
}

export function declarations(s: FusedMatvecShape): string {
  const types: Record<string, string> = {
    Q: 'array<vec4<u32>>', W: 'array<vec4<u32>>', SM: 'array<u32>', SCALE: 'array<f32>', MASK: 'array<u32>', OFFS: 'array<u32>', VALS: 'array<u32>', SC: 'array<u32>',
    X: s.input === 'norm' ? 'array<f32>' : s.xF16 ? 'array<vec2<u32>>' : 'array<vec4<f32>>', NW: 'array<f32>',
    QKV: 'array<f32>', KC: kvType(s), VC: kvType(s), COS: 'array<f32>', SIN: 'array<f32>', STEP: 'array<u32>',
    ACT: s.actF16 ? 'array<u32>' : 'array<f32>', Y: 'array<f32>', BIAS: 'array<f32>', AMAX: 'array<vec2<u32>>',
  };
  const written = new Set(['QKV', 'KC', 'VC', 'ACT', 'Y', 'AMAX']);
  return fusedMatvecBindings(s)
    .map((n, i) => `@group(0) @binding(${i}) var<storage, ${written.has(n) ? 'read_write' : 'read'}> ${n}: ${types[n]};`)
    .join('\n');
}

/** block_row(b, k): the matrix row of row k of block b, and whether it exists. */
export function blockRow(s: FusedMatvecShape, BLOCK_ROWS: number): string {
  if (s.epilogue === 'qkv') {
    const hd = s.headDim, half = s.rotaryDim / 2;
    const pairs = ((s.numHeads + s.numKvHeads) * hd) / 2;
    const ropeBlocks = Math.ceil(pairs / (BLOCK_ROWS / 2));
    return `
const HD = ${hd}u;
const HALF = ${half}u;
const ROT = ${s.rotaryDim}u;
const NPAIRS = ${pairs}u;
const ROPE_BLOCKS = ${ropeBlocks}u;
const Q_DIM = ${s.numHeads * hd}u;
const KV_DIM = ${s.numKvHeads * hd}u;
// q and k heads as pairs (i, i + rotaryDim/2) that rotate together (then pass-through pairs), v plain
fn pair_rows(p: u32) -> vec2<u32> {
  let h = p / (HD / 2u);
  let pp = p % (HD / 2u);
  if (pp < HALF) { return vec2<u32>(h * HD + pp, h * HD + pp + HALF); }
  let c = h * HD + ROT + 2u * (pp - HALF);
  return vec2<u32>(c, c + 1u);
}
fn block_row(b: u32, k: u32) -> vec2<u32> {
  if (b < ROPE_BLOCKS) {
    let p = b * ${BLOCK_ROWS / 2}u + k / 2u;
    if (p >= NPAIRS) { return vec2<u32>(0u, 0u); }
    return vec2<u32>(pair_rows(p)[k % 2u], 1u);
  }
  let r = Q_DIM + KV_DIM + (b - ROPE_BLOCKS) * ${BLOCK_ROWS}u + k;
  return select(vec2<u32>(0u, 0u), vec2<u32>(r, 1u), r < ROWS);
}`;
  }
  if (s.epilogue === 'swiglu') {
    return `
const FFN = ${s.rows / 2}u;
// gate row i and up row FFN + i side by side
fn block_row(b: u32, k: u32) -> vec2<u32> {
  let i = b * ${BLOCK_ROWS / 2}u + k / 2u;
  return select(vec2<u32>(0u, 0u), vec2<u32>(i + (k % 2u) * FFN, 1u), i < FFN);
}`;
  }
  return `
fn block_row(b: u32, k: u32) -> vec2<u32> {
  let r = b * ${BLOCK_ROWS}u + k;
  return select(vec2<u32>(0u, 0u), vec2<u32>(r, 1u), r < ROWS);
}`;
}

/**
 * The hot loop: this invocation's RPT rows (r0, r1, ...) over units k = lane + i * TPR. Dense, q4 and q8 are
 * unrolled with every weight load first (so they are all in flight at once), then the arithmetic;
 * units past the row's end read a clamped unit and add nothing. bitmap4 walks set bits instead.
 */
interface LoopStride {
  /** WGSL expressions: the first unit of this invocation and the stride between its units. */
  start: string;
  stride: string;
  /** Units each invocation takes per pass (unrolled), and whether every one exists. */
  iters: number;
  exact: boolean;
}

function hotLoop(s: FusedMatvecShape, tpr: number, rpt: number, loop: LoopStride = { start: 'lane', stride: `${tpr}u`, iters: Math.ceil(s.units / tpr), exact: s.units % tpr === 0 }): string {
  // vec4 e of unit k of x: from shared memory (unit-major) after the norm prologue, or global x
  const V = vecsPerUnit(s.encoding);
  const unitMajor = s.input === 'norm' || s.xUnitMajor === true;
  const xAt = (k: string, e: number) => {
    const i = V === 1 ? k : unitMajor ? `${e}u * UNITS + ${k}` : `${V}u * ${k} + ${e}u`;
    return s.input === 'norm' ? `xs[${i}]` : `X[${i}]`;
  };
  // q4 reads x pre-scaled (XL/XH): the norm prologue stores it so, a global x is scaled here
  const q4x = (load: string, e: number) => (s.input === 'norm' ? load : `${load} * ${e % 2 === 0 ? 'XL' : 'XH'}`);
  // q8 reads x pre-scaled by Q8X the same way
  const q8x = (load: string) => (s.input === 'norm' ? load : `${load} * Q8X`);
  // sum of the unscaled x of a unit (for the min term)
  const q4sum = (p: string) => `(dot(${p}0, UXL) + dot(${p}1, UXH)) + (dot(${p}2, UXL) + dot(${p}3, UXH)) + (dot(${p}4, UXL) + dot(${p}5, UXH)) + (dot(${p}6, UXL) + dot(${p}7, UXH))`;
  const rows = Array.from({ length: rpt }, (_, j) => j);
  const iters = loop.iters;
  if (s.encoding === 'bitmap4') {
    const X1 = s.input === 'norm' ? 'xs[c >> 2u][c & 3u]' : 'X[c >> 2u][c & 3u]';
    return `var rows = array<u32, ${rpt}>(${rows.map((j) => `r${j}`).join(', ')});
for (var k = ${loop.start}; k < UNITS; k += ${loop.stride}) {
  for (var j = 0u; j < ${rpt}u; j++) {
    let ti = rows[j] * UNITS + k;
    var i = OFFS[ti];
    var d = 0.0;
    for (var wi = 0u; wi < ${s.group / 32}u; wi++) {
      var m = MASK[ti * ${s.group / 32}u + wi];
      let c0 = k * ${s.group}u + wi * 32u;
      // only the stored values of this mask word (streaming the values through one register with a
      // word load every 8 values measured no faster on the H100: 37.8 against 37.3 ms/token, phi-4)
      loop {
        if (m == 0u) { break; }
        let c = c0 + countTrailingZeros(m);
        m &= m - 1u;
        let q = bitcast<f32>(((VALS[i >> 3u] >> ((i & 7u) * 4u)) & 15u) | 0x4B000000u) - 8388616.0;
        d += q * ${X1};
        i += 1u;
      }
    }
    acc[j] += d * unpack2x16float(SC[ti >> 1u])[ti & 1u];
  }
}`;
  }
  if (iters > 8) {
    // long rows at the widest split (wide dense): a plain loop
    const body =
      s.encoding === 'f32'
        ? `let xv = ${xAt('k', 0)};\n${rows.map((j) => `acc[${j}] += dot(bitcast<vec4<f32>>(W[r${j} * UNITS + k]), xv);`).join('\n')}`
        : s.encoding === 'q4'
          ? `${[0, 1, 2, 3, 4, 5, 6, 7].map((i) => `let x${i} = ${q4x(xAt('k', i), i)};`).join('\n')}
let sx = ${s.input === 'norm' ? 'xsum[k]' : q4sum('x')};
${rows.map((j) => `{ let w = Q[r${j} * UNITS + k]; let sm = unpack2x16float(SM[r${j} * GROUPS + (k * 32u) / GROUP]); acc[${j}] += sm.x * q4dot(w, x0, x1, x2, x3, x4, x5, x6, x7) + sm.y * sx; }`).join('\n')}`
          : s.encoding === 'q8'
            ? `${[0, 1, 2, 3].map((i) => `let x${i} = ${q8x(xAt('k', i))};`).join('\n')}
${rows.map((j) => `acc[${j}] += q8dot(Q[r${j} * UNITS + k], x0, x1, x2, x3);`).join('\n')}`
            : `let x0 = ${xAt('k', 0)};\nlet x1 = ${xAt('k', 1)};\n${rows.map((j) => `{ let w = W[r${j} * UNITS + k]; acc[${j}] += dot(chunk_lo(w), x0) + dot(chunk_hi(w), x1); }`).join('\n')}`;
    return `for (var k = ${loop.start}; k < UNITS; k += ${loop.stride}) {\n  ${body.split('\n').join('\n  ')}\n}`;
  }
  const exact = loop.exact;
  const out: string[] = [];
  for (let i = 0; i < iters; i++) {
    const k = `${loop.start} + ${i}u * ${loop.stride}`;
    out.push(exact ? `let k${i} = ${k};` : `let k${i} = min(${k}, UNITS - 1u);\nlet on${i} = ${k} < UNITS;`);
  }
  // loads
  for (let i = 0; i < iters; i++) {
    for (const j of rows) {
      if (s.encoding === 'q4') out.push(`let w${i}_${j} = Q[r${j} * UNITS + k${i}];\nlet sm${i}_${j} = SM[r${j} * GROUPS + (k${i} * 32u) / GROUP];`);
      else out.push(`let w${i}_${j} = ${s.encoding === 'q8' ? 'Q' : 'W'}[r${j} * UNITS + k${i}];`);
    }
  }
  for (let i = 0; i < iters; i++) {
    const on = (v: string) => (exact ? v : `select(0.0, ${v}, on${i})`);
    if (s.encoding === 'q4') {
      out.push([0, 1, 2, 3, 4, 5, 6, 7].map((e) => `let x${i}_${e} = ${q4x(xAt(`k${i}`, e), e)};`).join('\n'));
      out.push(`let sx${i} = ${s.input === 'norm' ? `xsum[k${i}]` : q4sum(`x${i}_`)};`);
      for (const j of rows) {
        out.push(`{ let sm = unpack2x16float(sm${i}_${j}); acc[${j}] += ${on(`sm.x * q4dot(w${i}_${j}, x${i}_0, x${i}_1, x${i}_2, x${i}_3, x${i}_4, x${i}_5, x${i}_6, x${i}_7) + sm.y * sx${i}`)}; }`);
      }
    } else if (s.encoding === 'q8') {
      out.push([0, 1, 2, 3].map((e) => `let x${i}_${e} = ${q8x(xAt(`k${i}`, e))};`).join('\n'));
      for (const j of rows) out.push(`acc[${j}] += ${on(`q8dot(w${i}_${j}, x${i}_0, x${i}_1, x${i}_2, x${i}_3)`)};`);
    } else if (s.encoding === 'f32') {
      out.push(`let x${i} = ${xAt(`k${i}`, 0)};`);
      for (const j of rows) out.push(`acc[${j}] += ${on(`dot(bitcast<vec4<f32>>(w${i}_${j}), x${i})`)};`);
    } else {
      out.push(`let xa${i} = ${xAt(`k${i}`, 0)};\nlet xb${i} = ${xAt(`k${i}`, 1)};`);
      for (const j of rows) out.push(`acc[${j}] += ${on(`dot(chunk_lo(w${i}_${j}), xa${i}) + dot(chunk_hi(w${i}_${j}), xb${i})`)};`);
    }
  }
  return out.join('\n');
}

/** q8: the row scale times each finished row sum (s0: row 2t of the block, s1: row 2t + 1), before any epilogue. */
function rowScale(s: FusedMatvecShape): string {
  if (s.encoding !== 'q8') return '';
  return `s0 *= SCALE[block_row(b, 2u * t).x];
s1 *= SCALE[block_row(b, 2u * t + 1u).x];`;
}

export function epilogue(s: FusedMatvecShape, BLOCK_ROWS: number): string {
  const bias = (row: string) => (s.bias ? ` + BIAS[${row}]` : '');
  if (s.epilogue === 'qkv') {
    const f16 = s.kvStorage === 'f16' || s.kvStorage === 'f16-packed';
    const rows = s.kvRows ?? 9;
    const kWrite = f16
      ? `let ke = krow + rr.x - Q_DIM;
    KC[(ke - ke % HD) / 2u + pp] = ${kvWord(s, 'a', 'c')};`
      : 'KC[krow + rr.x - Q_DIM] = a; KC[krow + rr.y - Q_DIM] = c;';
    const vWrite = f16
      ? `if (r0.y == 1u) { VC[(krow + r0.x - Q_DIM - KV_DIM) / 2u] = ${kvWord(s, `s0${bias('r0.x')}`, `s1${bias('r1.x')}`)}; }`
      : `if (r0.y == 1u) { VC[krow + r0.x - Q_DIM - KV_DIM] = s0${bias('r0.x')}; }
  if (r1.y == 1u) { VC[krow + r1.x - Q_DIM - KV_DIM] = s1${bias('r1.x')}; }`;
    // the row table's row 0: slot word (slot in the low 16 bits) and position
    return `let pos = STEP[${rows + 1}u];
let krow = ((STEP[${rows}u] & 0xffffu) * ${s.kvCtx ?? 1}u + pos) * KV_DIM;
if (b < ROPE_BLOCKS) {
  let p = b * ${BLOCK_ROWS / 2}u + t;
  if (p < NPAIRS) {
    let rr = pair_rows(p);
    var a = s0${bias('rr.x')};
    var c = s1${bias('rr.y')};
    let pp = p % (HD / 2u);
    if (pp < HALF) {
      let cs = COS[pos * HALF + pp];
      let sn = SIN[pos * HALF + pp];
      let a2 = a * cs - c * sn;
      c = c * cs + a * sn;
      a = a2;
    }
    if (rr.x < Q_DIM) { QKV[rr.x] = a; QKV[rr.y] = c; }
    else { ${kWrite} }
  }
} else {
  let r0 = block_row(b, 2u * t);
  let r1 = block_row(b, 2u * t + 1u);
  ${vWrite}
}`;
  }
  if (s.epilogue === 'swiglu' && s.actF16) {
    // lane 0 writes both act values of the worker's row group (gate/up pairs u0,u1 and u2,u3) as one
    // f16 word: act i and i + 1 (i even) are neighbours in the unit-major order too
    if (BLOCK_ROWS !== 4) throw new Error('actF16: row groups of two gate/up pairs only');
    return `let i = b * 2u;
if (t == 0u && i < FFN) {
  let a1 = select(0.0, u2 / (1.0 + exp(-u2)) * u3, i + 1u < FFN);
  ACT[(${s.actUnits && s.actVecs ? unitMajorIndex('i', s.actUnits, s.actVecs) : 'i'}) / 2u] = pack2x16float(vec2<f32>(u0 / (1.0 + exp(-u0)) * u1, a1));
}`;
  }
  if (s.epilogue === 'swiglu') {
    return `let i = b * ${BLOCK_ROWS / 2}u + t;
if (i < FFN) { ACT[${s.actUnits && s.actVecs ? unitMajorIndex('i', s.actUnits, s.actVecs) : 'i'}] = s0 / (1.0 + exp(-s0)) * s1; }`;
  }
  // a row block of a matrix split across bindings writes its rows from rowOffset on
  const off = s.rowOffset ? ` + ${s.rowOffset}u` : '';
  const write = (r: string, v: string) => (s.epilogue === 'residual' ? `Y[${r}${off}] = Y[${r}${off}] + ${v};` : `Y[${r}${off}] = ${v}${bias(r + off)};`);
  return `let r0 = block_row(b, 2u * t);
let r1 = block_row(b, 2u * t + 1u);
if (r0.y == 1u) { ${write('r0.x', 's0')} }
if (r1.y == 1u) { ${write('r1.x', 's1')} }`;
}

function normPrologue(s: FusedMatvecShape, wg: number, xs4: number): string {
  // vec4 i of x in shared memory: unit-major (bitmap4 reads by column: in order)
  const V = vecsPerUnit(s.encoding);
  const xsIndex = (i: string) => (V <= 1 ? i : `(${i} % ${V}u) * UNITS + ${i} / ${V}u`);
  return (
    s.input === 'norm'
      ? `// rmsnorm(x) * w into shared memory (zero past COLS, the padding of the last unit): raw x and the
  // sum of squares in one pass of independent vec4 reads, then scaled in place
  var ss = 0.0;
  for (var it = 0u; it < ${Math.ceil(xs4 / wg)}u; it++) {
    let i = lid + it * ${wg}u;
    if (i < ${xs4}u) {
      var v = vec4<f32>(0.0);
      if (4u * i + 3u < COLS) { v = vec4<f32>(X[4u * i], X[4u * i + 1u], X[4u * i + 2u], X[4u * i + 3u]); }
      else { for (var e = 0u; e < 4u; e++) { if (4u * i + e < COLS) { v[e] = X[4u * i + e]; } } }
      xs[${xsIndex('i')}] = v;
      ss += dot(v, v);
    }
  }
  let inv = inverseSqrt(wg_sum(ss, lid, sg_size) / f32(COLS) + ${f32Literal(s.eps)});
  for (var it = 0u; it < ${Math.ceil(xs4 / wg)}u; it++) {
    let i = lid + it * ${wg}u;
    if (i < ${xs4}u) {
      var nw = vec4<f32>(0.0);
      for (var e = 0u; e < 4u; e++) { if (4u * i + e < COLS) { nw[e] = NW[4u * i + e]; } }
      xs[${xsIndex('i')}] = xs[${xsIndex('i')}] * inv * nw${s.encoding === 'q4' ? ' * select(XH, XL, i % 2u == 0u)' : s.encoding === 'q8' ? ' * Q8X' : ''};
    }
  }
  workgroupBarrier();${s.encoding === 'q4' ? `
  // q4: each unit's sum of (unscaled) x, for the min term, once here instead of in every pass
  for (var k = lid; k < UNITS; k += ${wg}u) {
    var t = 0.0;
    for (var e = 0u; e < 8u; e += 2u) { t += dot(xs[e * UNITS + k], UXL) + dot(xs[(e + 1u) * UNITS + k], UXH); }
    xsum[k] = t;
  }
  workgroupBarrier();` : ''}`
      : ''
  );
}

const Q4_HELPERS = /* wgsl */ `
// nibbles 0..3 / 4..7 of a word as exact floats: 2^23 + u has u in its low mantissa bits
fn nib_lo(w: u32) -> vec4<f32> {
  return bitcast<vec4<f32>>(((vec4<u32>(w) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u)) | vec4<u32>(0x4B000000u)) - vec4<f32>(8388608.0);
}
fn nib_hi(w: u32) -> vec4<f32> {
  return bitcast<vec4<f32>>(((vec4<u32>(w) >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(15u)) | vec4<u32>(0x4B000000u)) - vec4<f32>(8388608.0);
}
// q4: the 8 nibbles of word w times x. Each nibble is masked in place and ORed under the exponent of
// 2^23, giving 2^23 + n * 2^s exactly (s = 4j for nibbles 0..4; nibbles 5..7 after one shift by 12);
// x arrives pre-scaled by 2^-s (XL, XH below), so one LOP3 and one FADD per nibble replace
// shift-mask-or (the int pipe bounded the old form).
const XL = vec4<f32>(1.0, 0.0625, 0.00390625, 0.000244140625);
const XH = vec4<f32>(0.0000152587890625, 0.00390625, 0.000244140625, 0.0000152587890625);
const UXL = vec4<f32>(1.0, 16.0, 256.0, 4096.0);
const UXH = vec4<f32>(65536.0, 256.0, 4096.0, 65536.0);
fn q4w(w: u32, xl: vec4<f32>, xh: vec4<f32>) -> f32 {
  let w2 = w >> 12u;
  let lo = bitcast<vec4<f32>>((vec4<u32>(w) & vec4<u32>(0xFu, 0xF0u, 0xF00u, 0xF000u)) | vec4<u32>(0x4B000000u)) - vec4<f32>(8388608.0);
  let hi = bitcast<vec4<f32>>((vec4<u32>(w, w2, w2, w2) & vec4<u32>(0xF0000u, 0xF00u, 0xF000u, 0xF0000u)) | vec4<u32>(0x4B000000u)) - vec4<f32>(8388608.0);
  return dot(lo, xl) + dot(hi, xh);
}
fn q4dot(w: vec4<u32>, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>, x4: vec4<f32>, x5: vec4<f32>, x6: vec4<f32>, x7: vec4<f32>) -> f32 {
  return (q4w(w.x, x0, x1) + q4w(w.y, x2, x3)) + (q4w(w.z, x4, x5) + q4w(w.w, x6, x7));
}

`;

const Q8_HELPERS = /* wgsl */ `
// q8: the 4 int8 of word w times x. Bytes 0 and 1 are masked in place (bytes 2 and 3 after one shift
// by 16) and XORed with 0x4B000000 | 0x80 << s, one LOP3 giving the float 2^23 + (q + 128) 2^s exactly
// (s = 0 or 8: the XOR of the byte's top bit turns two's complement into offset binary); one FADD of
// -(2^23 + 128 2^s) leaves q 2^s, and x arrives pre-scaled by 2^-s (Q8X). Per byte: a LOP3, an FADD and
// the FMA of the dot, plus a quarter of a shift; no integer-to-float conversion.
const Q8X = vec4<f32>(1.0, 0.00390625, 1.0, 0.00390625);
fn q8w(w: u32, x: vec4<f32>) -> f32 {
  let w2 = w >> 16u;
  let q = bitcast<vec4<f32>>((vec4<u32>(w, w, w2, w2) & vec4<u32>(0xFFu, 0xFF00u, 0xFFu, 0xFF00u)) ^ vec4<u32>(0x4B000080u, 0x4B008000u, 0x4B000080u, 0x4B008000u))
    - vec4<f32>(8388736.0, 8421376.0, 8388736.0, 8421376.0);
  return dot(q, x);
}
fn q8dot(w: vec4<u32>, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>) -> f32 {
  return (q8w(w.x, x0) + q8w(w.y, x1)) + (q8w(w.z, x2) + q8w(w.w, x3));
}

`;

export function fusedMatvecWgsl(s: FusedMatvecShape, f: MatvecFeatures): string {
  if (s.activations === 'int8') return int8MatvecWgsl(s, f);
  // measured on the H100: subgroup workers win where x is in shared memory and for bitmap4, blocks
  // for dense/q4 where x is global (q8, not measured, follows dense and q4)
  if (f.subgroups && (s.input === 'norm' || s.encoding === 'bitmap4')) return subgroupMatvecWgsl(s, f);
  const { tpr, wg, br } = fusedLayout(s);
  const cpu = columnsPerUnit(s.encoding, s.group);
  const xs4 = (s.units * cpu) / 4;
  const blocks = fusedBlocks(s);
  const prologue = normPrologue(s, wg, xs4);
  // the TPR partial sums of each row meet in red[row][slot]
  // subgroupAdd gives a row's partial where the subgroups tile the row's TPR lanes exactly
  const reduce = f.subgroups
    ? `let sg_whole = sg_size <= TPR && TPR % sg_size == 0u;
    for (var j = 0u; j < ${RPT}u; j++) {
      let sg = subgroupAdd(acc[j]);
      if (sg_whole) { if (lane % sg_size == 0u) { red[(quad * ${RPT}u + j) * TPR + lane / sg_size] = sg; } }
      else { red[(quad * ${RPT}u + j) * TPR + lane] = acc[j]; }
    }
    let parts = select(TPR, TPR / sg_size, sg_whole);`
    : `for (var j = 0u; j < ${RPT}u; j++) { red[(quad * ${RPT}u + j) * TPR + lane] = acc[j]; }
    let parts = TPR;`;
  return `${header(f)}${f16Enable(s)}${COMMON}${dense16Helpers(s)}
${s.input === 'norm' ? reductions(wg, f) : ''}
const ROWS = ${s.rows}u;
const COLS = ${s.cols}u;
const UNITS = ${s.units}u;
const NBLOCKS = ${blocks}u;
const TPR = ${tpr}u;
${s.encoding === 'q4' ? `const GROUP = ${s.group}u;\nconst GROUPS = ${Math.ceil(s.cols / s.group)}u;` : ''}
${declarations(s)}
${s.input === 'norm' ? `var<workgroup> xs: array<vec4<f32>, ${xs4}>;` : ''}${s.input === 'norm' && s.encoding === 'q4' ? `\nvar<workgroup> xsum: array<f32, ${s.units}>;` : ''}
var<workgroup> red: array<f32, ${br * tpr}>;
${blockRow(s, br)}
${Q4_HELPERS}${Q8_HELPERS}
@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32${subgroupParam(f)}) {
  ${subgroupLet(f)}
  ${prologue}
  let quad = lid / TPR;
  let lane = lid % TPR;
  for (var b = wid.x; b < NBLOCKS; b += ${s.workgroups}u) {
    ${Array.from({ length: RPT }, (_, j) => `let r${j} = block_row(b, quad * ${RPT}u + ${j}u).x;`).join('\n    ')}
    var acc = array<f32, ${RPT}>(${Array.from({ length: RPT }, () => '0.0').join(', ')});
    // hot loop
    {
      ${hotLoop(s, tpr, RPT).split('\n').join('\n      ')}
    }
    ${reduce}
    workgroupBarrier();
    if (lid < ${br / 2}u) {
      let t = lid;
      var s0 = 0.0;
      var s1 = 0.0;
      for (var i = 0u; i < parts; i++) { s0 += red[(2u * t) * TPR + i]; s1 += red[(2u * t + 1u) * TPR + i]; }
      ${rowScale(s).split('\n').join('\n      ')}
      ${epilogue(s, br).split('\n').join('\n      ')}
    }
    workgroupBarrier();
  }
}
`;
}

/**
 * With subgroups: every subgroup is an independent worker (no workgroup barrier after the prologue).
 * Worker w takes row groups of RPT rows (BR = RPT for the row maps) w, w + workers, ...; its lanes
 * split the units with stride sg_size (up to 4 units a lane unrolled per pass), subgroupAdd gives
 * each row's sum, and lanes 0 .. SG_RPT/2 - 1 finish the group's row pairs.
 */
/** For 16-bit dense weights: unpack a u32 word into two floats and a vec4 of words into eight. */
function dense16Helpers(s: FusedMatvecShape): string {
  if (s.encoding !== 'bf16' && s.encoding !== 'f16') return '';
  return `fn unpack_pair(w: u32) -> vec2<f32> { return ${s.encoding}_pair(w); }
fn chunk_lo(w: vec4<u32>) -> vec4<f32> { return vec4<f32>(unpack_pair(w.x), unpack_pair(w.y)); }
fn chunk_hi(w: vec4<u32>) -> vec4<f32> { return vec4<f32>(unpack_pair(w.z), unpack_pair(w.w)); }`;
}

/**
 * The first row group of a subgroup worker (WGSL). Blocked: workgroup w's workers take groups
 * w * per .. w * per + per - 1 of each round, so a matrix of fewer groups than workers (o_proj,
 * down_proj, a round's tail) runs on the first workgroups only (llama-3.2-1b's o_proj: 512 groups, 64
 * of 264 workgroups, on at most 64 of the H200's 132 SMs). Interleaved (`interleaveWorkers`): worker
 * i of workgroup w takes group i * workgroups + w, spreading those groups over every workgroup.
 */
export function firstGroup(s: FusedMatvecShape): string {
  return s.interleaveWorkers ? `(lid / sg_size) * ${s.workgroups}u + wid.x` : 'wid.x * per + lid / sg_size';
}

/**
 * `argmaxPartials` (WGSL pieces of the subgroup kernels): each lane that finishes row pairs keeps the
 * largest of its rows (its rows come in increasing order, so '>' keeps the lowest on ties), then the
 * subgroup's largest (subgroupMax, lowest row among equals) and the workgroup's go to AMAX[workgroup]
 * as (value bits, row). A workgroup without rows writes row 0xffffffff, which the reduction skips.
 * The greedy token is then the largest of the partials (fusedEmbeddingWgsl reduces them on the GPU,
 * FusedDecoder.readArgmax on the CPU), the same rule as decodeArgmaxWgsl.
 */
export function argmaxTracking(s: FusedMatvecShape, wg: number): { decl: string; init: string; track: string; finish: string } {
  if (!s.argmaxPartials) return { decl: '', init: '', track: '', finish: '' };
  if (s.epilogue !== 'store' || s.bias || s.rowOffset) throw new Error('argmax partials: a whole store matrix without bias only');
  return {
    decl: `
// the largest output of each subgroup worker (value, row), for AMAX
var<workgroup> AM_V: array<f32, ${wg / 4}>;
var<workgroup> AM_I: array<u32, ${wg / 4}>;`,
    // -3.4e38 for none yet (WGSL has no -inf literal; a product's logits are finite)
    init: `var am_v = -3.4e38;
  var am_i = 0xffffffffu;`,
    track: `
let a0 = block_row(b, 2u * t);
let a1 = block_row(b, 2u * t + 1u);
if (a0.y == 1u && (am_i == 0xffffffffu || s0 > am_v)) { am_v = s0; am_i = a0.x; }
if (a1.y == 1u && (am_i == 0xffffffffu || s1 > am_v)) { am_v = s1; am_i = a1.x; }`,
    finish: `
  // argmax partials: the subgroup's largest output (lowest row among equals), then the workgroup's
  let am_m = subgroupMax(am_v);
  let am_c = subgroupMin(select(0xffffffffu, am_i, am_i != 0xffffffffu && am_v == am_m));
  if (lane == 0u) { AM_V[lid / sg_size] = am_m; AM_I[lid / sg_size] = am_c; }
  workgroupBarrier();
  if (lid == 0u) {
    var bv = -3.4e38;
    var bi = 0xffffffffu;
    for (var i = 0u; i < ${wg}u / sg_size; i++) {
      let v = AM_V[i];
      let r = AM_I[i];
      if (r != 0xffffffffu && (bi == 0xffffffffu || v > bv || (v == bv && r < bi))) { bv = v; bi = r; }
    }
    AMAX[wid.x] = vec2<u32>(bitcast<u32>(bv), bi);
  }`,
  };
}

/** Rows each subgroup worker computes (x loaded once for all); 8 measured slower on the H100 (phi-4 q4 8.49 against 7.59 ms/token). */
export const SG_RPT = 4;

function subgroupMatvecWgsl(s: FusedMatvecShape, f: KernelFeatures): string {
  const wg = s.workerWorkgroup ?? 256;
  const cpu = columnsPerUnit(s.encoding, s.group);
  const xs4 = (s.units * cpu) / 4;
  const groups = blocksFor(s, SG_RPT);
  // units a lane takes per pass (bitmap4 walks one tile at a time)
  const pass = s.encoding === 'bitmap4' ? 1 : Math.max(1, Math.min(s.unroll ?? 1, Math.ceil(s.units / 32)));
  const sums = Array.from({ length: SG_RPT }, (_, j) => `let u${j} = subgroupAdd(acc[${j}]);`).join('\n    ');
  const am = argmaxTracking(s, wg);
  return `${header(f)}${f16Enable(s)}diagnostic(off, subgroup_uniformity);
${COMMON}${dense16Helpers(s)}
${s.input === 'norm' ? reductions(wg, f) : ''}
const ROWS = ${s.rows}u;
const COLS = ${s.cols}u;
const UNITS = ${s.units}u;
const NGROUPS = ${groups}u;
${s.encoding === 'q4' ? `const GROUP = ${s.group}u;\nconst GROUPS = ${Math.ceil(s.cols / s.group)}u;` : ''}
${declarations(s)}
${s.input === 'norm' ? `var<workgroup> xs: array<vec4<f32>, ${xs4}>;` : ''}${s.input === 'norm' && s.encoding === 'q4' ? `\nvar<workgroup> xsum: array<f32, ${s.units}>;` : ''}
${blockRow(s, SG_RPT)}${am.decl}
${Q4_HELPERS}${Q8_HELPERS}
@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(subgroup_size) sg_size: u32, @builtin(subgroup_invocation_id) lane: u32) {
  ${normPrologue(s, wg, xs4)}
  let per = ${wg}u / sg_size;
  let workers = ${s.workgroups}u * per;
  ${am.init}
  for (var b = ${firstGroup(s)}; b < NGROUPS; b += workers) {
    ${Array.from({ length: SG_RPT }, (_, j) => `let r${j} = block_row(b, ${j}u).x;`).join('\n    ')}
    var acc = array<f32, ${SG_RPT}>(${Array.from({ length: SG_RPT }, () => '0.0').join(', ')});
    // hot loop
    for (var kb = 0u; kb < UNITS; kb += ${pass}u * sg_size) {
      ${hotLoop(s, 32, SG_RPT, { start: 'kb + lane', stride: 'sg_size', iters: pass, exact: false })
        .replace(/for \(var k = kb \+ lane; k < UNITS; k \+= sg_size\)/, 'for (var k = kb + lane; k < min(UNITS, kb + sg_size); k += sg_size)')
        .split('\n').join('\n      ')}
    }
    ${sums}
    if (lane < ${SG_RPT / 2}u) {
      let t = lane;
      var s0 = u0;
      var s1 = u1;
      ${Array.from({ length: SG_RPT / 2 - 1 }, (_, i) => `if (t == ${i + 1}u) { s0 = u${2 * i + 2}; s1 = u${2 * i + 3}; }`).join('\n      ')}
      ${rowScale(s).split('\n').join('\n      ')}
      ${(epilogue(s, SG_RPT) + am.track).split('\n').join('\n      ')}
    }
  }${am.finish}
}
`;
}

/**
 * Embedding row for the step's token into x: the id comes from the step (prompt tokens, STEP[8]) or
 * from the token the previous step's sampling wrote (STEP[7] == 1), so decoding needs no CPU round trip.
 */
/** Workgroups of the embedding kernel for a hidden size. */
export function embeddingWorkgroups(hidden: number): number {
  return Math.ceil(hidden / 256);
}

export function fusedEmbeddingWgsl(dtype: DenseDtype, hidden: number, rowChunks: number, rowStart = 0, rows = 0xffffffff, argmaxPartials = 0): string {
  const wordsPerRow = rowChunks * 4;
  const read = dtype === 'f32' ? 'bitcast<f32>(table[base + i])' : `${dtype}_pair(table[base + i / 2u])[i & 1u]`;
  // with argmax partials (lm_head's, FusedMatvecShape.argmaxPartials) STEP[7] == 2 takes their largest:
  // each workgroup reduces them (a few hundred pairs from L2) instead of an argmax dispatch between the steps
  const partials = argmaxPartials > 0;
  return `${COMMON}
@group(0) @binding(0) var<storage, read> table: array<u32>;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> step: array<u32>;
@group(0) @binding(3) var<storage, read> token: array<u32>;${partials ? `
@group(0) @binding(4) var<storage, read> amax: array<vec2<u32>>;
var<workgroup> best_v: array<f32, 256>;
var<workgroup> best_i: array<u32, 256>;

// the largest of lm_head's partials (value, row), lowest row on ties; rows 0xffffffff are empty
fn better(v: f32, r: u32, bv: f32, bi: u32) -> bool {
  return r != 0xffffffffu && (bi == 0xffffffffu || v > bv || (v == bv && r < bi));
}
fn partials_argmax(lid: u32) -> u32 {
  var bv = 0.0;
  var bi = 0xffffffffu;
  for (var p = lid; p < ${argmaxPartials}u; p += 256u) {
    let a = amax[p];
    if (better(bitcast<f32>(a.x), a.y, bv, bi)) { bv = bitcast<f32>(a.x); bi = a.y; }
  }
  best_v[lid] = bv;
  best_i[lid] = bi;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (lid < s && better(best_v[lid + s], best_i[lid + s], best_v[lid], best_i[lid])) {
      best_v[lid] = best_v[lid + s];
      best_i[lid] = best_i[lid + s];
    }
    workgroupBarrier();
  }
  return workgroupUniformLoad(&best_i[0]);
}` : ''}

// one element an invocation, ceil(hidden / 256) workgroups (embeddingWorkgroups): a single load's
// latency instead of a loop of hidden / 256 dependent ones (10 µs on phi-4's 5120 in one workgroup)
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  ${partials ? `let best = partials_argmax(lid);
  let id = select(select(step[8], token[0], step[7] == 1u), best, step[7] == 2u);` : 'let id = select(step[8], token[0], step[7] == 1u);'}
  // a table split across bindings: each row block's dispatch writes x only for its own rows
  if (id < ${rowStart}u || id - ${rowStart}u >= ${rows}u) { return; }
  let base = (id - ${rowStart}u) * ${wordsPerRow}u;
  let i = wid.x * 256u + lid;
  if (i < ${hidden}u) { x[i] = ${read}; }
}
`;
}
