/**
 * The WebGPU backend's engine. At load: weights uploaded once, activations sized for one prefill
 * chunk, pipelines and bind groups built, the forward pass recorded as lists of dispatches. Per step:
 * one small writeBuffer (T, position, sampling values, token ids), one compute pass, one readback of
 * the logits (or of 4 bytes when the token is chosen on the GPU). Nothing is created per token.
 *
 * With `decode: 'fused'` (the default) the engine also decodes through the fused path
 * (`decodeOnDevice`: a FusedDecoder per sequence, one submit per token, tokens chosen on the GPU). The
 * weights are uploaded in the fused layout and the forward pass reads the same buffers wherever the
 * layouts coincide (fused/engine-weights.ts).
 *
 * One KV cache (kv-cache.ts: per layer K and V pools of slots, f16 by default) serves every
 * sequence: a sequence takes a slot on first use, and the forward pass and its decoder both append
 * to it, so a fused decode after a forward (or the reverse) replays nothing. The forward pass's
 * chunked kernels prefill the prompt (all but its last token) into the slot; the decoder steps from
 * the last token. Kernels find each row's slot and position in the step's row table.
 */
import { InvalidInputError } from '../../errors.js';
import type { ModelConfig } from '../../model/config.js';
import type { ModelWeights } from '../../model/weights.js';
import type { DeviceDecodeOptions, Engine, Sequence, StepRow } from '../../runtime/engine.js';
import { ropeTables } from '../cpu/ops.js';
import { Gpu, type GpuOptions } from './device.js';
import { encodeDispatches, timeDispatches, STEP_HEADER_WORDS, StepWord, type Dispatch } from './dispatch.js';
import { DeviceLostError, GpuOutOfMemoryError } from './errors.js';
import { FusedDecoder } from './fused/decoder.js';
import { fusedBuffersOf, gpuBuffersOf } from './fused/engine-weights.js';
import type { FusedModelWeights } from './fused/weights.js';
import { attentionSplitFor } from './kernels/attention-tensor-core.js';
import { paddedCols } from './kernels/matmul-tiled.js';
import { dropInt8Products, int8CopyBytes, int8Prefill, int8TokenScratch, int8TokensInUse, int8TokensLayout, int8TokensPrepared, quantizeTokensOp, argmaxOp, attentionOp, attentionTensorCoreOp, attentionTiledOp, batchedMatvecOp, chooseRowsOp, decodeCombineOp, embeddingOp, matmulOp, normQuantizeRowsOp, prefillKernel, prefillPathDescription, quantizeRowsOp, rmsnormOp, ropeKvOp, sampleOp, swigluOp, type BatchedMatvecSplit, type MatmulIo } from './ops.js';
import { gpuWeightBytes, uploadVector, type GpuMatrix, type GpuModelWeights, type UploadOptions } from './weights.js';
import { guardAllocation, uploadModelWeights } from './upload.js';
import { batchedTensorCoreOp, defaultTensorCoreSplit, normX16Op, selfTestBatchedTensorCore, swigluX16Op, x16Bytes, x16Op, type TensorCoreSplit } from './batched-products.js';
import { rowsAt, stepWords, writeRows, type KvLayout } from './kernels/kv.js';
import { ARGMAX_PARTS } from './kernels/sample.js';
import { attentionSplits, decodeAttentionPartGqaWgsl, decodeAttentionPartWgsl, gqaPartWorkgroupBytes, splitAttentionFits, type SplitAttentionShape } from './kernels/fused-attention.js';
import { kvDefines } from './kernels/kv.js';
import { KvCache, type KvCacheDtype, type KvSlot } from './kv-cache.js';

export interface WebGpuEngineOptions extends GpuOptions, UploadOptions {
  /** Positions a sequence can hold; sizes each sequence's KV cache. */
  contextLength: number;
  /**
   * Tokens per prefill step (activations are sized for it); default 512, which fills the GPU's cores
   * with the prefill's tiles. Logits of every position (perplexity) go out LOGITS_ROWS at a time.
   */
  prefillChunk?: number;
  /** The KV cache's storage: 'f16' (default; two a word, docs/KV-CACHE.md) or 'f32'. */
  kvCache?: KvCacheDtype;
  /** Read and write the f16 cache as u32 words even where the device has shader-f16 (tests, CI). */
  kvPacked?: boolean;
  /**
   * Offer Engine.step (continuous batching: rows of many sequences a pass, each in its KV slot). Off by
   * default: generate() and the scheduler take step over the fused decode where it exists, and a
   * single stream decodes faster through the fused path.
   */
  batchedStep?: boolean;
  /**
   * Rows of x the batched step's q4 products apply each weight to in one pass over the weights
   * (kernels/batched-matvec.ts); default 8 (PDVM_BATCH_NB in the environment). A step of more decode
   * rows reads the weights once per this many.
   */
  batchRows?: number;
  /**
   * The batched step's q4 products: 'matvec' (default; kernels/batched-matvec.ts), 'tensor-core'
   * (kernels/batched-tensor-core.ts: f16 subgroup matrices, 32 rows of x a pass over the weights;
   * only where the device has self-tested f16 subgroup matrices and that kernel's own self-test
   * passes, else 'matvec') or 'tiled' (the prefill's matrix-matrix kernels; measurements). The choice
   * holds for every step, never per step: a row's arithmetic does not depend on how many rows share
   * it. Default: PDVM_BATCH_PRODUCTS in the environment, else 'matvec' (on the H100, 2026-12-05, the
   * tensor-core products were 2.1x slower at 8 rows and 1.14x faster at 32: docs/PERFORMANCE.md).
   */
  batchProducts?: 'tensor-core' | 'matvec' | 'tiled';
  /**
   * Prompt attention in tiles of queries x keys (kernels/attention.ts attentionTiledWgsl). Default: on,
   * except on software adapters (lavapipe, SwiftShader), where LLVM takes minutes to compile the
   * kernel (measured 170-250 s on the shared CI machine) and a workgroup per row and head serves.
   */
  tiledAttention?: boolean;
  /** KV cache slots allocated at load (sequences that can hold a cache without the pool growing); default 1. */
  kvSlots?: number;
  /** At most this many slots a KV buffer (default: as many as a storage binding holds; tests set 1). */
  kvSlotsPerBuffer?: number;
  /** Use this device instead of acquiring one (the engine then does not destroy it). */
  gpu?: Gpu;
  /**
   * How generation decodes (runtime/generate.ts uses `decodeOnDevice` when this is 'fused' and the
   * sampling has no penalties): 'fused' (default) through a FusedDecoder per sequence, the token chosen
   * on the GPU and read back a few steps behind; 'unfused' through forward() and CPU sampling. 'fused'
   * uploads the weights in the fused layout, which the forward pass shares (q4, q8, 4-bit bitmap, which
   * the fused layout rewrites as q4, and dense matrices are stored once; nm, csr and 8-bit bitmap
   * twice, once decoded to f32). Where
   * the fused path cannot run (a matrix over one storage binding, shapes its kernels do not take), the
   * engine falls back to 'unfused' and says why in `decodeNotice`.
   */
  decode?: 'fused' | 'unfused';
  /**
   * x of the fused path's q4 matrix-vector products: 'int8' (default; blocks of 32 with dot4I8Packed,
   * where the adapter has subgroups) or 'f32' (the CPU's numerics). See FusedDecoderOptions.
   */
  matvecActivations?: 'int8' | 'f32';
  onProgress?: (tensor: string) => void;
}

/** Token selection on the GPU: temperature 0 is argmax; `random` is the uniform draw in [0, 1). */
export interface GpuSampling {
  temperature: number;
  topK: number;
  topP: number;
  minP: number;
  random: number;
}

const STORAGE = () => GPUBufferUsage.STORAGE;

/** Adapters that run kernels on the CPU (Mesa lavapipe/llvmpipe, SwiftShader). */
const SOFTWARE_ADAPTER = /llvmpipe|lavapipe|swiftshader/i;

/** Rows of the logits buffer: forward(allLogits) runs its prompt in steps of at most this many tokens. */
const LOGITS_ROWS = 128;
const DEFAULT_PREFILL_CHUNK = 512;

interface Activations {
  step: GPUBuffer; // u32: header + (chunk) token ids + (chunk) rows of (slot word, position)
  x: GPUBuffer; // (chunk, hidden) residual stream
  xn: GPUBuffer; // (chunk, hidden) normalised
  qkv: GPUBuffer; // (chunk, qDim + 2 kvDim)
  att: GPUBuffer; // (chunk, qDim)
  gateUp: GPUBuffer; // (chunk, 2 ffn)
  act: GPUBuffer; // (chunk, ffn)
  logits: GPUBuffer; // (min(chunk, LOGITS_ROWS), vocab)
  token: GPUBuffer; // u32 (4): the GPU-selected token
  cos: GPUBuffer; // (contextLength, rotaryDim / 2)
  sin: GPUBuffer;
  logitsReadback: GPUBuffer; // MAP_READ copy of logits
  tokenReadback: GPUBuffer;
}

/** A layer's dispatches around the two that read a sequence's KV cache (rope_kv, attention). */
interface LayerPlan {
  beforeAttention: Dispatch[]; // attn norm, qkv
  afterAttention: Dispatch[]; // o (+ residual), mlp norm, gate/up, swiglu, down (+ residual)
}

/** A layer's dispatches over one buffer group of the KV cache: rope_kv + attention, for one row or a prompt's rows. */
interface LayerKv {
  one: Dispatch[]; // attention a workgroup per (row, head)
  prompt: Dispatch[]; // attention in tiles of queries x keys where the head dim suits it
  /** Steps whose last key is at least `longFrom` in: attention split over keys, then merged. */
  promptLong: Dispatch[];
  longFrom: number;
}

/** The rope_kv + attention dispatches of a step of T rows whose keys end at position `end` (exclusive). */
function layerKvFor(kv: LayerKv, T: number, end: number): Dispatch[] {
  return T === 1 ? kv.one : end >= kv.longFrom ? kv.promptLong : kv.prompt;
}

/** A token of a batched step: token i of step row r; `head`: it goes on to lm_head (its row's last, logits wanted). */
interface PassRow {
  r: number;
  i: number;
  head: boolean;
}

/**
 * The batched step's plan for rows of one token each (decode rows: one token of each of T sequences,
 * each in its own slot and position): the products read each q4 weight once for a pass of rows
 * (kernels/batched-matvec.ts; other encodings through the prefill's tiled kernels), attention per row
 * over its slot, then lm_head for every row and the token choice per row on the GPU.
 */
interface DecodeRowsPlan {
  /** Rows a pass at most (activations and logits are sized for the prefill chunk, logits for LOGITS_ROWS). */
  maxRows: number;
  layers: LayerPlan[];
  /**
   * Decode attention in chunks of keys (the fused decoder's split kernels, a row of the table per
   * workgroup row): per layer the chunks' combine, after every buffer group's chunk dispatch
   * (kvDecodeDispatchesOf); null where the split kernels do not apply (kvBatchDispatchesOf's instead).
   */
  split: { shape: SplitAttentionShape; part: GPUBuffer; combine: Dispatch[] } | null;
  /** Final norm and lm_head over the first L rows (L from `headStep`). */
  head: Dispatch[];
  /** Per-row argmax parts, then the token choice, over the first L rows. */
  choose: Dispatch[];
  /** u32 (4): L, the rows going on to lm_head (the head dispatches' step). */
  headStep: GPUBuffer;
  /** u32 (maxRows, 8): per row sampling values in words 2..6 (as the step header's), and its host copy. */
  params: GPUBuffer;
  paramWords: Uint32Array;
  /** u32 (maxRows): the chosen ids. */
  tokens: GPUBuffer;
  tokensReadback: GPUBuffer;
  /** Every buffer above and the int8 x (destroyed with the engine). */
  buffers: GPUBuffer[];
}

interface Plans {
  embedding: Dispatch[];
  decode: LayerPlan[]; // matvec kernels (one token)
  prefill: LayerPlan[]; // tiled kernels (T tokens)
  lastLogits: Dispatch[]; // final norm of row T-1, lm_head matvec -> logits row 0
  allLogits: Dispatch[]; // final norm of all rows, lm_head tiled -> logits rows 0..T-1
  argmax: Dispatch;
  sample: Dispatch;
}

/**
 * The tokens a sequence holds and its slot of the engine's KV cache (taken on first use), which holds
 * the K and V of every token in `tokens`; its fused decoder (made on first use) appends to the same slot.
 */
export class WebGpuSequence implements Sequence {
  readonly tokens: number[] = [];
  slot: KvSlot | null = null;
  decoder: FusedDecoder | null = null;
  /** The decode running on this sequence; dispose frees the decoder only after it ends. */
  running: Promise<number[]> | null = null;
  private disposed = false;

  constructor(private readonly kv: KvCache | null = null) {}

  get length(): number {
    return this.tokens.length;
  }
  reset(): void {
    this.truncate(0);
  }
  truncate(length: number): void {
    const n = Math.min(this.tokens.length, Math.max(0, Math.floor(length)));
    this.tokens.length = n;
  }
  get isDisposed(): boolean {
    return this.disposed;
  }
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    const free = () => {
      this.decoder?.dispose();
      if (this.slot) this.kv?.release(this.slot);
      this.slot = null;
    };
    if (this.running) void this.running.then(free, free);
    else free();
  }
}

/** An environment variable where there is an environment (Node), else undefined (browsers). */
function envVar(name: string): string | undefined {
  return (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env?.[name];
}

/** The batched q4 products' lanes from PDVM_BATCH_LAYOUT, _RPS, _GROUPS, _SLICES and _UNROLL (WebGpuEngine.batchSplit). */
function batchSplitFromEnvironment(): Omit<BatchedMatvecSplit, 'nb'> {
  const layout = envVar('PDVM_BATCH_LAYOUT') === 'units' ? 'units' : 'rows';
  const rps = Math.max(1, Math.min(8, Math.floor(Number(envVar('PDVM_BATCH_RPS') ?? 2))));
  const groups = [1, 2, 4].includes(Number(envVar('PDVM_BATCH_GROUPS'))) ? Number(envVar('PDVM_BATCH_GROUPS')) : 4;
  const slices = [1, 2, 4, 8, 16, 32].includes(Number(envVar('PDVM_BATCH_SLICES'))) ? Number(envVar('PDVM_BATCH_SLICES')) : undefined;
  const unroll = Math.max(1, Math.min(4, Math.floor(Number(envVar('PDVM_BATCH_UNROLL') ?? 1))));
  return { layout, rps, groups, slices, unroll };
}

/**
 * Builds an engine (its plans make the int8 products' copies of the q4 matrices, kept beside them,
 * ops.ts int8Rows); where those copies do not fit beside the model, frees them and builds it again with
 * the int8 products that keep no copy ('row-q4', self-tested then), else the f16 tensor cores, saying
 * so in the engine's notice.
 */
async function withInt8Fallback(gpu: Gpu, hint: string, notice: string | undefined, make: (notice: string | undefined) => WebGpuEngine): Promise<WebGpuEngine> {
  const scratch = gpu.scratchSnapshot();
  try {
    return await gpu.allocating("the prefill's int8 copies of the q4 matrices", hint, () => make(notice));
  } catch (e) {
    const bytes = int8CopyBytes(gpu);
    if (!(e instanceof GpuOutOfMemoryError) || bytes === 0) throw e;
    dropInt8Products(gpu);
    gpu.forgetScratchSince(scratch);
    // Dawn returns a destroyed buffer's memory at a tick after the work submitted before it is done
    await gpu.device.queue.onSubmittedWorkDone();
    gpu.device.queue.submit([]);
    await gpu.device.queue.onSubmittedWorkDone();
    // the same int8 products with W rounded as it is staged (no copy), else the f16 tensor cores
    const rowQ4 = await gpu.useInt8Scaling('row-q4');
    const why = `the int8 copies of the q4 matrices (${mb(bytes)}) do not fit beside the model: the prefill ${rowQ4 ? 'rounds W to int8 as it stages it (PDVM_PREFILL_I8=row-q4), slower' : 'multiplies on the f16 tensor cores'}`;
    return await gpu.allocating('the engine', hint, () => make(notice ? `${notice}; ${why}` : why));
  }
}

function mb(bytes: number): string {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

export class WebGpuEngine implements Engine {
  readonly backend = 'webgpu';
  /** Present when the fused decode path is on (see WebGpuEngineOptions.decode). */
  readonly decodeOnDevice?: (seq: Sequence, prompt: ArrayLike<number>, options: DeviceDecodeOptions) => Promise<number[]>;
  /** Present with the `batchedStep` option: Engine.step, rows of many sequences a pass (see stepBatch). */
  readonly step?: (rows: StepRow[]) => Promise<(Float32Array | number | null)[]>;
  /** With `batchedStep`: rows with `choose` get their token chosen on the GPU (only ids read back). */
  readonly stepChoosesTokens?: boolean;
  private readonly plans: Plans;
  private readonly logitsOne: Float32Array;
  private readonly stepWords: Uint32Array;
  private readonly stepFloats: Float32Array;
  private spare: WebGpuSequence | null = null;
  /** Per buffer group of the KV cache: per layer rope_kv and attention bound to it. */
  private readonly kvDispatches = new Map<number, LayerKv[]>();
  /** The same for batched steps: only the rows whose slot is in the group (a batch may span groups). */
  private readonly kvBatchDispatches = new Map<number, Dispatch[][]>();
  /** The same with the split decode attention's chunk dispatch (decode-row passes). */
  private readonly kvDecodeDispatches = new Map<number, Dispatch[][]>();
  /** step()'s logits rows (returned as views, overwritten by the next step). */
  private stepLogits: Float32Array | null = null;
  /** The batched step's decode-row plan, made on the first step. */
  private decodeRows: DecodeRowsPlan | null = null;
  /** A decode-row pass encoded ahead for the next step of the same rows (`T|groups`), or null. */
  private spareDecodePass: { key: string; plan: DecodeRowsPlan; commands: GPUCommandBuffer } | null = null;
  /** Rows a pass of the batched q4 products (WebGpuEngineOptions.batchRows). */
  batchRows = 8;
  /**
   * The batched q4 products' lanes (kernels/batched-matvec.ts): PDVM_BATCH_LAYOUT ('rows' or
   * 'units'; default 'rows': on the H100 its products took 109 against 173 µs a layer at 8 rows and 363
   * against 536 at 32, docs/PERFORMANCE.md "Issue 15 on 2026-12-05 evening"; 'rows' falls back to 'units'
   * where subgroups hold fewer than 8 lanes), PDVM_BATCH_RPS (output rows a subgroup, or a lane for 'rows'; default 2),
   * PDVM_BATCH_GROUPS ('rows': sets of 8 lanes on different rows a 32 lanes; default 4),
   * PDVM_BATCH_SLICES ('rows': slices of the columns a workgroup; default 256 / (8 groups)),
   * PDVM_BATCH_UNROLL ('rows': units a lane loads at once; default 1).
   */
  batchSplit: Omit<BatchedMatvecSplit, 'nb'> = batchSplitFromEnvironment();
  /**
   * The decode-row plan's products (WebGpuEngineOptions.batchProducts): 'tensor-core'
   * (kernels/batched-tensor-core.ts, where self-tested), 'matvec' (kernels/batched-matvec.ts for q4)
   * or 'tiled' (the prefill's matrix-matrix kernels, for measuring them at small T).
   */
  batchProducts: 'tensor-core' | 'matvec' | 'tiled' = 'matvec';
  /**
   * The split decode attention's merge writes the o product's int8 x itself (one dispatch a layer
   * fewer): PDVM_BATCH_COMBINE_QUANTIZE=1. Off by default: alone the merged dispatch took 12.6 µs at 8
   * rows against 4.5 + 5.2 for the two it replaces (H100, 2026-12-05), and whole steps did not show it
   * faster beyond their noise.
   */
  batchCombineQuantize = envVar('PDVM_BATCH_COMBINE_QUANTIZE') === '1';
  /** The tensor-core products' stage split (PDVM_TC_KS, PDVM_TC_WARPS). */
  batchTensorCoreSplit: TensorCoreSplit = defaultTensorCoreSplit();
  /** Why the batched step's products are not on the tensor cores (the self-test's outcome), or null. */
  batchProductsNotice: string | null = null;
  /**
   * Where a batched step's prompt tokens go. 'rows' (default): every token is a decode row of the
   * batched products, the prompts of all the step's rows together (each weight read once per
   * `batchRows` tokens). 'prefill' (PDVM_STEP_PROMPTS=prefill): every token of a row but a last one
   * that wants logits runs through the forward pass's chunked prefill kernels (runChunks), a row at a
   * time before the step's decode pass. On the H200 (2026-12-06, docs/PERFORMANCE.md "Issue 15 on
   * 2026-12-06") 'prefill' was the slower: each row's chunk is a pass of its own over every weight, and
   * the tensor-core products are slow at a chunk's few tokens (32 streams of 32-token prompts 1,244
   * tok/s against 1,549 as rows); on lavapipe it was the faster. Either way a token's arithmetic does not
   * depend on the other rows of its step; with 'prefill' a prompt token's depends on the chunk it is
   * fed in, so the scheduler cuts a prompt at the same places alone or in a batch.
   */
  stepPrompts: 'prefill' | 'rows' = envVar('PDVM_STEP_PROMPTS') === 'prefill' ? 'prefill' : 'rows';
  /** Word of the step buffer where the row table starts. */
  private readonly rowsAt: number;
  private queue: Promise<unknown> = Promise.resolve();
  private disposed = false;
  /**
   * A prefill step of several tokens is submitted every this many layers (0: once), so that the GPU
   * starts while the CPU encodes the rest (PDVM_SUBMIT_LAYERS; docs/PERFORMANCE.md "Prefill by default
   * on the int8 tensor cores").
   */
  submitLayers = Math.max(0, Math.floor(Number(envVar('PDVM_SUBMIT_LAYERS') ?? 4)) || 0);
  /** x of the fused decoders' q4 products (WebGpuEngineOptions.matvecActivations). */
  matvecActivations: 'int8' | 'f32' = 'int8';

  private constructor(
    readonly config: ModelConfig,
    readonly contextLength: number,
    readonly gpu: Gpu,
    private readonly ownsGpu: boolean,
    readonly weights: GpuModelWeights,
    private readonly a: Activations,
    /** Tokens per prefill step. */
    readonly prefillChunk: number,
    /** The fused path's weights (sharing buffers with `weights`), or null when it is off. */
    readonly fusedWeights: FusedModelWeights | null,
    /** Why a fast path is off although it was asked for (the fused decoder, the prefill's int8 products); undefined otherwise. */
    readonly decodeNotice: string | undefined,
    /** Every sequence's K and V (a slot each). */
    readonly kv: KvCache,
    private readonly tiledAttention = true,
    batchedStep = false,
  ) {
    if (batchedStep) {
      this.step = (rows) => this.stepBatch(rows);
      this.stepChoosesTokens = true;
    }
    this.plans = this.buildPlans();
    this.logitsOne = new Float32Array(config.vocabSize);
    this.rowsAt = rowsAt(STEP_HEADER_WORDS, prefillChunk);
    this.stepWords = new Uint32Array(stepWords(STEP_HEADER_WORDS, prefillChunk));
    this.stepFloats = new Float32Array(this.stepWords.buffer);
    if (fusedWeights) this.decodeOnDevice = (seq, prompt, options) => this.decodeFused(seq, prompt, options);
  }

  /** The device, its features and the paths that run, as one line (`pdvm generate --verbose`). */
  describe(): string {
    return `${this.gpu.adapterDescription}; ${this.gpu.featureSummary}; decode ${this.decode}; prefill ${this.prefillChunk} tokens a step, products ${prefillPathDescription(this.gpu)}`;
  }

  /** Bytes of one sequence's slot of the KV cache (every layer's K and V, in the cache's dtype). */
  get kvBytesPerSequence(): number {
    return this.kv.bytesFor(1);
  }

  /** 'fused' when generation decodes through the fused path, else 'unfused'. */
  get decode(): 'fused' | 'unfused' {
    return this.fusedWeights ? 'fused' : 'unfused';
  }

  /**
   * Acquires a device (unless given), uploads the weights and allocates the KV cache's first slots
   * (`kvSlots`, default 1) and the first sequence's fused decoder when the fused path is on.
   */
  static async create(model: { config: ModelConfig; weights: ModelWeights }, options: WebGpuEngineOptions): Promise<WebGpuEngine> {
    const c = model.config;
    const ctx = options.contextLength;
    if (!Number.isInteger(ctx) || ctx < 1) throw new InvalidInputError(`context length must be a whole number >= 1, got ${ctx}`);
    const gpu = options.gpu ?? (await Gpu.acquire(options));
    try {
      const kvDim = c.numKvHeads * c.headDim;
      const qkvDim = (c.numHeads + 2 * c.numKvHeads) * c.headDim;
      const widest = Math.max(qkvDim, 2 * c.intermediateSize, c.vocabSize, c.hiddenSize) * 4;
      const chunk = Math.max(1, Math.min(options.prefillChunk ?? DEFAULT_PREFILL_CHUNK, ctx, Math.floor(gpu.maxBindingBytes / widest)));
      // checks that one slot fits a storage binding (a pool of several slots is split across buffers)
      const kv = new KvCache(gpu, { numLayers: c.numLayers, kvDim, contextLength: ctx, dtype: options.kvCache ?? 'f16', packed: options.kvPacked, maxSlotsPerBuffer: options.kvSlotsPerBuffer });
      const slots = Math.max(1, Math.floor(options.kvSlots ?? 1));
      const weightBytes = gpuWeightBytes(model.weights, options);
      const cacheBytes = kv.bytesFor(slots);
      const hint = slots > 1
        ? `model weights take ${mb(weightBytes)} and ${slots} KV caches of ${ctx} positions ${mb(cacheBytes)}; use a smaller maxConcurrency, prefixCacheBytes or contextLength, or a smaller model, or backend: 'cpu'`
        : `model weights take ${mb(weightBytes)} and a KV cache of ${ctx} positions ${mb(cacheBytes)}; use a smaller contextLength or a smaller model, or backend: 'cpu'`;
      // a tensor at a time, lazy tensors read as they are uploaded (upload.ts)
      const uploaded = await uploadModelWeights(gpu, model.weights, { decode: options.decode ?? 'fused', upload: options, hint, onTensor: options.onProgress });
      const weights = uploaded.weights;
      let fused = uploaded.fused;
      let notice = uploaded.notice;
      const activations = await gpu.allocating('the activations', hint, () => guardAllocation(hint, () => allocateActivations(gpu, c, ctx, chunk)));
      // the cache's first slots, allocated now so that a model that cannot hold one fails here
      await gpu.allocating(`a KV cache of ${slots} x ${ctx} positions (${kv.shape.dtype}, ${mb(cacheBytes)})`, hint, () => guardAllocation(hint, () => kv.grow(slots)));
      const spare = new WebGpuSequence(kv);
      spare.slot = kv.acquire();
      // the first sequence's decoder, which also builds (and so checks) the fused kernels
      if (fused) {
        try {
          spare.decoder = await gpu.allocating(`the fused decoder`, hint, () =>
            guardAllocation(hint, () => new FusedDecoder(gpu, c, fused!, { path: 'fused', contextLength: ctx, matvecActivations: options.matvecActivations, kv: { cache: kv, slot: spare.slot! } })),
          );
        } catch (e) {
          if (e instanceof DeviceLostError) throw e;
          spare.decoder?.dispose();
          spare.decoder = null;
          const shared = new Set(gpuBuffersOf(weights));
          for (const b of fusedBuffersOf(fused)) if (!shared.has(b)) b.destroy();
          fused = null;
          notice = `decoding through the forward pass: the fused decoder cannot run here (${(e as Error).message})`;
        }
      }
      const engine = await withInt8Fallback(gpu, hint, notice, (n) => new WebGpuEngine(c, ctx, gpu, !options.gpu, weights, activations, chunk, fused, n, kv, options.tiledAttention ?? !SOFTWARE_ADAPTER.test(gpu.adapterDescription), options.batchedStep ?? false));
      engine.matvecActivations = options.matvecActivations ?? 'int8';
      engine.batchRows = Math.max(1, Math.min(32, Math.floor(options.batchRows ?? Number(envVar('PDVM_BATCH_NB') ?? 8))));
      if (options.batchedStep) await engine.chooseBatchProducts(options.batchProducts);
      engine.spare = spare;
      return engine;
    } catch (e) {
      if (!options.gpu) gpu.destroy();
      throw e;
    }
  }

  /**
   * An engine over weights already on `gpu` (`pdvm bench`'s synthetic models), decoding through the
   * forward pass; the caller keeps the device and the weights.
   */
  static async overGpuWeights(
    gpu: Gpu, config: ModelConfig, weights: GpuModelWeights, options: { contextLength: number; prefillChunk?: number; kvCache?: KvCacheDtype; batchedStep?: boolean; kvSlots?: number },
  ): Promise<WebGpuEngine> {
    const c = config, ctx = options.contextLength;
    const widest = Math.max((c.numHeads + 2 * c.numKvHeads) * c.headDim, 2 * c.intermediateSize, c.vocabSize, c.hiddenSize) * 4;
    const chunk = Math.max(1, Math.min(options.prefillChunk ?? DEFAULT_PREFILL_CHUNK, ctx, Math.floor(gpu.maxBindingBytes / widest)));
    const hint = 'use a smaller --context or --prefill';
    const activations = await gpu.allocating('the activations', hint, () => guardAllocation(hint, () => allocateActivations(gpu, c, ctx, chunk)));
    const kv = new KvCache(gpu, { numLayers: c.numLayers, kvDim: c.numKvHeads * c.headDim, contextLength: ctx, dtype: options.kvCache ?? 'f16' });
    await gpu.allocating(`a KV cache of ${ctx} positions`, hint, () => guardAllocation(hint, () => kv.grow(Math.max(1, options.kvSlots ?? 1))));
    const engine = await withInt8Fallback(gpu, hint, undefined, (n) => new WebGpuEngine(c, ctx, gpu, false, weights, activations, chunk, null, n, kv, !SOFTWARE_ADAPTER.test(gpu.adapterDescription), options.batchedStep ?? false));
    if (options.batchedStep) await engine.chooseBatchProducts();
    const spare = new WebGpuSequence(kv);
    spare.slot = kv.acquire();
    engine.spare = spare;
    return engine;
  }

  /**
   * The batched step's products (WebGpuEngineOptions.batchProducts): the one asked for, else
   * PDVM_BATCH_PRODUCTS, else 'matvec'; the tensor cores only where their self-test passes here.
   */
  private async chooseBatchProducts(asked?: 'tensor-core' | 'matvec' | 'tiled'): Promise<void> {
    const v = asked ?? envVar('PDVM_BATCH_PRODUCTS');
    // the f32 options keep the CPU's numerics (f32 x); the tensor cores multiply f16
    const want = v === 'tiled' ? v : v === 'tensor-core' && this.matvecActivations !== 'f32' ? 'tensor-core' : 'matvec';
    if (want !== 'tensor-core') {
      this.batchProducts = want;
      return;
    }
    const r = await selfTestBatchedTensorCore(this.gpu);
    this.gpu.features.selfTests['batched products (subgroup matrix)'] = r;
    this.batchProducts = r === 'passed' ? 'tensor-core' : 'matvec';
    this.batchProductsNotice = r === 'passed' ? null : r;
  }

  private buildPlans(): Plans {
    const c = this.config, gpu = this.gpu, a = this.a, w = this.weights, C = this.prefillChunk;
    const H = c.hiddenSize, ffn = c.intermediateSize;
    const qDim = c.numHeads * c.headDim, kvDim = c.numKvHeads * c.headDim, qkvDim = qDim + 2 * kvDim;
    // tensor-core prefill: rmsnorm and swiglu also write their rows in f16 for the products after them
    // (no convert_f16 of their own; PDVM_FUSED_CONVERT=0: they convert as the o product does)
    const x16 = (kind: 'matvec' | 'tiled') =>
      kind === 'tiled' && prefillKernel(gpu) === 'subgroup-matrix-f16' && envVar('PDVM_FUSED_CONVERT') !== '0'
        ? gpu.scratch('x16', Math.ceil(C / 128) * 128 * Math.max(paddedCols(H), paddedCols(ffn), paddedCols(qDim)) * 2)
        : undefined;
    const stacked = (parts: GpuMatrix[], x: GPUBuffer, y: GPUBuffer, yStride: number, bias: GPUBuffer | null, kind: 'matvec' | 'tiled', f16?: GPUBuffer) => {
      let offset = 0;
      const prepared = new Map<string, GPUBuffer[]>(); // x converted or quantized once for all the parts
      return parts.flatMap((m) => {
        const d = matmulOp(gpu, m, { x, y, yStride, yOffset: offset, bias, residual: false, step: a.step, prepared, ...(f16 ? { x16: f16 } : {}) }, kind, C);
        offset += m.rows;
        return d;
      });
    };
    // int8 products scaled by row (every product after a norm or the SwiGLU a q4 g64 one on the int8
    // tensor cores): the norm and the SwiGLU write x as int8 a token as they go, and the products skip
    // their quantize_tokens (as the batched step's do); else they write f16 rows for the tensor cores
    const tokens8 = int8TokensInUse(gpu) && H % 64 === 0 && ffn % 64 === 0 ? int8TokenScratch(gpu, C, Math.max(H, ffn, qDim)) : null;
    const int8Layer = (L: (typeof w.layers)[number]) => tokens8 !== null && [...L.qkv, ...L.gateUp, L.down].every((m) => int8Prefill(gpu, m));
    const layerPlans = (kind: 'matvec' | 'tiled'): LayerPlan[] => {
      const f16 = x16(kind);
      const normCols = f16 ? { f16Cols: paddedCols(H) } : {};
      return w.layers.map((L) => (kind === 'tiled' && int8Layer(L) ? int8LayerPlan(L, tokens8!) : {
        beforeAttention: [
          rmsnormOp(gpu, { hidden: H, eps: c.rmsNormEps, mode: 'all', ...normCols }, C, a.x, L.attnNorm, a.xn, a.step, f16),
          ...stacked(L.qkv, a.xn, a.qkv, qkvDim, L.qkvBias, kind, f16),
        ],
        afterAttention: [
          ...matmulOp(gpu, L.o, { x: a.att, y: a.x, yStride: H, yOffset: 0, bias: null, residual: true, step: a.step }, kind, C),
          rmsnormOp(gpu, { hidden: H, eps: c.rmsNormEps, mode: 'all', ...normCols }, C, a.x, L.mlpNorm, a.xn, a.step, f16),
          ...stacked(L.gateUp, a.xn, a.gateUp, 2 * ffn, null, kind, f16),
          swigluOp(gpu, ffn, C, a.gateUp, a.act, a.step, f16),
          ...matmulOp(gpu, L.down, { x: a.act, y: a.x, yStride: H, yOffset: 0, bias: null, residual: true, step: a.step, ...(f16 ? { x16: f16 } : {}) }, kind, C),
        ],
      }));
    };
    const int8LayerPlan = (L: (typeof w.layers)[number], s: { xq: GPUBuffer; xscale: GPUBuffer }): LayerPlan => {
      const products = (parts: GpuMatrix[], cols: number, y: GPUBuffer, yStride: number, bias: GPUBuffer | null, x: GPUBuffer, residual: boolean) => {
        const prepared = int8TokensPrepared(s, cols);
        let offset = 0;
        return parts.flatMap((m) => {
          const d = matmulOp(gpu, m, { x, y, yStride, yOffset: offset, bias, residual, step: a.step, prepared }, 'tiled', C);
          offset += m.rows;
          return d;
        });
      };
      return {
        beforeAttention: [
          quantizeTokensOp(gpu, H, { kind: 'norm', eps: c.rmsNormEps, x: a.x, weight: L.attnNorm }, a.xn, s, a.step),
          ...products(L.qkv, H, a.qkv, qkvDim, L.qkvBias, a.xn, false),
        ],
        afterAttention: [
          ...matmulOp(gpu, L.o, { x: a.att, y: a.x, yStride: H, yOffset: 0, bias: null, residual: true, step: a.step }, 'tiled', C),
          quantizeTokensOp(gpu, H, { kind: 'norm', eps: c.rmsNormEps, x: a.x, weight: L.mlpNorm }, a.xn, s, a.step),
          ...products(L.gateUp, H, a.gateUp, 2 * ffn, null, a.xn, false),
          quantizeTokensOp(gpu, ffn, { kind: 'swiglu', gateUp: a.gateUp }, a.act, s, a.step),
          ...products([L.down], ffn, a.x, H, null, a.act, true),
        ],
      };
    };
    const lmHead = (kind: 'matvec' | 'tiled') =>
      matmulOp(gpu, w.lmHead, { x: a.xn, y: a.logits, yStride: c.vocabSize, yOffset: 0, bias: null, residual: false, step: a.step }, kind, Math.min(C, LOGITS_ROWS));
    return {
      embedding: embeddingOp(gpu, w.embed, H, C, a.x, a.step),
      decode: layerPlans('matvec'),
      prefill: layerPlans('tiled'),
      lastLogits: [rmsnormOp(gpu, { hidden: H, eps: c.rmsNormEps, mode: 'last' }, C, a.x, w.finalNorm, a.xn, a.step), ...lmHead('matvec')],
      allLogits: [rmsnormOp(gpu, { hidden: H, eps: c.rmsNormEps, mode: 'all' }, C, a.x, w.finalNorm, a.xn, a.step), ...lmHead('tiled')],
      argmax: argmaxOp(gpu, c.vocabSize, a.logits, a.token),
      sample: sampleOp(gpu, c.vocabSize, a.logits, a.token, a.step),
    };
  }

  /** How the forward pass's kernels see the cache (rows of the whole step; `group` filters a batch across buffers). */
  private kvLayout(group: number): KvLayout {
    return { storage: this.kv.storage, contextLength: this.contextLength, rowsAt: this.rowsAt, kvBuffer: group };
  }

  /** Per layer rope_kv and attention bound to buffer group g of the cache (made on first use). */
  private kvDispatchesOf(g: number): LayerKv[] {
    let d = this.kvDispatches.get(g);
    if (d) return d;
    const c = this.config, gpu = this.gpu, a = this.a, group = this.kv.groups[g]!;
    // every row of a single-sequence step is in its slot's group, so no filter
    const kv = this.kvLayout(-1);
    d = [];
    const shape = { numHeads: c.numHeads, numKvHeads: c.numKvHeads, headDim: c.headDim, slidingWindow: c.slidingWindow, rotaryDim: c.rotaryDim };
    // long prompts: the tensor-core attention split over keys where self-tested (a step splits once its last key is two splits in)
    const split = gpu.features.attentionTensorCore && gpu.features.attentionSplit ? attentionSplitFor(shape, this.contextLength, this.prefillChunk, gpu.maxBindingBytes, gpu.features.attentionSplits) : null;
    for (let l = 0; l < c.numLayers; l++) {
      const rope = ropeKvOp(gpu, { numHeads: c.numHeads, numKvHeads: c.numKvHeads, headDim: c.headDim, rotaryDim: c.rotaryDim }, kv, a.qkv, a.cos, a.sin, group.k[l]!, group.v[l]!, a.step);
      const rows = attentionOp(gpu, shape, kv, a.qkv, group.k[l]!, group.v[l]!, a.att, a.step);
      // prompts: the tensor cores where self-tested, else tiles of 16 x 16 in f32
      const tc = (splitKeys: number) => (this.tiledAttention ? attentionTensorCoreOp(gpu, shape, kv, a.qkv, group.k[l]!, group.v[l]!, a.att, a.step, this.prefillChunk, splitKeys) : null);
      const prompt = tc(0) ?? [(this.tiledAttention ? attentionTiledOp(gpu, shape, kv, a.qkv, group.k[l]!, group.v[l]!, a.att, a.step) : null) ?? rows];
      const long = split ? tc(split.keys) : null;
      d.push({ one: [rope, rows], prompt: [rope, ...prompt], promptLong: [rope, ...(long ?? prompt)], longFrom: split ? 2 * split.keys : Infinity });
    }
    this.kvDispatches.set(g, d);
    return d;
  }

  /** Per layer rope_kv and the split decode attention's chunks over the rows of a decode-row pass whose slot is in group g. */
  private kvDecodeDispatchesOf(plan: DecodeRowsPlan, g: number): Dispatch[][] {
    let d = this.kvDecodeDispatches.get(g);
    if (d) return d;
    const c = this.config, gpu = this.gpu, a = this.a, group = this.kv.groups[g]!, split = plan.split!;
    const kv = this.kvLayout(g);
    const defines = { ...split.shape, slidingWindow: split.shape.slidingWindow ?? 0, ...kvDefines(kv) };
    const grouped = c.numHeads > c.numKvHeads && gqaPartWorkgroupBytes(split.shape) <= gpu.device.limits.maxComputeWorkgroupStorageSize;
    const f = { subgroups: gpu.subgroups };
    const pipeline = grouped
      ? gpu.pipeline('decode_attention_part_gqa', defines, () => decodeAttentionPartGqaWgsl(split.shape, kv))
      : gpu.pipeline('decode_attention_part', { ...defines, ...f }, () => decodeAttentionPartWgsl(split.shape, kv, f));
    const groupsA = (grouped ? c.numKvHeads : c.numHeads) * split.shape.splits;
    d = [];
    for (let l = 0; l < c.numLayers; l++) {
      d.push([
        // a token's RoPE and KV append over 8 workgroups (decode passes have few tokens)
        ropeKvOp(gpu, { numHeads: c.numHeads, numKvHeads: c.numKvHeads, headDim: c.headDim, rotaryDim: c.rotaryDim }, kv, a.qkv, a.cos, a.sin, group.k[l]!, group.v[l]!, a.step, 8),
        { label: 'attention_part', pipeline, bindGroup: gpu.bindGroup('decode_attention_part', pipeline, [a.qkv, group.k[l]!, group.v[l]!, split.part, a.step]), workgroups: (T: number) => [groupsA, T, 1] },
      ]);
    }
    this.kvDecodeDispatches.set(g, d);
    return d;
  }

  /** Per layer rope_kv and per-row attention over the rows of a batch whose slot is in group g. */
  private kvBatchDispatchesOf(g: number): Dispatch[][] {
    let d = this.kvBatchDispatches.get(g);
    if (d) return d;
    const c = this.config, gpu = this.gpu, a = this.a, group = this.kv.groups[g]!;
    const kv = this.kvLayout(g);
    d = [];
    for (let l = 0; l < c.numLayers; l++) {
      d.push([
        ropeKvOp(gpu, { numHeads: c.numHeads, numKvHeads: c.numKvHeads, headDim: c.headDim, rotaryDim: c.rotaryDim }, kv, a.qkv, a.cos, a.sin, group.k[l]!, group.v[l]!, a.step),
        attentionOp(gpu, { numHeads: c.numHeads, numKvHeads: c.numKvHeads, headDim: c.headDim, slidingWindow: c.slidingWindow, rotaryDim: c.rotaryDim }, kv, a.qkv, group.k[l]!, group.v[l]!, a.att, a.step),
      ]);
    }
    this.kvBatchDispatches.set(g, d);
    return d;
  }

  /** The sequence's slot, taken on first use (the pool grows by a buffer group when full). */
  private slotOf(seq: WebGpuSequence): KvSlot {
    return (seq.slot ??= guardAllocation(`a KV cache slot of ${this.contextLength} positions does not fit beside the model; use a smaller context length (--context)`, () => this.kv.acquire()));
  }

  /** A sequence; its caches are made on first use (the first one's were made at load). */
  createSequence(): WebGpuSequence {
    this.assertUsable();
    const s = this.spare;
    if (s) {
      this.spare = null;
      return s;
    }
    return new WebGpuSequence(this.kv);
  }

  private assertUsable(): void {
    if (this.disposed) throw new InvalidInputError('this WebGPU engine was disposed');
    this.gpu.check();
  }

  private live(seq: Sequence): WebGpuSequence {
    if (!(seq instanceof WebGpuSequence) || seq.isDisposed) throw new InvalidInputError('this needs a live sequence from this engine\'s createSequence()');
    if (seq.running) throw new InvalidInputError('this sequence is decoding on the GPU; wait for that to finish');
    return seq;
  }

  private checkTokens(seq: WebGpuSequence, tokens: ArrayLike<number>): void {
    const c = this.config;
    const T = tokens.length;
    if (T === 0) throw new InvalidInputError('forward needs at least one token');
    if (seq.length + T > this.contextLength) throw new InvalidInputError(`${seq.length + T} tokens do not fit the context length ${this.contextLength}`);
    for (let i = 0; i < T; i++) {
      const id = tokens[i]!;
      if (!(Number.isInteger(id) && id >= 0 && id < c.vocabSize)) throw new InvalidInputError(`token id ${id} is outside the vocabulary (0..${c.vocabSize - 1})`);
    }
  }

  /** Runs fn after every earlier call finished: forwards share the activations and readback buffers. */
  private serial<R>(fn: () => Promise<R>): Promise<R> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /**
   * Engine.step (present with `batchedStep: true`): rows of different sequences (continuous batching),
   * each row's tokens appended at its sequence's length in its own slot (the row table). The tokens
   * are rows of the decode-row plan (DecodeRowsPlan: each q4 weight read once for `batchRows` rows,
   * attention per row over its slot; with stepPrompts 'prefill' a row's prompt tokens go through the
   * prefill's kernels first), in passes of at most plan.maxRows rows; only the last token of
   * each row that wants logits goes on to lm_head and, for rows with `choose`, the token choice on the
   * GPU (only ids read back; other rows get their logits). A token's arithmetic depends only on its
   * own row, so a sequence's tokens do not depend on what shares its steps.
   */
  private stepBatch(rows: StepRow[]): Promise<(Float32Array | number | null)[]> {
    return this.serial(() => this.stepNow(rows));
  }

  private async stepNow(rows: StepRow[]): Promise<(Float32Array | number | null)[]> {
    this.assertUsable();
    const seqs = rows.map((r) => this.live(r.seq));
    if (new Set(seqs).size !== seqs.length) throw new InvalidInputError('a step takes each sequence at most once');
    rows.forEach((r, i) => {
      this.checkTokens(seqs[i]!, r.tokens);
      if (r.logits && r.choose) checkSampling({ ...r.choose.sampling, random: r.choose.random });
    });
    const plan = (this.decodeRows ??= this.buildDecodeRows());
    const vocab = this.config.vocabSize;
    const wanted = rows.filter((r) => r.logits && !r.choose).length;
    if (wanted > 0 && (!this.stepLogits || this.stepLogits.length < wanted * vocab)) this.stepLogits = new Float32Array(wanted * vocab);
    const out: (Float32Array | number | null)[] = rows.map(() => null);
    // prompt tokens (stepPrompts 'prefill'): a row's tokens but a last one wanting logits go through the
    // prefill's kernels into its slot first (submitted, not waited for); the decode pass starts after them
    const decodeFrom = rows.map((row) => (this.stepPrompts === 'prefill' ? row.tokens.length - (row.logits ? 1 : 0) : 0));
    for (const [r, row] of rows.entries()) {
      const n = decodeFrom[r]!;
      if (n > 0) await this.runChunks(this.slotOf(seqs[r]!), seqs[r]!.length, Array.prototype.slice.call(row.tokens, 0, n) as number[], 'none');
    }
    // the step's decode tokens in row order, cut into passes (a sequence's earlier positions in the same or an earlier pass)
    const passes: PassRow[][] = [[]];
    rows.forEach((row, r) => {
      for (let i = decodeFrom[r]!; i < row.tokens.length; i++) {
        if (passes.at(-1)!.length === plan.maxRows) passes.push([]);
        passes.at(-1)!.push({ r, i, head: row.logits && i === row.tokens.length - 1 });
      }
    });
    let nextLogits = 0;
    for (const part of passes) if (part.length > 0) nextLogits = await this.decodePass(plan, rows, seqs, part, out, nextLogits);
    rows.forEach((r, i) => {
      for (let k = 0; k < r.tokens.length; k++) seqs[i]!.tokens.push(r.tokens[k]!);
    });
    return out;
  }

  /**
   * One pass of the decode-row plan: token i of step row r at position length + i of its sequence,
   * the rows going on to lm_head first (the head dispatches take the first L rows). Ids of rows with
   * `choose` go to out[r], logits of the others to views of stepLogits from `nextLogits` on; returns
   * the next free logits row. A pass without head rows is submitted and not waited for.
   */
  private async decodePass(plan: DecodeRowsPlan, rows: StepRow[], seqs: WebGpuSequence[], part: PassRow[], out: (Float32Array | number | null)[], nextLogits: number): Promise<number> {
    const vocab = this.config.vocabSize;
    const ordered = [...part.filter((p) => p.head), ...part.filter((p) => !p.head)];
    const T = ordered.length, L = part.filter((p) => p.head).length;
    this.stepWords[StepWord.T] = T;
    this.stepWords[StepWord.pos0] = 0;
    const params = plan.paramWords.fill(0), paramFloats = new Float32Array(params.buffer);
    const groups = new Set<number>();
    let choosing = 0;
    ordered.forEach(({ r, i, head }, t) => {
      const seq = seqs[r]!, row = rows[r]!, slot = this.slotOf(seq);
      groups.add(slot.group.index);
      this.stepWords[STEP_HEADER_WORDS + t] = row.tokens[i]!;
      this.stepWords[this.rowsAt + 2 * t] = slot.word;
      this.stepWords[this.rowsAt + 2 * t + 1] = seq.length + i;
      if (head && row.choose) {
        const c = row.choose;
        choosing++;
        paramFloats[t * 8 + StepWord.random] = c.random;
        params[t * 8 + StepWord.topK] = c.sampling.topK;
        paramFloats[t * 8 + StepWord.temperature] = c.sampling.temperature;
        paramFloats[t * 8 + StepWord.topP] = c.sampling.topP;
        paramFloats[t * 8 + StepWord.minP] = c.sampling.minP;
      }
    });
    const device = this.gpu.device;
    device.queue.writeBuffer(this.a.step, 0, this.stepWords, 0, this.rowsAt + 2 * T);
    if (L > 0) device.queue.writeBuffer(plan.headStep, 0, new Uint32Array([L, 0, 0, 0]));
    if (choosing > 0) device.queue.writeBuffer(plan.params, 0, params, 0, L * 8);
    const logitRows = ordered.flatMap((p, t) => (p.head && !rows[p.r]!.choose ? [{ t, r: p.r }] : []));
    const idBytes = Math.ceil(L / 4) * 16;
    // a pass of decode rows that all choose (the steady state) was likely encoded during the previous one
    const steady = logitRows.length === 0 && choosing === T && L === T;
    const key = `${T}|${[...groups].join(',')}`;
    const spare = this.spareDecodePass;
    this.spareDecodePass = null;
    const commands = steady && spare?.key === key && spare.plan === plan ? spare.commands : this.encodeDecodePass(plan, T, L, groups, choosing > 0, logitRows.map((x) => x.t));
    device.queue.submit([commands]);
    // encode the next step's pass while the GPU runs this one (its ids and rows go in by writeBuffer)
    if (steady) this.spareDecodePass = { key, plan, commands: this.encodeDecodePass(plan, T, L, groups, true, []) };
    if (choosing > 0) {
      await this.mapRead(plan.tokensReadback, idBytes);
      const ids = new Uint32Array(plan.tokensReadback.getMappedRange(0, idBytes));
      ordered.forEach((p, t) => {
        if (p.head && rows[p.r]!.choose) out[p.r] = ids[t]!;
      });
      plan.tokensReadback.unmap();
    }
    if (logitRows.length > 0) {
      const bytes = logitRows.length * vocab * 4;
      await this.mapRead(this.a.logitsReadback, bytes);
      const got = new Float32Array(this.a.logitsReadback.getMappedRange(0, bytes));
      logitRows.forEach((x, k) => {
        const view = this.stepLogits!.subarray(nextLogits * vocab, (nextLogits + 1) * vocab);
        view.set(got.subarray(k * vocab, (k + 1) * vocab));
        out[x.r] = view;
        nextLogits++;
      });
      this.a.logitsReadback.unmap();
    }
    return nextLogits;
  }

  /**
   * The batched q4 products' rows a pass and lanes (benchmarks sweep them); the decode-row plan is
   * rebuilt at the next step.
   */
  setBatchKernel(rowsAPass: number, lanes: Omit<BatchedMatvecSplit, 'nb'>, products: 'tensor-core' | 'matvec' | 'tiled' = 'matvec', split?: TensorCoreSplit, combineQuantize = this.batchCombineQuantize): void {
    for (const b of this.decodeRows?.buffers ?? []) b.destroy();
    this.decodeRows = null;
    this.spareDecodePass = null;
    this.kvDecodeDispatches.clear();
    this.batchRows = rowsAPass;
    this.batchSplit = lanes;
    this.batchCombineQuantize = combineQuantize;
    this.batchProducts = products;
    if (split) this.batchTensorCoreSplit = split;
  }

  /**
   * Time of each dispatch of one decode-row pass over the rows of `seqs` (layer 0's, then the head's
   * and the token choice), each repeated `reps` times alone in a pass, the median of 3 (benchmarks).
   * Writes the sequences' next position in their slots (overwritten by their next step).
   */
  async profileDecodeRows(seqsIn: Sequence[], reps = 20): Promise<{ label: string; microseconds: number }[]> {
    return this.serial(async () => {
      const seqs = seqsIn.map((s) => this.live(s));
      const plan = (this.decodeRows ??= this.buildDecodeRows());
      const T = seqs.length;
      if (!(T >= 1 && T <= plan.maxRows)) throw new InvalidInputError(`profile: 1..${plan.maxRows} sequences`);
      this.stepWords[StepWord.T] = T;
      const groups = new Set<number>();
      seqs.forEach((seq, t) => {
        const slot = this.slotOf(seq);
        groups.add(slot.group.index);
        this.stepWords[STEP_HEADER_WORDS + t] = t % this.config.vocabSize;
        this.stepWords[this.rowsAt + 2 * t] = slot.word;
        this.stepWords[this.rowsAt + 2 * t + 1] = seq.length;
      });
      this.gpu.device.queue.writeBuffer(this.a.step, 0, this.stepWords, 0, this.rowsAt + 2 * T);
      const kv = [...[...groups].flatMap((g) => (plan.split ? this.kvDecodeDispatchesOf(plan, g)[0]! : this.kvBatchDispatchesOf(g)[0]!)), ...(plan.split ? [plan.split.combine[0]!] : [])];
      this.gpu.device.queue.writeBuffer(plan.headStep, 0, new Uint32Array([T, 0, 0, 0]));
      const list = [...this.plans.embedding, ...plan.layers[0]!.beforeAttention, ...kv, ...plan.layers[0]!.afterAttention, ...plan.head, ...plan.choose];
      return timeDispatches(this.gpu.device, list, T, reps, () => this.gpu.device.queue.onSubmittedWorkDone(), () => this.gpu.check());
    });
  }

  /**
   * One decode-row pass's commands: T rows through the layers, the first L through the head, the
   * choice (`choose`) and the copies of the ids and of logits rows `logitRows` (in that order) to
   * the readback buffers. Depends on the step buffer's contents only through the GPU.
   */
  private encodeDecodePass(plan: DecodeRowsPlan, T: number, L: number, groups: Set<number>, choose: boolean, logitRows: number[]): GPUCommandBuffer {
    const vocab = this.config.vocabSize;
    const encoder = this.gpu.device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    encodeDispatches(pass, this.plans.embedding, T);
    for (let l = 0; l < plan.layers.length; l++) {
      encodeDispatches(pass, plan.layers[l]!.beforeAttention, T);
      for (const g of groups) encodeDispatches(pass, plan.split ? this.kvDecodeDispatchesOf(plan, g)[l]! : this.kvBatchDispatchesOf(g)[l]!, T);
      if (plan.split) encodeDispatches(pass, [plan.split.combine[l]!], T);
      encodeDispatches(pass, plan.layers[l]!.afterAttention, T);
    }
    if (L > 0) encodeDispatches(pass, plan.head, L);
    if (choose) encodeDispatches(pass, plan.choose, L);
    pass.end();
    logitRows.forEach((t, k) => encoder.copyBufferToBuffer(this.a.logits, t * vocab * 4, this.a.logitsReadback, k * vocab * 4, vocab * 4));
    if (choose) encoder.copyBufferToBuffer(plan.tokens, 0, plan.tokensReadback, 0, Math.ceil(L / 4) * 16);
    return encoder.finish();
  }

  /** The decode-row plan (DecodeRowsPlan), made on the first batched step. */
  private buildDecodeRows(): DecodeRowsPlan {
    const c = this.config, gpu = this.gpu, a = this.a, w = this.weights, C = this.prefillChunk;
    const H = c.hiddenSize, ffn = c.intermediateSize;
    const qDim = c.numHeads * c.headDim, kvDim = c.numKvHeads * c.headDim, qkvDim = qDim + 2 * kvDim;
    const maxRows = Math.min(C, LOGITS_ROWS);
    const activations = this.matvecActivations;
    const widest = Math.max(H, qDim, ffn);
    // int8 x in the matvec's blocks (not for the tiled products, which quantize x their own way)
    const int8 = activations === 'int8' && gpu.subgroups && this.batchProducts !== 'tiled';
    // the tiled products on the int8 tensor cores a few tokens at a time: the norms and the SwiGLU write
    // x as int8 a token as they go, and the products after them take it (io.prepared)
    const layout8 = int8TokensLayout(gpu, H, ffn); // rows, or the direct kernel's tiles
    const tokens8 = this.batchProducts === 'tiled' && int8TokensInUse(gpu) && H % 64 === 0 && ffn % 64 === 0 ? int8TokenScratch(gpu, maxRows, widest, layout8) : null;
    const buffers: GPUBuffer[] = [];
    const buffer = (label: string, bytes: number, usage: GPUBufferUsageFlags) => {
      const b = gpu.createBuffer(label, Math.max(16, Math.ceil(bytes / 16) * 16), usage);
      buffers.push(b);
      return b;
    };
    // tensor cores: x as f16 rows (written by the norm, the SwiGLU or a copy) for every q4 product
    const tc = this.batchProducts === 'tensor-core' && H % 32 === 0 && ffn % 32 === 0 && qDim % 32 === 0 ? buffer('batch_x16', x16Bytes(maxRows, widest), STORAGE()) : undefined;
    const xq = int8 && !tc ? buffer('batch_xq', maxRows * Math.ceil(widest / 32) * 32, STORAGE()) : undefined;
    const xd = int8 && !tc ? buffer('batch_xd', maxRows * Math.ceil(widest / 32) * 8, STORAGE()) : undefined;
    const options = { activations: int8 ? ('int8' as const) : ('f32' as const), nb: this.batchRows, ...this.batchSplit, xq, xd };
    const tcSplit = this.batchTensorCoreSplit;
    // x quantized for the int8 products that read it (nothing where x is f32 or its columns are not whole units)
    const quantize = (x: GPUBuffer, cols: number): Dispatch[] => (tc ? [x16Op(gpu, cols, x, tc, a.step)] : int8 && cols % 32 === 0 ? [quantizeRowsOp(gpu, cols, maxRows, x, xq!, xd!, a.step)] : []);
    const product = (m: GpuMatrix, io: MatmulIo): Dispatch[] =>
      (tc ? batchedTensorCoreOp(gpu, m, io, { x16: tc, split: tcSplit }) : null) ??
      (this.batchProducts !== 'tiled' && !tc ? batchedMatvecOp(gpu, m, io, options) : null) ??
      matmulOp(gpu, m, { ...io, fewTokens: true }, 'tiled', maxRows);
    const stacked = (parts: GpuMatrix[], x: GPUBuffer, y: GPUBuffer, yStride: number, bias: GPUBuffer | null, prepared = new Map<string, GPUBuffer[]>()) => {
      let offset = 0; // x converted or quantized once for all the parts (or before them: prepared)
      return parts.flatMap((m) => {
        const d = product(m, { x, y, yStride, yOffset: offset, bias, residual: false, step: a.step, prepared });
        offset += m.rows;
        return d;
      });
    };
    // int8 x: rmsnorm and SwiGLU write the int8 blocks as they go (one dispatch each instead of two)
    const fuse = int8 && !tc && H % 32 === 0 && ffn % 32 === 0;
    // what the products after a norm (cols H) or the SwiGLU (ffn) find made: x as int8 a token, where tokens8
    const made = (cols: number) => (tokens8 ? int8TokensPrepared(tokens8, cols, layout8) : new Map<string, GPUBuffer[]>());
    const norm = (weight: GPUBuffer, step: GPUBuffer): Dispatch[] =>
      tokens8
        ? [quantizeTokensOp(gpu, H, { kind: 'norm', eps: c.rmsNormEps, x: a.x, weight }, a.xn, tokens8, step, layout8)]
        : tc
        ? [normX16Op(gpu, H, c.rmsNormEps, a.x, weight, a.xn, tc, step)]
        : fuse
        ? [normQuantizeRowsOp(gpu, H, c.rmsNormEps, maxRows, a.x, weight, a.xn, xq!, xd!, step)]
        : [rmsnormOp(gpu, { hidden: H, eps: c.rmsNormEps, mode: 'all' }, C, a.x, weight, a.xn, step), ...(int8 && H % 32 === 0 ? [quantizeRowsOp(gpu, H, maxRows, a.xn, xq!, xd!, step)] : [])];
    const swiglu = tokens8 ? [quantizeTokensOp(gpu, ffn, { kind: 'swiglu', gateUp: a.gateUp }, a.act, tokens8, a.step, layout8)] : tc ? [swigluX16Op(gpu, ffn, a.gateUp, a.act, tc, a.step)] : fuse ? [quantizeRowsOp(gpu, ffn, maxRows, a.act, xq!, xd!, a.step, a.gateUp)] : [swigluOp(gpu, ffn, C, a.gateUp, a.act, a.step), ...quantize(a.act, ffn)];
    // decode attention in chunks of keys, where its kernels apply
    const attention = { numHeads: c.numHeads, numKvHeads: c.numKvHeads, headDim: c.headDim, slidingWindow: c.slidingWindow, contextLength: this.contextLength, rotaryDim: c.rotaryDim };
    let split: DecodeRowsPlan['split'] = null;
    const combineQuantizes = this.batchCombineQuantize && fuse && qDim % 32 === 0 && c.headDim % 32 === 0;
    let quantizedByCombine = false;
    if (splitAttentionFits(attention) && c.headDim <= gpu.device.limits.maxComputeInvocationsPerWorkgroup) {
      const shape = { ...attention, splits: Math.max(1, attentionSplits(attention)) };
      const part = buffer('batch_attention_parts', maxRows * c.numHeads * shape.splits * (c.headDim + 2) * 4, STORAGE());
      if (part.size <= gpu.maxBindingBytes) {
        // int8 x: the merge writes the o product's int8 blocks too (batchCombineQuantize), else a dispatch of its own
        const combine = combineQuantizes ? quantizeRowsOp(gpu, qDim, maxRows, a.att, xq!, xd!, a.step, undefined, { records: part, shape }) : decodeCombineOp(gpu, shape, part, a.att);
        split = { shape, part, combine: w.layers.map(() => combine) };
        quantizedByCombine = combineQuantizes;
      }
    }
    const layers = w.layers.map((L): LayerPlan => ({
      beforeAttention: [...norm(L.attnNorm, a.step), ...stacked(L.qkv, a.xn, a.qkv, qkvDim, L.qkvBias, made(H))],
      afterAttention: [
        ...(quantizedByCombine ? [] : quantize(a.att, qDim)),
        ...product(L.o, { x: a.att, y: a.x, yStride: H, yOffset: 0, bias: null, residual: true, step: a.step }),
        ...norm(L.mlpNorm, a.step),
        ...stacked(L.gateUp, a.xn, a.gateUp, 2 * ffn, null, made(H)),
        ...swiglu,
        ...product(L.down, { x: a.act, y: a.x, yStride: H, yOffset: 0, bias: null, residual: true, step: a.step, prepared: made(ffn) }),
      ],
    }));
    // the head over the first L rows of the pass (their step: headStep, T = L)
    const headStep = buffer('batch_head_step', 16, STORAGE() | GPUBufferUsage.COPY_DST);
    const head = [
      ...norm(w.finalNorm, headStep),
      ...product(w.lmHead, { x: a.xn, y: a.logits, yStride: c.vocabSize, yOffset: 0, bias: null, residual: false, step: headStep, prepared: made(H) }),
    ];
    const params = buffer('batch_params', maxRows * 8 * 4, STORAGE() | GPUBufferUsage.COPY_DST);
    const tokens = buffer('batch_tokens', maxRows * 4, STORAGE() | GPUBufferUsage.COPY_SRC);
    const tokensReadback = buffer('batch_tokens_readback', maxRows * 4, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST);
    const parts = buffer('batch_argmax_parts', maxRows * ARGMAX_PARTS * 8, STORAGE());
    const choose = chooseRowsOp(gpu, c.vocabSize, maxRows, a.logits, tokens, params, parts);
    return { maxRows, layers, head, choose, split, headStep, params, paramWords: new Uint32Array(maxRows * 8), tokens, tokensReadback, buffers };
  }

  forward(seq: Sequence, tokens: ArrayLike<number>, allLogits = false): Promise<Float32Array> {
    return this.serial(() => this.forwardNow(seq, tokens, allLogits ? 'all' : 'last'));
  }

  /**
   * Appends tokens and chooses the next token on the GPU (argmax when temperature is 0, else
   * temperature / top-k / min-p / top-p with `random` as the draw); only the id is read back.
   */
  forwardToken(seq: Sequence, tokens: ArrayLike<number>, sampling: GpuSampling): Promise<number> {
    return this.serial(async () => {
      const s = sampling;
      checkSampling(s);
      this.stepWords[StepWord.topK] = s.topK;
      this.stepFloats[StepWord.random] = s.random;
      this.stepFloats[StepWord.temperature] = s.temperature;
      this.stepFloats[StepWord.topP] = s.topP;
      this.stepFloats[StepWord.minP] = s.minP;
      await this.forwardNow(seq, tokens, s.temperature === 0 ? 'argmax' : 'sample');
      return this.readToken();
    });
  }

  private async forwardNow(seqIn: Sequence, tokens: ArrayLike<number>, output: 'last' | 'all' | 'argmax' | 'sample'): Promise<Float32Array> {
    this.assertUsable();
    const seq = this.live(seqIn);
    this.checkTokens(seq, tokens);
    const out = await this.runChunks(this.slotOf(seq), seq.length, tokens, output);
    for (let i = 0; i < tokens.length; i++) seq.tokens.push(tokens[i]!);
    return out;
  }

  /**
   * Runs tokens through a cache slot from position `pos0`, a prefill chunk a submit; 'none' only
   * fills the cache (submitted, nothing read back). The caller counts the tokens in.
   */
  private async runChunks(slot: KvSlot, pos0: number, tokens: ArrayLike<number>, output: 'none' | 'last' | 'all' | 'argmax' | 'sample'): Promise<Float32Array> {
    const vocab = this.config.vocabSize;
    const T = tokens.length;
    const out = output === 'all' ? new Float32Array(T * vocab) : this.logitsOne;
    const stepTokens = output === 'all' ? Math.min(this.prefillChunk, LOGITS_ROWS) : this.prefillChunk;
    for (let s = 0; s < T; s += stepTokens) {
      const n = Math.min(stepTokens, T - s);
      const last = s + n === T;
      this.stepWords[StepWord.T] = n;
      this.stepWords[StepWord.pos0] = pos0 + s;
      for (let i = 0; i < n; i++) {
        this.stepWords[STEP_HEADER_WORDS + i] = tokens[s + i]!;
        this.stepWords[this.rowsAt + 2 * i] = slot.word;
        this.stepWords[this.rowsAt + 2 * i + 1] = pos0 + s + i;
      }
      this.gpu.device.queue.writeBuffer(this.a.step, 0, this.stepWords, 0, this.rowsAt + 2 * n);

      const device = this.gpu.device;
      let encoder = device.createCommandEncoder();
      let pass = encoder.beginComputePass();
      // a long step goes to the GPU in parts, so that it starts on the first layers while the rest are encoded
      const every = n > 1 ? this.submitLayers : 0;
      this.encodeLayers(pass, this.kvDispatchesOf(slot.group.index), n, pos0 + s + n, every > 0 ? (l) => {
        if ((l + 1) % every !== 0) return pass;
        pass.end();
        device.queue.submit([encoder.finish()]);
        encoder = device.createCommandEncoder();
        return (pass = encoder.beginComputePass());
      } : undefined);
      let readBytes = 0;
      if (output === 'all') {
        encodeDispatches(pass, n === 1 ? this.plans.lastLogits : this.plans.allLogits, n);
        readBytes = n * vocab * 4;
      } else if (last && output !== 'none') {
        encodeDispatches(pass, this.plans.lastLogits, n);
        if (output === 'last') readBytes = vocab * 4;
        else encodeDispatches(pass, [output === 'argmax' ? this.plans.argmax : this.plans.sample], 1);
      }
      pass.end();
      if (readBytes > 0) encoder.copyBufferToBuffer(this.a.logits, 0, this.a.logitsReadback, 0, readBytes);
      if (last && (output === 'argmax' || output === 'sample')) encoder.copyBufferToBuffer(this.a.token, 0, this.a.tokenReadback, 0, 16);
      this.gpu.device.queue.submit([encoder.finish()]);
      if (readBytes > 0) {
        await this.mapRead(this.a.logitsReadback, readBytes);
        out.set(new Float32Array(this.a.logitsReadback.getMappedRange(0, readBytes)), output === 'all' ? s * vocab : 0);
        this.a.logitsReadback.unmap();
      }
    }
    return out;
  }

  /**
   * Time of each dispatch of one prefill step of T tokens from position 0 (layer 0's, then the
   * embedding), each repeated `reps` times alone in a pass, the median of 3 (`pdvm bench --prefill N
   * --profile`). Runs on a sequence's KV slot, whose contents it overwrites.
   */
  async profilePrefill(seqIn: Sequence, T: number, reps = 20, pos0 = 0): Promise<{ label: string; microseconds: number }[]> {
    return this.serial(async () => {
      const seq = this.live(seqIn);
      if (!(T >= 1 && T <= this.prefillChunk)) throw new InvalidInputError(`profile: T must be in 1..${this.prefillChunk}`);
      if (!(pos0 >= 0 && pos0 + T <= this.contextLength)) throw new InvalidInputError(`profile: positions ${pos0}..${pos0 + T - 1} pass the context (${this.contextLength})`);
      const slot = this.slotOf(seq);
      this.stepWords[StepWord.T] = T;
      this.stepWords[StepWord.pos0] = pos0;
      for (let i = 0; i < T; i++) {
        this.stepWords[STEP_HEADER_WORDS + i] = i % this.config.vocabSize;
        this.stepWords[this.rowsAt + 2 * i] = slot.word;
        this.stepWords[this.rowsAt + 2 * i + 1] = pos0 + i;
      }
      this.gpu.device.queue.writeBuffer(this.a.step, 0, this.stepWords, 0, this.rowsAt + 2 * T);
      const plan = T === 1 ? this.plans.decode[0]! : this.plans.prefill[0]!;
      const kv = this.kvDispatchesOf(slot.group.index)[0]!;
      // the attention the step at these positions runs (split over keys past its first splits)
      const list = [...this.plans.embedding, ...plan.beforeAttention, ...layerKvFor(kv, T, pos0 + T), ...plan.afterAttention];
      const out = await timeDispatches(this.gpu.device, list, T, reps, () => this.gpu.device.queue.onSubmittedWorkDone(), () => this.gpu.check());
      seq.reset();
      return out;
    });
  }

  /** The step's dispatches; `end`: the position after its last token (long prompts split attention over keys). */
  /** `afterLayer` (a step submitted in parts): called after each layer's dispatches, gives the pass to go on in. */
  private encodeLayers(pass: GPUComputePassEncoder, kv: LayerKv[], T: number, end: number, afterLayer?: (l: number) => GPUComputePassEncoder): void {
    const layers = T === 1 ? this.plans.decode : this.plans.prefill;
    encodeDispatches(pass, this.plans.embedding, T);
    for (let l = 0; l < layers.length; l++) {
      encodeDispatches(pass, layers[l]!.beforeAttention, T);
      encodeDispatches(pass, layerKvFor(kv[l]!, T, end), T);
      encodeDispatches(pass, layers[l]!.afterAttention, T);
      if (afterLayer && l + 1 < layers.length) pass = afterLayer(l);
    }
  }

  /**
   * Engine.decodeOnDevice through the sequence's FusedDecoder (made on first use, over the sequence's
   * slot). The prompt but its last token is prefilled by the forward pass's chunked kernels into the
   * slot, the last starts the decode. Sequences decode independently of each other, so this waits
   * only for forward passes in flight (their activations are shared).
   */
  private async decodeFused(seqIn: Sequence, prompt: ArrayLike<number>, options: DeviceDecodeOptions): Promise<number[]> {
    this.assertUsable();
    const seq = this.live(seqIn);
    this.checkTokens(seq, prompt);
    if (!Number.isInteger(options.maxTokens) || options.maxTokens < 1) throw new InvalidInputError(`max tokens must be a whole number >= 1, got ${options.maxTokens}`);
    const slot = this.slotOf(seq);
    const decoder = (seq.decoder ??= guardAllocation(`the fused decoder's activations do not fit beside the model; use a smaller context length (--context)`, () =>
      new FusedDecoder(this.gpu, this.config, this.fusedWeights!, { path: 'fused', contextLength: this.contextLength, matvecActivations: this.matvecActivations, kv: { cache: this.kv, slot } }),
    ));
    // the slot holds the sequence's tokens, whichever pass appended them
    decoder.reset();
    decoder.advance(seq.length);
    const input = Array.from(prompt);
    // running from here on (the prefill included), so that no other call takes the sequence meanwhile
    const run = (async () => {
      if (input.length > 1) {
        await this.serial(() => this.runChunks(slot, decoder.length, input.slice(0, -1), 'none'));
        decoder.advance(input.length - 1);
      }
      return decoder.generate(input.slice(-1), {
        maxTokens: options.maxTokens,
        sampling: options.sampling,
        random: options.random,
        filter: options.filter,
        onToken: (id) => seq.isDisposed || options.onToken(id),
      });
    })();
    seq.running = run;
    let out: number[];
    try {
      out = await run;
    } finally {
      seq.running = null;
    }
    if (out.length > 0) {
      // the slot holds the prompt and every token but the last
      for (let i = 0; i < prompt.length; i++) seq.tokens.push(prompt[i]!);
      seq.tokens.push(...out.slice(0, -1));
      if (decoder.length !== seq.length) throw new Error(`fused decode: the decoder holds ${decoder.length} tokens, the sequence ${seq.length}`);
    }
    return out;
  }

  private async readToken(): Promise<number> {
    await this.mapRead(this.a.tokenReadback, 16);
    const id = new Uint32Array(this.a.tokenReadback.getMappedRange(0, 16))[0]!;
    this.a.tokenReadback.unmap();
    return id;
  }

  /** mapAsync that turns a lost device into DeviceLostError instead of waiting forever. */
  private async mapRead(buffer: GPUBuffer, bytes: number): Promise<void> {
    const lost = this.gpu.device.lost.then((info) => {
      throw new DeviceLostError(info.reason, info.message);
    });
    try {
      await Promise.race([buffer.mapAsync(GPUMapMode.READ, 0, bytes), lost]);
    } catch (e) {
      this.gpu.check();
      throw e;
    }
    this.gpu.check();
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.spare?.dispose();
    for (const b of this.decodeRows?.buffers ?? []) b.destroy();
    this.kv.dispose();
    if (this.ownsGpu) this.gpu.destroy();
  }
}

function checkSampling(s: GpuSampling): void {
  if (!(s.temperature >= 0) || !(s.topP > 0 && s.topP <= 1) || !(s.minP >= 0 && s.minP < 1) || !(s.random >= 0 && s.random < 1) || !(s.topK >= 0)) {
    throw new InvalidInputError(`invalid GPU sampling options ${JSON.stringify(s)}`);
  }
}

function allocateActivations(gpu: Gpu, c: ModelConfig, contextLength: number, chunk: number): Activations {
  const qDim = c.numHeads * c.headDim, kvDim = c.numKvHeads * c.headDim;
  const f32 = (label: string, floats: number, extra = 0) => gpu.createBuffer(label, floats * 4, GPUBufferUsage.STORAGE | extra);
  const { cos, sin } = ropeTables(c, contextLength);
  return {
    step: gpu.createBuffer('step', stepWords(STEP_HEADER_WORDS, chunk) * 4, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST),
    x: f32('x', chunk * c.hiddenSize),
    xn: f32('xn', chunk * c.hiddenSize),
    qkv: f32('qkv', chunk * (qDim + 2 * kvDim)),
    att: f32('att', chunk * qDim),
    gateUp: f32('gate_up', chunk * 2 * c.intermediateSize),
    act: f32('act', chunk * c.intermediateSize),
    logits: f32('logits', Math.min(chunk, LOGITS_ROWS) * c.vocabSize, GPUBufferUsage.COPY_SRC),
    token: gpu.createBuffer('token', 16, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC),
    cos: uploadVector(gpu, cos, 'rope_cos'),
    sin: uploadVector(gpu, sin, 'rope_sin'),
    logitsReadback: gpu.createBuffer('logits_readback', Math.min(chunk, LOGITS_ROWS) * c.vocabSize * 4, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST),
    tokenReadback: gpu.createBuffer('token_readback', 16, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST),
  };
}
