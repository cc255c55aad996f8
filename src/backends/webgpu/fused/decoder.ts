/**
 * GPU-resident decoding, one token per step, in two plans over the same weights:
 *   fused   (6 dispatches a layer)  qkv[norm, RoPE, KV append] | attention part | combine
 *                                   | o[+residual] | gate_up[norm, SwiGLU] | down[+residual]
 *   unfused (10 dispatches a layer) rmsnorm | qkv | rope_kv | attention part | combine | o[+residual]
 *                                   | rmsnorm | gate_up | swiglu | down[+residual]
 * (attention is one dispatch instead of two with `attention: 'single'`, or for contexts of at most 64;
 * the default split attention is decodeAttentionChunksWgsl + decodeAttentionMergeWgsl).
 * plus an embedding dispatch (the id read from the step or from the previous step's sampled token)
 * and final norm, lm_head and argmax/sample. Each step is one small writeBuffer (position, sampling
 * values), one compute pass, one submit. `generate` never waits for a token before encoding the next:
 * ids come back through a ring of readback buffers `lag` steps behind, and what was computed past a
 * stop is discarded.
 */
import { InvalidInputError } from '../../../errors.js';
import type { ModelConfig } from '../../../model/config.js';
import { ropeTables } from '../../cpu/ops.js';
import type { Gpu } from '../device.js';
import { encodeDispatches, timeDispatches, STEP_HEADER_WORDS, StepWord, type Dispatch } from '../dispatch.js';
import { DeviceLostError } from '../errors.js';
import {
  ATTENTION_WG, attentionFits, attentionSplits, splitAttentionFits, attentionWorkgroupBytes, decodeArgmaxWgsl, decodeAttentionPartGqaWgsl, decodeAttentionPartWgsl, decodeAttentionWgsl,
  decodeCombineWgsl, gqaPartWorkgroupBytes, chunkedAttentionConfig, chunkedAttentionPartFloats, chunkedAttentionSplits, decodeAttentionChunksWgsl,
  decodeAttentionMergeWgsl, type ChunkedAttentionShape,
  type DecodeAttentionShape, type SplitAttentionShape,
} from '../kernels/fused-attention.js';
import { blocksFor, embeddingWorkgroups, fusedBlocks, SG_RPT, fusedEmbeddingWgsl, fusedMatvecBindings, fusedMatvecNeeds, fusedMatvecWgsl, vecsPerUnit, type FusedMatvecShape } from '../kernels/fused-matvec.js';
import { int8Applies, int8Unroll } from '../kernels/fused-matvec-int8.js';
import { kvDefines, rowsAt, type KvLayout } from '../kernels/kv.js';
import { KvCache, type KvCacheDtype, type KvSlot } from '../kv-cache.js';
import { attentionOp, rmsnormOp, ropeKvOp, sampleOp, swigluOp, tokenMaskOp } from '../ops.js';
import type { TokenFilter } from '../../../runtime/token-filter.js';
import type { FusedMatrix, FusedModelWeights } from './weights.js';

export type DecodePath = 'fused' | 'unfused';

export interface FusedDecoderOptions {
  path: DecodePath;
  /** Positions the KV cache holds. */
  contextLength: number;
  /**
   * The sequence's slot in an engine's KV cache (kv-cache.ts), which the engine's forward pass also
   * fills; without it the decoder makes a cache of one slot of its own, of `kvCache` (default 'f16').
   */
  kv?: { cache: KvCache; slot: KvSlot };
  kvCache?: KvCacheDtype;
  /** f16 cache read and written as u32 words even where the device has shader-f16 (tests). */
  kvPacked?: boolean;
  /** Workgroups per matvec dispatch (each walks blocks of rows); default 1024. */
  workgroups?: number;
  /** Workgroups of the matvecs that normalise x first (each does so once); default 264, 528 for lm_head-sized matrices. */
  normWorkgroups?: number;
  /** Units each lane loads per pass in the subgroup matvec (default 1; the int8 kernel's default: int8Unroll). */
  unroll?: number;
  /** Invocations a workgroup of the subgroup matvec (the norm kernels; default 256). */
  workerWorkgroup?: number;
  /** Invocations of the decode attention workgroup (default 256; 1024 where its scores fit). */
  attentionWorkgroup?: number;
  /**
   * Decode attention: 'split' cuts the keys into chunks of at most 64, one workgroup per KV head and
   * chunk for all the query heads that share it, every K and V load of a chunk issued first
   * (decodeAttentionChunksWgsl), and merges the chunks in a second dispatch; 'split-gqa' the earlier
   * grouped kernel (a lane a key row, at most 32 chunks); 'split-heads' a workgroup per query head and
   * chunk; 'single' one workgroup per head. Default 'split' (measured in docs/PERFORMANCE.md).
   */
  attention?: DecodeAttentionKind;
  /**
   * x of the q4 matrix-vector products: 'int8' (default) quantizes it per workgroup into int8 blocks of
   * 32 and multiplies with dot4I8Packed (kernels/fused-matvec-int8.ts; needs subgroups, else f32),
   * 'f32' keeps it in f32 (the CPU's numerics: what the token-for-token tests run).
   */
  matvecActivations?: 'int8' | 'f32';
  /**
   * The int8 kernels' norm prologue: 'octets' quantizes x * normWeight by octets of lanes (coalesced,
   * x read once, one barrier) and applies rmsnorm's scale to the finished sums; 'units' one invocation
   * a unit after a pass for the sum of squares. Default 'octets' where subgroups have at least 8 lanes
   * (the kernels with a global x keep one invocation a unit: octets measured slower there).
   */
  int8Prologue?: 'octets' | 'units';
  /** Subgroup workers: row groups dealt across workgroups first (default true; kernels/fused-matvec.ts firstGroup). */
  interleaveWorkers?: boolean;
  /** Chunks of keys of the split attention (default: chunks of at most 64 keys; 'split-gqa' and 'split-heads': about 64 keys each, at most 32). */
  attentionSplits?: number;
  /**
   * The greedy token: 'fused' (default) has lm_head's workgroups write the largest of their rows
   * (FusedMatvecShape.argmaxPartials) and the next step's embedding reduce those partials, one
   * dispatch boundary fewer a token (the CPU reduces the same partials for the readback); 'dispatch'
   * runs decodeArgmaxWgsl over the logits after lm_head. Fused needs the fused path, subgroups and
   * lm_head in one dispatch; elsewhere, and for steps under a grammar's mask or sampled, the argmax
   * dispatch runs. Measured on the H100: 6-10 µs a token less (docs/PERFORMANCE.md, "Issue 14 on
   * 2026-12-05 evening").
   */
  argmax?: 'fused' | 'dispatch';
  /**
   * Grid of the int8 kernels with a global x (o_proj, down_proj): 'default' the norm kernels' (264
   * workgroups, each quantizing all of x); 'one-round' as many workgroups as give every subgroup
   * worker at most one row group (fewer copies of the quantization prologue where the rows are few,
   * phi-4's down_proj 160 instead of 264). Not measured to be faster: off by default.
   */
  globalGrid?: 'default' | 'one-round';
  /**
   * SwiGLU's output between gate/up and down_proj where both run the int8 kernels: 'f32' (default) or
   * 'f16' (pairs in u32 words), which halves what each of down_proj's workgroups reads to quantize it
   * (its int8 blocks are coarser than f16). Not measured to be faster: off by default.
   */
  act?: 'f32' | 'f16';
}

export type DecodeAttentionKind = 'split' | 'split-gqa' | 'split-heads' | 'single';

export interface GpuSamplingValues {
  temperature: number;
  topK: number;
  topP: number;
  minP: number;
}

export interface GenerateOptions {
  maxTokens: number;
  /** Called with each token in order; return true to stop after it (EOS, stop strings). */
  onToken?: (id: number, index: number) => boolean;
  /** Steps the CPU may run ahead of the ids it has read (1: wait for every token). Default 8. */
  lag?: number;
  sampling?: GpuSamplingValues;
  /** Uniform draws for temperature sampling, one per step. */
  random?: () => number;
  /**
   * A grammar's token filter (runtime/token-filter.ts): each step uploads its bitmask and masks the
   * logits before argmax/sample, and `filter.accept(id)` runs before onToken. Steps run with a lag
   * of 1; a token the filter forces is fed without a choice or a wait.
   */
  filter?: TokenFilter | null;
}

const FLAG_TOKEN_FROM_GPU = 7; // step word: 1 = the embedding reads the previously sampled id
const ROWS_AT = rowsAt(STEP_HEADER_WORDS, 1); // the row table: one row (slot word, position)

interface Plan {
  embedding: Dispatch[];
  layers: Dispatch[][];
  head: Dispatch[];
  argmax: Dispatch;
  sample: Dispatch;
}

/**
 * The token a readback slot holds: the id itself (16 bytes), or the largest of lm_head's argmax
 * partials, (value bits, row) pairs, lowest row on ties and rows 0xffffffff skipped (the rule of
 * decodeArgmaxWgsl and of the embedding's reduction).
 */
export function readChoice(words: Uint32Array, partials: boolean): number {
  if (!partials) return words[0]!;
  const values = new Float32Array(words.buffer, words.byteOffset, words.length);
  let best = -Infinity, row = 0xffffffff;
  for (let p = 0; p + 1 < words.length; p += 2) {
    const v = values[p]!, r = words[p + 1]!;
    if (r !== 0xffffffff && (row === 0xffffffff || v > best || (v === best && r < row))) { best = v; row = r; }
  }
  return row;
}

function padFloats(n: number): number {
  return Math.ceil(n / 256) * 256;
}

export class FusedDecoder {
  /** Tokens whose K and V are in the cache. */
  length = 0;
  /** The KV cache slot this decoder appends to (the engine's forward pass prefills it too, see advance). */
  readonly kv: { cache: KvCache; slot: KvSlot };
  /** The cache when the decoder made its own. */
  private readonly ownCache: KvCache | null = null;
  private readonly plan: Plan;
  private readonly buffers: GPUBuffer[] = [];
  private readonly step: GPUBuffer;
  private readonly token: GPUBuffer;
  private readonly logits: GPUBuffer;
  private readonly logitsReadback: GPUBuffer;
  private readonly ring: GPUBuffer[] = [];
  /** lm_head's argmax partials (argmax: 'fused'): a (value bits, row) pair a workgroup. */
  private readonly partials: { buffer: GPUBuffer; count: number } | null = null;
  /** Where the last step that chose a token left it: the token buffer, or the partials (argmax: 'fused'). */
  private lastChoice: 'token' | 'partials' = 'token';
  /** The grammar's bitmask, ceil(vocab / 32) u32, and its masking dispatch: made on the first constrained step. */
  private mask: { buffer: GPUBuffer; dispatch: Dispatch } | null = null;
  private readonly stepWords = new Uint32Array(ROWS_AT + 2); // header, the token id, the row table's one row
  private readonly stepFloats = new Float32Array(this.stepWords.buffer);
  /** Bytes of every buffer this decoder allocated (KV cache, activations, readbacks). */
  readonly allocatedBytes: number;
  readonly workgroups: number;

  constructor(
    readonly gpu: Gpu,
    readonly config: ModelConfig,
    readonly weights: FusedModelWeights,
    readonly options: FusedDecoderOptions,
  ) {
    const c = config, ctx = options.contextLength;
    this.workgroups = options.workgroups ?? 1024;
    const qDim = c.numHeads * c.headDim, kvDim = c.numKvHeads * c.headDim, ffn = c.intermediateSize;
    const S = GPUBufferUsage.STORAGE;
    const f32 = (label: string, n: number, extra = 0) => this.alloc(label, padFloats(n) * 4, S | extra);
    this.step = this.alloc('step', (STEP_HEADER_WORDS + 8) * 4, S | GPUBufferUsage.COPY_DST);
    this.token = this.alloc('token', 16, S | GPUBufferUsage.COPY_SRC);
    const x = f32('x', c.hiddenSize), xn = f32('xn', c.hiddenSize);
    const qkv = f32('qkv', qDim + 2 * kvDim), att = f32('att', qDim);
    const gateUp = f32('gate_up', 2 * ffn), act = f32('act', ffn);
    this.logits = f32('logits', c.vocabSize, GPUBufferUsage.COPY_SRC);
    this.logitsReadback = this.alloc('logits_readback', c.vocabSize * 4, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST);
    const { cos, sin } = ropeTables(c, ctx);
    const cosB = this.alloc('rope_cos', cos.byteLength, S, cos), sinB = this.alloc('rope_sin', sin.byteLength, S, sin);
    if (options.kv) this.kv = options.kv;
    else {
      this.ownCache = new KvCache(gpu, { numLayers: c.numLayers, kvDim, contextLength: ctx, dtype: options.kvCache ?? 'f16', packed: options.kvPacked });
      this.kv = { cache: this.ownCache, slot: this.ownCache.acquire() };
    }
    if (this.kv.cache.shape.contextLength !== ctx) throw new Error(`fused decoder: a KV cache of ${this.kv.cache.shape.contextLength} positions for a context of ${ctx}`);
    const k = this.kv.slot.group.k, v = this.kv.slot.group.v;
    const kvLayout = this.kvLayout;
    const gpu_ = gpu, w = weights, eps = c.rmsNormEps;
    const heads = { numHeads: c.numHeads, numKvHeads: c.numKvHeads, headDim: c.headDim, rotaryDim: c.rotaryDim };
    const kvShape = { kvStorage: kvLayout.storage, kvCtx: ctx, kvRows: ROWS_AT };
    const mv = (m: FusedMatrix, input: 'norm' | 'global', epilogue: FusedMatvecShape['epilogue'], io: Record<string, GPUBuffer>, bias: GPUBuffer | null = null, layout: Partial<FusedMatvecShape> = {}) =>
      this.matvec(m, { input, epilogue, bias: bias !== null, eps, ...heads, ...layout }, { ...io, ...(bias ? { BIAS: bias } : {}) });
    const fused = options.path === 'fused';
    const split = this.splitShape();
    const chunked = this.chunkedShape();
    const chunks = chunked
      ? { shape: chunked, part: f32('attention_parts', chunkedAttentionPartFloats(chunked)) }
      : split ? { shape: split, part: f32('attention_parts', c.numHeads * split.splits * (c.headDim + 2)) } : null;
    const norm = (weight: GPUBuffer) => rmsnormOp(gpu_, { hidden: c.hiddenSize, eps, mode: 'all' }, 1, x, weight, xn, this.step);
    const layers = w.layers.map((L, l): Dispatch[] => {
      // attention writes its output unit-major for o_proj where its kernel can (coalesced x reads there)
      const oVecs = vecsPerUnit(L.o.encoding);
      const { dispatches: attention, unitMajor } = this.attention(qkv, k[l]!, v[l]!, att, chunks, oVecs > 1 ? { outUnits: L.o.units, outVecs: oVecs } : {});
      const o = mv(L.o, 'global', 'residual', { X: att, Y: x }, null, { xUnitMajor: unitMajor });
      const qkvUnfused = () => [
        norm(L.attnNorm),
        ...mv(L.qkv, 'global', 'store', { X: xn, Y: qkv }, L.qkvBias),
        ropeKvOp(gpu_, heads, kvLayout, qkv, cosB, sinB, k[l]!, v[l]!, this.step),
      ];
      if (fused) {
        // the SwiGLU epilogue writes act unit-major for down_proj (coalesced x reads there)
        const vecs = vecsPerUnit(L.down.encoding);
        const actF16 = options.act === 'f16' && vecs > 1 && this.int8(L.gateUp) && this.int8(L.down);
        const actLayout = vecs > 1 ? { actUnits: L.down.units, actVecs: vecs, actF16 } : {};
        // where the device's limits refuse a fused kernel (WebGPU's defaults: 8 storage buffers a
        // stage, which norm+QKV+RoPE+KV append exceeds; 16 KiB of workgroup memory, which a long row's
        // normalised x exceeds), its parts run as the unfused plan's dispatches
        const qkvFused = this.fits(L.qkv, 'norm', 'qkv', L.qkvBias !== null);
        const gateUpFused = this.fits(L.gateUp, 'norm', 'swiglu', false);
        return [
          ...(qkvFused
            ? mv(L.qkv, 'norm', 'qkv', { X: x, NW: L.attnNorm, QKV: qkv, KC: k[l]!, VC: v[l]!, COS: cosB, SIN: sinB, STEP: this.step }, L.qkvBias, kvShape)
            : qkvUnfused()),
          ...attention,
          ...o,
          ...(gateUpFused
            ? mv(L.gateUp, 'norm', 'swiglu', { X: x, NW: L.mlpNorm, ACT: act }, null, actLayout)
            : [norm(L.mlpNorm), ...mv(L.gateUp, 'global', 'swiglu', { X: xn, ACT: act }, null, actLayout)]),
          ...mv(L.down, 'global', 'residual', { X: act, Y: x }, null, { xUnitMajor: vecs > 1, xF16: actF16 }),
        ];
      }
      const down = mv(L.down, 'global', 'residual', { X: act, Y: x });
      return [
        ...qkvUnfused(),
        ...attention,
        ...o,
        norm(L.mlpNorm),
        ...mv(L.gateUp, 'global', 'store', { X: xn, Y: gateUp }),
        swigluOp(gpu_, ffn, 1, gateUp, act, this.step),
        ...down,
      ];
    });
    const headFused = fused && this.fits(w.lmHead, 'norm', 'store', false);
    const partialsShape = headFused && (options.argmax ?? 'fused') === 'fused' ? this.argmaxPartialsShape() : null;
    if (partialsShape) this.partials = { buffer: this.alloc('argmax_partials', partialsShape.workgroups * 8, S | GPUBufferUsage.COPY_SRC), count: partialsShape.workgroups };
    const head = headFused
      ? mv(w.lmHead, 'norm', 'store', { X: x, NW: w.finalNorm, Y: this.logits, ...(this.partials ? { AMAX: this.partials.buffer } : {}) }, null, this.partials ? { argmaxPartials: true } : {})
      : [norm(w.finalNorm), ...mv(w.lmHead, 'global', 'store', { X: xn, Y: this.logits })];
    this.allocatedBytes = this.buffers.reduce((a, b) => a + b.size, 0) + (this.ownCache ? this.ownCache.bytesFor(this.ownCache.capacity) : 0);
    this.plan = {
      embedding: this.embedding(x),
      layers,
      head,
      argmax: this.argmax(),
      sample: sampleOp(gpu_, c.vocabSize, this.logits, this.token, this.step),
    };
  }

  private alloc(label: string, bytes: number, usage: GPUBufferUsageFlags, data?: Float32Array): GPUBuffer {
    const b = this.gpu.createBuffer(label, bytes, usage, data !== undefined);
    if (data) {
      new Float32Array(b.getMappedRange(), 0, data.length).set(data);
      b.unmap();
    }
    this.buffers.push(b);
    return b;
  }

  private matvecShape(m: FusedMatrix, s: Omit<FusedMatvecShape, 'encoding' | 'rows' | 'cols' | 'units' | 'group' | 'workgroups'>): FusedMatvecShape {
    const limits = this.gpu.device.limits;
    // int8 x where it applies (q4, subgroups, shared memory for the quantized x; 256 invocations)
    const int8 = (this.options.matvecActivations ?? 'int8') === 'int8' && limits.maxComputeInvocationsPerWorkgroup >= 256 &&
      int8Applies(m.encoding, m.units, this.gpu.subgroups, limits.maxComputeWorkgroupStorageSize);
    const shape: FusedMatvecShape = {
      ...s, encoding: m.encoding, rows: m.rows, cols: m.cols, units: m.units, group: m.group, workgroups: 0, unroll: this.options.unroll ?? (int8 ? int8Unroll(m.units) : 1),
      workerWorkgroup: Math.min(this.options.workerWorkgroup ?? 256, limits.maxComputeInvocationsPerWorkgroup),
      maxInvocations: Math.min(limits.maxComputeInvocationsPerWorkgroup, limits.maxComputeWorkgroupSizeX),
      activations: int8 ? 'int8' : 'f32',
      int8Octets: int8 && s.input === 'norm' && (this.options.int8Prologue ?? 'octets') === 'octets' && this.gpu.features.subgroupMinSize >= 8,
      interleaveWorkers: this.options.interleaveWorkers ?? true,
    };
    // measured (bench/kernel-lab.ts, H100): 264 workgroups for layer matrices, 528 for a vocabulary-sized
    // lm_head (phi-4 158 against 179 us, llama-3.2-1b 91 against 121 us); the int8 kernels quantize x
    // once a workgroup whatever their input, so they take the norm kernels' grid
    const normDefault = m.rows >= 65536 ? 528 : 264;
    const cap = s.input === 'norm' || int8 ? Math.min(this.workgroups, this.options.normWorkgroups ?? normDefault) : this.workgroups;
    shape.workgroups = Math.min(cap, fusedBlocks(shape));
    if (int8 && s.input === 'global' && this.options.globalGrid === 'one-round') {
      // workers a workgroup at the largest subgroup size; a row group each
      const workers = Math.max(1, Math.floor(256 / Math.max(1, this.gpu.features.subgroupMaxSize)));
      shape.workgroups = Math.min(shape.workgroups, Math.ceil(blocksFor(shape, SG_RPT) / workers));
    }
    return shape;
  }

  /**
   * lm_head's shape with argmax partials, or null where they do not apply: they need the subgroup
   * kernels (subgroups of at least 4 lanes), lm_head in one dispatch, and the device's limits.
   */
  private argmaxPartialsShape(): FusedMatvecShape | null {
    const c = this.config, m = this.weights.lmHead;
    if (!this.gpu.subgroups || this.gpu.features.subgroupMinSize < 4 || m.rowBlocks) return null;
    const shape = this.matvecShape(m, { input: 'norm', epilogue: 'store', bias: false, eps: c.rmsNormEps, numHeads: c.numHeads, numKvHeads: c.numKvHeads, headDim: c.headDim, rotaryDim: c.rotaryDim, argmaxPartials: true });
    return this.overLimits(shape) === null ? shape : null;
  }

  /** What the fused matvec of this shape asks beyond the device's limits, or null when it fits. */
  private overLimits(shape: FusedMatvecShape): string | null {
    const limits = this.gpu.device.limits;
    const needs = fusedMatvecNeeds(shape, { subgroups: this.gpu.subgroups });
    const storage = fusedMatvecBindings(shape).length;
    if (storage > limits.maxStorageBuffersPerShaderStage) return `${storage} storage buffers a stage (the device allows ${limits.maxStorageBuffersPerShaderStage})`;
    if (needs.invocations > limits.maxComputeInvocationsPerWorkgroup) return `${needs.invocations} invocations a workgroup (the device allows ${limits.maxComputeInvocationsPerWorkgroup})`;
    if (needs.workgroupBytes > limits.maxComputeWorkgroupStorageSize) return `${needs.workgroupBytes} bytes of workgroup memory (the device allows ${limits.maxComputeWorkgroupStorageSize})`;
    return null;
  }

  /** Whether a matrix runs the int8 kernel (kernels/fused-matvec-int8.ts). */
  private int8(m: FusedMatrix): boolean {
    const c = this.config;
    return this.matvecShape(m, { input: 'global', epilogue: 'store', bias: false, eps: c.rmsNormEps, numHeads: c.numHeads, numKvHeads: c.numKvHeads, headDim: c.headDim, rotaryDim: c.rotaryDim }).activations === 'int8';
  }

  /** Whether the fused matvec with this prologue and epilogue fits the device's limits. */
  private fits(m: FusedMatrix, input: 'norm' | 'global', epilogue: FusedMatvecShape['epilogue'], bias: boolean): boolean {
    const c = this.config;
    const shape = this.matvecShape(m, { input, epilogue, bias, eps: c.rmsNormEps, numHeads: c.numHeads, numKvHeads: c.numKvHeads, headDim: c.headDim, rotaryDim: c.rotaryDim });
    return this.overLimits(shape) === null;
  }

  /** One dispatch, or one a row block where the matrix is split across bindings ('store' and 'residual' only). */
  private matvec(m: FusedMatrix, s: Omit<FusedMatvecShape, 'encoding' | 'rows' | 'cols' | 'units' | 'group' | 'workgroups'>, io: Record<string, GPUBuffer>): Dispatch[] {
    if (!m.rowBlocks) return [this.matvecBlock(m, s, io)];
    if (s.epilogue !== 'store' && s.epilogue !== 'residual') {
      throw new Error(`a ${m.rows} x ${m.cols} ${m.encoding} matrix with the ${s.epilogue} epilogue is split across storage bindings (${m.bytes} bytes, over this device's limit of ${this.gpu.maxBindingBytes}); the fused path splits only the embedding, lm_head, o_proj and down_proj`);
    }
    return m.rowBlocks.map((b) => this.matvecBlock(b.matrix, { ...s, rowOffset: b.rowStart }, io));
  }

  private matvecBlock(m: FusedMatrix, s: Omit<FusedMatvecShape, 'encoding' | 'rows' | 'cols' | 'units' | 'group' | 'workgroups'>, io: Record<string, GPUBuffer>): Dispatch {
    const shape = this.matvecShape(m, s);
    const over = this.overLimits(shape);
    if (over) throw new Error(`the fused ${s.epilogue} matrix-vector kernel (${m.rows} x ${m.cols}, ${m.encoding}) needs ${over}`);
    const f = { subgroups: this.gpu.subgroups, packedDot: this.gpu.features.packed4x8IntegerDotProduct };
    const { encoding: _e, ...defines } = shape;
    const pipeline = this.gpu.pipeline('fused_matvec', { ...defines, encoding: m.encoding, ...f }, () => fusedMatvecWgsl(shape, f));
    const all = { ...m.buffers, ...io };
    const buffers = fusedMatvecBindings(shape).map((n) => {
      const b = all[n];
      if (!b) throw new Error(`fused matvec: no buffer for binding ${n}`);
      return b;
    });
    const n = shape.workgroups;
    return { label: `fused_matvec(${s.epilogue})`, pipeline, bindGroup: this.gpu.bindGroup('fused_matvec', pipeline, buffers), workgroups: () => [n, 1, 1] };
  }

  private attentionShape(): DecodeAttentionShape {
    const c = this.config;
    return { numHeads: c.numHeads, numKvHeads: c.numKvHeads, headDim: c.headDim, slidingWindow: c.slidingWindow, contextLength: this.options.contextLength, rotaryDim: c.rotaryDim };
  }

  /** How the kernels see the cache: the one row of the step's table, in the slot's buffer group. */
  get kvLayout(): KvLayout {
    return { storage: this.kv.cache.storage, contextLength: this.options.contextLength, rowsAt: ROWS_AT, kvBuffer: -1 };
  }

  /** The chunked attention's shape (the default), or null where it does not apply or another kind is asked for. */
  private chunkedShape(): ChunkedAttentionShape | null {
    const s = this.attentionShape();
    if ((this.options.attention ?? 'split') !== 'split') return null;
    const config = chunkedAttentionConfig(s, this.gpu.device.limits);
    if (!config) return null;
    const splits = chunkedAttentionSplits(s, config, this.options.attentionSplits);
    return splits > 1 ? { ...s, splits, config } : null;
  }

  /** The earlier split attention's shape, or null where the single-workgroup kernel runs. */
  private splitShape(): SplitAttentionShape | null {
    const s = this.attentionShape();
    const limits = this.gpu.device.limits;
    if ((this.options.attention ?? 'split') === 'single' || !splitAttentionFits(s) || s.headDim > limits.maxComputeInvocationsPerWorkgroup) return null;
    const split = { ...s, splits: Math.max(1, Math.floor(this.options.attentionSplits ?? attentionSplits(s))) };
    return split.splits > 1 ? split : null;
  }

  /**
   * Decode attention: split into chunks of keys plus a combine where that applies, else all keys of
   * a head in one workgroup's shared memory where they fit, else the engine's kernel.
   */
  private attention(
    qkv: GPUBuffer, k: GPUBuffer, v: GPUBuffer, att: GPUBuffer, chunks: { shape: SplitAttentionShape | ChunkedAttentionShape; part: GPUBuffer } | null,
    layout: { outUnits?: number; outVecs?: number },
  ): { dispatches: Dispatch[]; unitMajor: boolean } {
    const c = this.config;
    const s = { ...this.attentionShape(), ...layout };
    const unitMajor = (layout.outVecs ?? 0) > 1;
    const f = { subgroups: this.gpu.subgroups };
    const kv = this.kvLayout;
    if (chunks && 'config' in chunks.shape) {
      const chunked = { ...chunks.shape, ...layout }, part = chunks.part;
      const defines = { ...chunked, ...chunked.config, config: 0, slidingWindow: chunked.slidingWindow ?? 0, ...kvDefines(kv) };
      const p1 = this.gpu.pipeline('decode_attention_chunks', defines, () => decodeAttentionChunksWgsl(chunked, kv));
      const lanes = Math.min(256, this.gpu.device.limits.maxComputeInvocationsPerWorkgroup, this.gpu.device.limits.maxComputeWorkgroupSizeX);
      const p2 = this.gpu.pipeline('decode_attention_merge', { ...defines, lanes }, () => decodeAttentionMergeWgsl(chunked, lanes));
      const groups = c.numKvHeads * chunked.splits;
      return { unitMajor, dispatches: [
        { label: 'attention_part', pipeline: p1, bindGroup: this.gpu.bindGroup('decode_attention_chunks', p1, [qkv, k, v, part, this.step]), workgroups: () => [groups, 1, 1] },
        { label: 'attention_combine', pipeline: p2, bindGroup: this.gpu.bindGroup('decode_attention_merge', p2, [part, att]), workgroups: () => [c.numHeads, 1, 1] },
      ] };
    }
    if (chunks) {
      const split = { ...(chunks.shape as SplitAttentionShape), ...layout }, part = chunks.part;
      const defines = { ...split, slidingWindow: split.slidingWindow ?? 0, ...kvDefines(kv) };
      const grouped = (this.options.attention ?? 'split') !== 'split-heads' && c.numHeads > c.numKvHeads && gqaPartWorkgroupBytes(split) <= this.gpu.device.limits.maxComputeWorkgroupStorageSize;
      const p1 = grouped
        ? this.gpu.pipeline('decode_attention_part_gqa', defines, () => decodeAttentionPartGqaWgsl(split, kv))
        : this.gpu.pipeline('decode_attention_part', { ...defines, ...f }, () => decodeAttentionPartWgsl(split, kv, f));
      const p2 = this.gpu.pipeline('decode_attention_combine', defines, () => decodeCombineWgsl(split));
      const partGroups = (grouped ? c.numKvHeads : c.numHeads) * split.splits;
      return { unitMajor, dispatches: [
        { label: 'attention_part', pipeline: p1, bindGroup: this.gpu.bindGroup('decode_attention_part', p1, [qkv, k, v, part, this.step]), workgroups: () => [partGroups, 1, 1] },
        { label: 'attention_combine', pipeline: p2, bindGroup: this.gpu.bindGroup('decode_attention_combine', p2, [part, att]), workgroups: () => [c.numHeads, 1, 1] },
      ] };
    }
    const limits = this.gpu.device.limits;
    const wg = [this.options.attentionWorkgroup ?? ATTENTION_WG, 256].find(
      (n) => n <= limits.maxComputeInvocationsPerWorkgroup && attentionFits(s, n) && attentionWorkgroupBytes(s, n) <= limits.maxComputeWorkgroupStorageSize,
    );
    if (!wg) return { unitMajor: false, dispatches: [attentionOp(this.gpu, { numHeads: s.numHeads, numKvHeads: s.numKvHeads, headDim: s.headDim, slidingWindow: s.slidingWindow, rotaryDim: s.rotaryDim ?? c.rotaryDim }, kv, qkv, k, v, att, this.step)] };
    const pipeline = this.gpu.pipeline("decode_attention", { ...s, rotaryDim: s.rotaryDim ?? c.rotaryDim, slidingWindow: s.slidingWindow ?? 0, wg, ...f, ...kvDefines(kv) }, () => decodeAttentionWgsl(s, kv, f, wg));
    return { unitMajor, dispatches: [{ label: 'attention', pipeline, bindGroup: this.gpu.bindGroup('decode_attention', pipeline, [qkv, k, v, att, this.step]), workgroups: () => [c.numHeads, 1, 1] }] };
  }

  private argmax(): Dispatch {
    const vocab = this.config.vocabSize;
    // 1024 invocations where the device grants them (WebGPU's default is 256)
    const limits = this.gpu.device.limits;
    let wg = 1024;
    while (wg > 32 && (wg > limits.maxComputeInvocationsPerWorkgroup || wg > limits.maxComputeWorkgroupSizeX || 8 * wg > limits.maxComputeWorkgroupStorageSize)) wg /= 2;
    const pipeline = this.gpu.pipeline('decode_argmax', { vocab, wg }, () => decodeArgmaxWgsl(vocab, wg));
    return { label: 'argmax', pipeline, bindGroup: this.gpu.bindGroup('decode_argmax', pipeline, [this.logits, this.token]), workgroups: () => [1, 1, 1] };
  }

  /** The embedding lookup: one dispatch, or one a row block of a table split across bindings (each writes x only for its rows). */
  private embedding(x: GPUBuffer): Dispatch[] {
    const e = this.weights.embed;
    const dtype = e.encoding;
    if (dtype !== 'f32' && dtype !== 'bf16' && dtype !== 'f16') throw new Error('the embedding table must be dense');
    const blocks = e.rowBlocks ?? [{ rowStart: 0, matrix: e }];
    return blocks.map(({ rowStart, matrix }) => {
      const rows = e.rowBlocks ? matrix.rows : 0xffffffff;
      const partials = this.partials?.count ?? 0;
      const pipeline = this.gpu.pipeline('fused_embedding', { dtype, hidden: e.cols, units: e.units, rowStart, rows, partials }, () => fusedEmbeddingWgsl(dtype, e.cols, e.units, rowStart, rows, partials));
      const buffers = [matrix.buffers.W!, x, this.step, this.token, ...(this.partials ? [this.partials.buffer] : [])];
      return { label: 'embedding', pipeline, bindGroup: this.gpu.bindGroup('embedding', pipeline, buffers), workgroups: () => [embeddingWorkgroups(e.cols), 1, 1] as [number, number, number] };
    });
  }

  /** Dispatches one decode step encodes (embedding, layers, head, token choice). */
  get dispatchesPerToken(): number {
    return this.plan.embedding.length + this.plan.layers.reduce((a, l) => a + l.length, 0) + this.plan.head.length + (this.partials ? 0 : 1);
  }

  get dispatchesPerLayer(): number {
    return this.plan.layers[0]?.length ?? 0;
  }

  reset(): void {
    this.length = 0;
  }

  /** The cache's next n positions were filled by another pass (the engine's chunked prefill into `kv`). */
  advance(n: number): void {
    if (!Number.isInteger(n) || n < 0 || this.length + n > this.options.contextLength) {
      throw new InvalidInputError(`cannot advance a cache of ${this.length} tokens by ${n} (context ${this.options.contextLength})`);
    }
    this.length += n;
  }

  /**
   * Microseconds each dispatch of one step takes (layer 0's, the head's, argmax's, and with `sample`
   * the sampling kernel's): each is encoded
   * `reps` times in one pass, timed to the GPU's finish, median of 3. The cache is left at `length`;
   * activations are overwritten (call reset and prefill again before decoding).
   */
  async profile(reps = 200, options: { sample?: boolean } = {}): Promise<{ label: string; microseconds: number }[]> {
    this.stepWords[StepWord.T] = 1;
    this.stepWords[StepWord.pos0] = Math.max(0, this.length - 1);
    this.stepWords[FLAG_TOKEN_FROM_GPU] = 0;
    this.stepWords[ROWS_AT] = this.kv.slot.word;
    this.stepWords[ROWS_AT + 1] = Math.max(0, this.length - 1);
    this.gpu.device.queue.writeBuffer(this.step, 0, this.stepWords);
    // with `sample`, the sampling kernel too (it reads the sampling values of the last step written)
    // (with argmax partials the embedding reduces them and no argmax dispatch runs a greedy step)
    const list = [...this.plan.embedding, ...this.plan.layers[0]!, ...this.plan.head, ...(this.partials ? [] : [this.plan.argmax]), ...(options.sample ? [this.plan.sample] : [])];
    return timeDispatches(this.gpu.device, list, 1, reps, () => this.settle(this.gpu.device.queue.onSubmittedWorkDone()));
  }

  /**
   * Encodes and submits one step at position `length`: the token is `id`, or the one the previous
   * step chose when id is null. `output` adds lm_head and a token choice (copied to `readback`).
   */
  private submitStep(id: number | null, output: 'none' | 'logits' | 'argmax' | 'sample', readback: GPUBuffer | null, random = 0, sampling?: GpuSamplingValues, bitmask?: Int32Array): void {
    if (this.length >= this.options.contextLength) throw new InvalidInputError(`the context of ${this.options.contextLength} positions is full`);
    const w = this.stepWords;
    w[StepWord.T] = 1;
    w[StepWord.pos0] = this.length;
    w[FLAG_TOKEN_FROM_GPU] = id !== null ? 0 : this.lastChoice === 'partials' ? 2 : 1;
    w[STEP_HEADER_WORDS] = id ?? 0;
    w[ROWS_AT] = this.kv.slot.word;
    w[ROWS_AT + 1] = this.length;
    this.stepFloats[StepWord.random] = random;
    if (sampling) {
      w[StepWord.topK] = sampling.topK;
      this.stepFloats[StepWord.temperature] = sampling.temperature;
      this.stepFloats[StepWord.topP] = sampling.topP;
      this.stepFloats[StepWord.minP] = sampling.minP;
    }
    const device = this.gpu.device;
    device.queue.writeBuffer(this.step, 0, w);
    if (bitmask) {
      this.mask ??= (() => {
        const buffer = this.alloc('token_mask', Math.ceil(this.config.vocabSize / 32) * 4, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST);
        return { buffer, dispatch: tokenMaskOp(this.gpu, this.config.vocabSize, this.logits, buffer) };
      })();
      device.queue.writeBuffer(this.mask.buffer, 0, bitmask.buffer, bitmask.byteOffset, Math.ceil(this.config.vocabSize / 32) * 4);
    }
    const encoder = device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    encodeDispatches(pass, this.plan.embedding, 1);
    for (const layer of this.plan.layers) encodeDispatches(pass, layer, 1);
    if (output !== 'none') encodeDispatches(pass, this.plan.head, 1);
    if (bitmask && output !== 'none') encodeDispatches(pass, [this.mask!.dispatch], 1);
    // a greedy step without a mask leaves its choice in lm_head's argmax partials where they exist
    const partials = output === 'argmax' && !bitmask ? this.partials : null;
    if (output === 'argmax' && !partials) encodeDispatches(pass, [this.plan.argmax], 1);
    if (output === 'sample') encodeDispatches(pass, [this.plan.sample], 1);
    pass.end();
    if (output === 'argmax' || output === 'sample') this.lastChoice = partials ? 'partials' : 'token';
    if (output === 'logits') encoder.copyBufferToBuffer(this.logits, 0, this.logitsReadback, 0, this.config.vocabSize * 4);
    if (readback) {
      if (partials) encoder.copyBufferToBuffer(partials.buffer, 0, readback, 0, partials.count * 8);
      else encoder.copyBufferToBuffer(this.token, 0, readback, 0, 16);
    }
    device.queue.submit([encoder.finish()]);
    this.length++;
  }

  /** Bytes of a readback slot: the token, or lm_head's argmax partials. */
  private get readbackBytes(): number {
    return Math.max(16, (this.partials?.count ?? 0) * 8);
  }

  private validate(tokens: ArrayLike<number>): void {
    if (tokens.length === 0) throw new InvalidInputError('at least one token is needed');
    for (let i = 0; i < tokens.length; i++) {
      const id = tokens[i]!;
      if (!(Number.isInteger(id) && id >= 0 && id < this.config.vocabSize)) throw new InvalidInputError(`token id ${id} is outside the vocabulary (0..${this.config.vocabSize - 1})`);
    }
    if (this.length + tokens.length > this.options.contextLength) throw new InvalidInputError(`${this.length + tokens.length} tokens do not fit the context length ${this.options.contextLength}`);
  }

  /** Appends tokens (one step each, no readback) and resolves once the GPU finished them. */
  async prefill(tokens: ArrayLike<number>): Promise<void> {
    this.validate(tokens);
    for (let i = 0; i < tokens.length; i++) this.submitStep(tokens[i]!, 'none', null);
    await this.settle(this.gpu.device.queue.onSubmittedWorkDone());
  }

  /** Appends tokens and returns the logits after the last one. */
  async forwardLogits(tokens: ArrayLike<number>): Promise<Float32Array> {
    this.validate(tokens);
    for (let i = 0; i < tokens.length; i++) this.submitStep(tokens[i]!, i === tokens.length - 1 ? 'logits' : 'none', null);
    const bytes = this.config.vocabSize * 4;
    await this.settle(this.logitsReadback.mapAsync(GPUMapMode.READ, 0, bytes));
    const out = new Float32Array(this.logitsReadback.getMappedRange(0, bytes).slice(0));
    this.logitsReadback.unmap();
    return out;
  }

  /**
   * Appends the prompt, then generates up to maxTokens tokens chosen on the GPU. Step n+1 is encoded
   * and submitted before token n is read; at most `lag` steps are in flight. Returns the tokens
   * through the first one onToken stopped at (any computed after it are discarded). Afterwards the
   * cache holds the prompt and every returned token but the last.
   */
  async generate(prompt: ArrayLike<number>, options: GenerateOptions): Promise<number[]> {
    this.validate(prompt);
    if (options.filter) return this.generateConstrained(prompt, options, options.filter);
    const lag = Math.max(1, options.lag ?? 8);
    const maxTokens = Math.min(options.maxTokens, this.options.contextLength - this.length - prompt.length + 1);
    if (maxTokens < 1) return [];
    while (this.ring.length < lag) this.ring.push(this.alloc(`token_readback.${this.ring.length}`, this.readbackBytes, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST));
    const output = options.sampling && options.sampling.temperature > 0 ? 'sample' : 'argmax';
    const fromPartials = output === 'argmax' && this.partials !== null;
    const bytes = fromPartials ? this.partials!.count * 8 : 16;
    const draw = () => (output === 'sample' ? (options.random ?? Math.random)() : 0);
    for (let i = 0; i < prompt.length - 1; i++) this.submitStep(prompt[i]!, 'none', null);
    const base = this.length + 1; // cache length once token 0 is chosen
    const pending: Promise<void>[] = [];
    const submit = (n: number) => {
      const slot = this.ring[n % lag]!;
      this.submitStep(n === 0 ? prompt[prompt.length - 1]! : null, output, slot, draw(), options.sampling);
      pending[n] = this.settle(slot.mapAsync(GPUMapMode.READ, 0, bytes));
    };
    const out: number[] = [];
    let submitted = 0;
    try {
      while (submitted < Math.min(lag, maxTokens)) submit(submitted++);
      for (let n = 0; n < maxTokens; n++) {
        await pending[n];
        const slot = this.ring[n % lag]!;
        const id = readChoice(new Uint32Array(slot.getMappedRange(0, bytes)), fromPartials);
        slot.unmap();
        out.push(id);
        if (options.onToken?.(id, n) || n === maxTokens - 1) break;
        if (submitted < maxTokens) submit(submitted++); // uses the slot just read
      }
    } finally {
      // drain steps computed past the stop so their readback buffers are unmapped for the next call
      for (let n = out.length; n < submitted; n++) {
        await pending[n]!.catch(() => undefined);
        const slot = this.ring[n % lag]!;
        if (slot.mapState === 'mapped') slot.unmap();
      }
    }
    this.length = base + out.length - 1;
    return out;
  }

  /**
   * generate() under a grammar: token n's mask needs token n-1, so each chosen token is read back
   * before the next step is submitted (lag 1). A token the filter forces needs no choice: its step
   * only feeds the previous token (no lm_head, no readback), so a run of forced tokens is submitted
   * back to back, like a prefill.
   */
  private async generateConstrained(prompt: ArrayLike<number>, options: GenerateOptions, filter: TokenFilter): Promise<number[]> {
    const maxTokens = Math.min(options.maxTokens, this.options.contextLength - this.length - prompt.length + 1);
    if (maxTokens < 1) return [];
    while (this.ring.length < 1) this.ring.push(this.alloc(`token_readback.${this.ring.length}`, this.readbackBytes, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST));
    const slot = this.ring[0]!;
    const output = options.sampling && options.sampling.temperature > 0 ? 'sample' : 'argmax';
    for (let i = 0; i < prompt.length - 1; i++) this.submitStep(prompt[i]!, 'none', null);
    const base = this.length + 1;
    let input = prompt[prompt.length - 1]!;
    const out: number[] = [];
    while (out.length < maxTokens) {
      let id: number;
      if (filter.forced !== null) {
        id = filter.forced;
        this.submitStep(input, 'none', null);
      } else {
        const u = output === 'sample' ? (options.random ?? Math.random)() : 0;
        this.submitStep(input, output, slot, u, options.sampling, filter.bitmask);
        await this.settle(slot.mapAsync(GPUMapMode.READ, 0, 16));
        id = new Uint32Array(slot.getMappedRange(0, 16))[0]!;
        slot.unmap();
      }
      out.push(id);
      await filter.accept(id);
      if (options.onToken?.(id, out.length - 1) || filter.done) break;
      input = id;
    }
    // the last step fed the token before the last one; forced steps never wait, so finish them here
    await this.settle(this.gpu.device.queue.onSubmittedWorkDone());
    this.length = base + out.length - 1;
    return out;
  }

  /** Awaits a GPU promise, turning a lost device or a GPU error into a typed error. */
  private async settle(p: Promise<unknown>): Promise<void> {
    const lost = this.gpu.device.lost.then((info) => {
      throw new DeviceLostError(info.reason, info.message);
    });
    try {
      await Promise.race([p, lost]);
    } finally {
      this.gpu.check();
    }
  }

  /** Frees the activations (and the KV cache when the decoder made its own; an engine's slot stays the engine's). */
  dispose(): void {
    for (const b of this.buffers) b.destroy();
    this.buffers.length = 0;
    this.ownCache?.dispose();
  }
}
