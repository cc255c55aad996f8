/**
 * The WebGPU backend's engine. At load: weights uploaded once, activations sized for one prefill
 * chunk, pipelines and bind groups built, the forward pass recorded as lists of dispatches. Per step:
 * one small writeBuffer (T, position, sampling values, token ids), one compute pass, one readback of
 * the logits (or of 4 bytes when the token is chosen on the GPU). Nothing is created per token.
 *
 * With `decode: 'fused'` (the default) the engine also decodes through the fused path
 * (`decodeOnDevice`: a FusedDecoder per sequence, one submit per token, tokens chosen on the GPU). The
 * weights are uploaded in the fused layout and the forward pass reads the same buffers wherever the
 * layouts coincide (fused/engine-weights.ts). Each sequence keeps the tokens it holds; its forward
 * cache and its decoder's cache are made on first use, and either one replays the tokens it lacks.
 * The decoder's cache has the forward cache's layout, so the forward pass's chunked kernels prefill it
 * (the prompt and any replay, all but the last token); the decoder steps from the last token.
 */
import { InvalidInputError } from '../../errors.js';
import type { ModelConfig } from '../../model/config.js';
import type { ModelWeights } from '../../model/weights.js';
import type { DeviceDecodeOptions, Engine, Sequence } from '../../runtime/engine.js';
import { ropeTables } from '../cpu/ops.js';
import { Gpu, type GpuOptions } from './device.js';
import { encodeDispatches, STEP_HEADER_WORDS, StepWord, type Dispatch } from './dispatch.js';
import { DeviceLostError, GpuOutOfMemoryError } from './errors.js';
import { FusedDecoder } from './fused/decoder.js';
import { fusedBuffersOf, gpuBuffersOf } from './fused/engine-weights.js';
import type { FusedModelWeights } from './fused/weights.js';
import { argmaxOp, attentionOp, embeddingOp, matmulOp, prefillPathDescription, rmsnormOp, ropeKvOp, sampleOp, swigluOp } from './ops.js';
import { gpuWeightBytes, uploadVector, type GpuMatrix, type GpuModelWeights, type UploadOptions } from './weights.js';
import { guardAllocation, uploadModelWeights } from './upload.js';

export interface WebGpuEngineOptions extends GpuOptions, UploadOptions {
  /** Positions a sequence can hold; sizes each sequence's KV cache. */
  contextLength: number;
  /**
   * Tokens per prefill step (activations are sized for it); default 512, which fills the GPU's cores
   * with the prefill's tiles. Logits of every position (perplexity) go out LOGITS_ROWS at a time.
   */
  prefillChunk?: number;
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

/** Rows of the logits buffer: forward(allLogits) runs its prompt in steps of at most this many tokens. */
const LOGITS_ROWS = 128;
const DEFAULT_PREFILL_CHUNK = 512;

interface Activations {
  step: GPUBuffer; // u32: header + (chunk) token ids
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

interface Plans {
  embedding: Dispatch[];
  decode: LayerPlan[]; // matvec kernels (one token)
  prefill: LayerPlan[]; // tiled kernels (T tokens)
  lastLogits: Dispatch[]; // final norm of row T-1, lm_head matvec -> logits row 0
  allLogits: Dispatch[]; // final norm of all rows, lm_head tiled -> logits rows 0..T-1
  argmax: Dispatch;
  sample: Dispatch;
}

/** A sequence's KV cache for the forward pass: per layer K and V, and the dispatches bound to them. */
interface ForwardCache {
  k: GPUBuffer[]; // per layer: (contextLength, kvDim)
  v: GPUBuffer[];
  /** Per layer: rope_kv then attention, bound to this cache. */
  dispatches: Dispatch[][];
}

/**
 * The tokens a sequence holds, and up to two KV caches of them, each made on first use: the forward
 * pass's and the fused decoder's. `cached` and `decoded` count the leading tokens each cache holds;
 * before a cache is used it is brought up to date by replaying the tokens it lacks.
 */
export class WebGpuSequence implements Sequence {
  readonly tokens: number[] = [];
  cache: ForwardCache | null = null;
  cached = 0;
  decoder: FusedDecoder | null = null;
  /** The forward pass's dispatches bound to the decoder's KV buffers (for chunked prefill into them). */
  decoderCache: ForwardCache | null = null;
  decoded = 0;
  /** The decode running on this sequence; dispose frees the decoder only after it ends. */
  running: Promise<number[]> | null = null;
  private disposed = false;

  get length(): number {
    return this.tokens.length;
  }
  reset(): void {
    this.truncate(0);
  }
  truncate(length: number): void {
    const n = Math.min(this.tokens.length, Math.max(0, Math.floor(length)));
    this.tokens.length = n;
    this.cached = Math.min(this.cached, n);
    this.decoded = Math.min(this.decoded, n);
  }
  get isDisposed(): boolean {
    return this.disposed;
  }
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    const free = () => {
      for (const b of [...(this.cache?.k ?? []), ...(this.cache?.v ?? [])]) b.destroy();
      this.decoder?.dispose();
    };
    if (this.running) void this.running.then(free, free);
    else free();
  }
}

function mb(bytes: number): string {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

export class WebGpuEngine implements Engine {
  readonly backend = 'webgpu';
  /** Present when the fused decode path is on (see WebGpuEngineOptions.decode). */
  readonly decodeOnDevice?: (seq: Sequence, prompt: ArrayLike<number>, options: DeviceDecodeOptions) => Promise<number[]>;
  private readonly plans: Plans;
  private readonly logitsOne: Float32Array;
  private readonly stepWords: Uint32Array;
  private readonly stepFloats: Float32Array;
  private spare: WebGpuSequence | null = null;
  private queue: Promise<unknown> = Promise.resolve();
  private disposed = false;
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
    /** Why the fused path is off although it was asked for; undefined otherwise. */
    readonly decodeNotice: string | undefined,
  ) {
    this.plans = this.buildPlans();
    this.logitsOne = new Float32Array(config.vocabSize);
    this.stepWords = new Uint32Array(STEP_HEADER_WORDS + prefillChunk);
    this.stepFloats = new Float32Array(this.stepWords.buffer);
    if (fusedWeights) this.decodeOnDevice = (seq, prompt, options) => this.decodeFused(seq, prompt, options);
  }

  /** The device, its features and the paths that run, as one line (`pdvm generate --verbose`). */
  describe(): string {
    return `${this.gpu.adapterDescription}; ${this.gpu.featureSummary}; decode ${this.decode}; prefill ${this.prefillChunk} tokens a step, products ${prefillPathDescription(this.gpu)}`;
  }

  /** 'fused' when generation decodes through the fused path, else 'unfused'. */
  get decode(): 'fused' | 'unfused' {
    return this.fusedWeights ? 'fused' : 'unfused';
  }

  /**
   * Acquires a device (unless given), uploads the weights and allocates one sequence's KV cache (the
   * fused decoder's when the fused path is on, else the forward pass's).
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
      const cacheBytesPerLayer = ctx * kvDim * 4;
      if (cacheBytesPerLayer > gpu.maxBindingBytes) {
        throw new GpuOutOfMemoryError(
          `a KV cache of ${ctx} positions needs ${mb(cacheBytesPerLayer)} per layer for K (and V), over this device's storage binding limit of ${mb(gpu.maxBindingBytes)}; use a context length of at most ${Math.floor(gpu.maxBindingBytes / (kvDim * 4))}`,
        );
      }
      const weightBytes = gpuWeightBytes(model.weights, options);
      const cacheBytes = 2 * c.numLayers * cacheBytesPerLayer;
      const hint = `model weights take ${mb(weightBytes)} and a KV cache of ${ctx} positions ${mb(cacheBytes)}; use a smaller contextLength or a smaller model, or backend: 'cpu'`;
      // a tensor at a time, lazy tensors read as they are uploaded (upload.ts)
      const uploaded = await uploadModelWeights(gpu, model.weights, { decode: options.decode ?? 'fused', upload: options, hint, onTensor: options.onProgress });
      const weights = uploaded.weights;
      let fused = uploaded.fused;
      let notice = uploaded.notice;
      const activations = await gpu.allocating('the activations', hint, () => guardAllocation(hint, () => allocateActivations(gpu, c, ctx, chunk)));
      // the first sequence's cache, allocated now so that a model that cannot hold one fails here; on
      // the fused path it is the decoder's, which also builds (and so checks) the fused kernels
      const spare = new WebGpuSequence();
      if (fused) {
        try {
          spare.decoder = await gpu.allocating(`the fused decoder with a KV cache of ${ctx} positions (${mb(cacheBytes)})`, hint, () =>
            guardAllocation(hint, () => new FusedDecoder(gpu, c, fused!, { path: 'fused', contextLength: ctx, matvecActivations: options.matvecActivations })),
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
      const engine = new WebGpuEngine(c, ctx, gpu, !options.gpu, weights, activations, chunk, fused, notice);
      engine.matvecActivations = options.matvecActivations ?? 'int8';
      if (!spare.decoder) spare.cache = await gpu.allocating(`a KV cache of ${ctx} positions (${mb(cacheBytes)})`, hint, () => guardAllocation(hint, () => engine.newCache()));
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
  static async overGpuWeights(gpu: Gpu, config: ModelConfig, weights: GpuModelWeights, options: { contextLength: number; prefillChunk?: number }): Promise<WebGpuEngine> {
    const c = config, ctx = options.contextLength;
    const widest = Math.max((c.numHeads + 2 * c.numKvHeads) * c.headDim, 2 * c.intermediateSize, c.vocabSize, c.hiddenSize) * 4;
    const chunk = Math.max(1, Math.min(options.prefillChunk ?? DEFAULT_PREFILL_CHUNK, ctx, Math.floor(gpu.maxBindingBytes / widest)));
    const hint = 'use a smaller --context or --prefill';
    const activations = await gpu.allocating('the activations', hint, () => guardAllocation(hint, () => allocateActivations(gpu, c, ctx, chunk)));
    const engine = new WebGpuEngine(c, ctx, gpu, false, weights, activations, chunk, null, undefined);
    const spare = new WebGpuSequence();
    spare.cache = await gpu.allocating(`a KV cache of ${ctx} positions`, hint, () => guardAllocation(hint, () => engine.newCache()));
    engine.spare = spare;
    return engine;
  }

  private buildPlans(): Plans {
    const c = this.config, gpu = this.gpu, a = this.a, w = this.weights, C = this.prefillChunk;
    const H = c.hiddenSize, ffn = c.intermediateSize;
    const qDim = c.numHeads * c.headDim, kvDim = c.numKvHeads * c.headDim, qkvDim = qDim + 2 * kvDim;
    const stacked = (parts: GpuMatrix[], x: GPUBuffer, y: GPUBuffer, yStride: number, bias: GPUBuffer | null, kind: 'matvec' | 'tiled') => {
      let offset = 0;
      return parts.flatMap((m) => {
        const d = matmulOp(gpu, m, { x, y, yStride, yOffset: offset, bias, residual: false, step: a.step }, kind, C);
        offset += m.rows;
        return d;
      });
    };
    const layerPlans = (kind: 'matvec' | 'tiled'): LayerPlan[] =>
      w.layers.map((L) => ({
        beforeAttention: [
          rmsnormOp(gpu, { hidden: H, eps: c.rmsNormEps, mode: 'all' }, C, a.x, L.attnNorm, a.xn, a.step),
          ...stacked(L.qkv, a.xn, a.qkv, qkvDim, L.qkvBias, kind),
        ],
        afterAttention: [
          ...matmulOp(gpu, L.o, { x: a.att, y: a.x, yStride: H, yOffset: 0, bias: null, residual: true, step: a.step }, kind, C),
          rmsnormOp(gpu, { hidden: H, eps: c.rmsNormEps, mode: 'all' }, C, a.x, L.mlpNorm, a.xn, a.step),
          ...stacked(L.gateUp, a.xn, a.gateUp, 2 * ffn, null, kind),
          swigluOp(gpu, ffn, C, a.gateUp, a.act, a.step),
          ...matmulOp(gpu, L.down, { x: a.act, y: a.x, yStride: H, yOffset: 0, bias: null, residual: true, step: a.step }, kind, C),
        ],
      }));
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

  /**
   * A forward-pass KV cache for the whole context: new buffers, or `over` a fused decoder's (the same
   * (contextLength, kvDim) layout), which the forward pass then prefills in chunks.
   */
  private newCache(over?: { k: GPUBuffer[]; v: GPUBuffer[] }): ForwardCache {
    const c = this.config, gpu = this.gpu, a = this.a;
    const kvDim = c.numKvHeads * c.headDim;
    const bytes = this.contextLength * kvDim * 4;
    const k: GPUBuffer[] = [], v: GPUBuffer[] = [];
    const dispatches: Dispatch[][] = [];
    for (let l = 0; l < c.numLayers; l++) {
      k.push(over ? over.k[l]! : gpu.createBuffer(`kv.${l}.k`, bytes, STORAGE()));
      v.push(over ? over.v[l]! : gpu.createBuffer(`kv.${l}.v`, bytes, STORAGE()));
      dispatches.push([
        ropeKvOp(gpu, { numHeads: c.numHeads, numKvHeads: c.numKvHeads, headDim: c.headDim, rotaryDim: c.rotaryDim }, a.qkv, a.cos, a.sin, k[l]!, v[l]!, a.step),
        attentionOp(gpu, { numHeads: c.numHeads, numKvHeads: c.numKvHeads, headDim: c.headDim, slidingWindow: c.slidingWindow }, a.qkv, k[l]!, v[l]!, a.att, a.step),
      ]);
    }
    return { k, v, dispatches };
  }

  /** A sequence; its caches are made on first use (the first one's were made at load). */
  createSequence(): WebGpuSequence {
    this.assertUsable();
    const s = this.spare;
    if (s) {
      this.spare = null;
      return s;
    }
    return new WebGpuSequence();
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
      if (!(s.temperature >= 0) || !(s.topP > 0 && s.topP <= 1) || !(s.minP >= 0 && s.minP < 1) || !(s.random >= 0 && s.random < 1) || !(s.topK >= 0)) {
        throw new InvalidInputError(`invalid GPU sampling options ${JSON.stringify(s)}`);
      }
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
    const cache = (seq.cache ??= guardAllocation(`a KV cache of ${this.contextLength} positions does not fit beside the model; use a smaller contextLength`, () => this.newCache()));
    // tokens the fused decoder appended since this cache was last used
    if (seq.cached < seq.length) {
      await this.runChunks(cache, seq.cached, seq.tokens.slice(seq.cached), 'none');
      seq.cached = seq.length;
    }
    const out = await this.runChunks(cache, seq.cached, tokens, output);
    seq.cached += tokens.length;
    for (let i = 0; i < tokens.length; i++) seq.tokens.push(tokens[i]!);
    return out;
  }

  /**
   * Runs tokens through a forward cache from position `pos0`, a prefill chunk a submit; 'none' only
   * fills the cache (submitted, nothing read back). The caller counts the tokens in.
   */
  private async runChunks(cache: ForwardCache, pos0: number, tokens: ArrayLike<number>, output: 'none' | 'last' | 'all' | 'argmax' | 'sample'): Promise<Float32Array> {
    const vocab = this.config.vocabSize;
    const T = tokens.length;
    const out = output === 'all' ? new Float32Array(T * vocab) : this.logitsOne;
    const stepTokens = output === 'all' ? Math.min(this.prefillChunk, LOGITS_ROWS) : this.prefillChunk;
    for (let s = 0; s < T; s += stepTokens) {
      const n = Math.min(stepTokens, T - s);
      const last = s + n === T;
      this.stepWords[StepWord.T] = n;
      this.stepWords[StepWord.pos0] = pos0 + s;
      for (let i = 0; i < n; i++) this.stepWords[STEP_HEADER_WORDS + i] = tokens[s + i]!;
      this.gpu.device.queue.writeBuffer(this.a.step, 0, this.stepWords, 0, STEP_HEADER_WORDS + n);

      const encoder = this.gpu.device.createCommandEncoder();
      const pass = encoder.beginComputePass();
      this.encodeLayers(pass, cache, n);
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
   * --profile`). Runs on a sequence's forward cache, whose contents it overwrites.
   */
  async profilePrefill(seqIn: Sequence, T: number, reps = 20): Promise<{ label: string; microseconds: number }[]> {
    return this.serial(async () => {
      const seq = this.live(seqIn);
      if (!(T >= 1 && T <= this.prefillChunk)) throw new InvalidInputError(`profile: T must be in 1..${this.prefillChunk}`);
      const cache = (seq.cache ??= this.newCache());
      this.stepWords[StepWord.T] = T;
      this.stepWords[StepWord.pos0] = 0;
      for (let i = 0; i < T; i++) this.stepWords[STEP_HEADER_WORDS + i] = i % this.config.vocabSize;
      this.gpu.device.queue.writeBuffer(this.a.step, 0, this.stepWords, 0, STEP_HEADER_WORDS + T);
      const plan = T === 1 ? this.plans.decode[0]! : this.plans.prefill[0]!;
      const list = [...this.plans.embedding, ...plan.beforeAttention, ...cache.dispatches[0]!, ...plan.afterAttention];
      const out: { label: string; microseconds: number }[] = [];
      for (const d of list) {
        const times: number[] = [];
        for (let r = 0; r < 3; r++) {
          const encoder = this.gpu.device.createCommandEncoder();
          const pass = encoder.beginComputePass();
          for (let i = 0; i < reps; i++) encodeDispatches(pass, [d], T);
          pass.end();
          const t0 = performance.now();
          this.gpu.device.queue.submit([encoder.finish()]);
          await this.gpu.device.queue.onSubmittedWorkDone();
          times.push(((performance.now() - t0) * 1000) / reps);
        }
        this.gpu.check();
        times.sort((a, b) => a - b);
        out.push({ label: d.label, microseconds: times[1]! });
      }
      seq.reset();
      return out;
    });
  }

  private encodeLayers(pass: GPUComputePassEncoder, cache: ForwardCache, T: number): void {
    const layers = T === 1 ? this.plans.decode : this.plans.prefill;
    encodeDispatches(pass, this.plans.embedding, T);
    for (let l = 0; l < layers.length; l++) {
      encodeDispatches(pass, layers[l]!.beforeAttention, T);
      encodeDispatches(pass, cache.dispatches[l]!, T);
      encodeDispatches(pass, layers[l]!.afterAttention, T);
    }
  }

  /**
   * Engine.decodeOnDevice through the sequence's FusedDecoder (made on first use, with its own KV
   * cache). The tokens its cache lacks (any the forward pass appended, then the prompt) but the last
   * are prefilled by the forward pass's chunked kernels straight into the decoder's cache, the last
   * starts the decode. Sequences decode independently of each other, so this waits only for forward
   * passes in flight (their activations are shared).
   */
  private async decodeFused(seqIn: Sequence, prompt: ArrayLike<number>, options: DeviceDecodeOptions): Promise<number[]> {
    this.assertUsable();
    const seq = this.live(seqIn);
    this.checkTokens(seq, prompt);
    if (!Number.isInteger(options.maxTokens) || options.maxTokens < 1) throw new InvalidInputError(`max tokens must be a whole number >= 1, got ${options.maxTokens}`);
    const decoder = (seq.decoder ??= guardAllocation(`a KV cache of ${this.contextLength} positions does not fit beside the model; use a smaller contextLength`, () =>
      new FusedDecoder(this.gpu, this.config, this.fusedWeights!, { path: 'fused', contextLength: this.contextLength, matvecActivations: this.matvecActivations }),
    ));
    // a truncated sequence: the decoder's cache holds more than the sequence, so it starts over
    if (decoder.length !== seq.decoded) {
      decoder.reset();
      seq.decoded = 0;
    }
    const input = [...seq.tokens.slice(seq.decoded), ...Array.from(prompt)];
    // running from here on (the prefill included), so that no other call takes the sequence meanwhile
    const run = (async () => {
      if (input.length > 1) {
        const view = (seq.decoderCache ??= this.newCache(decoder.kv));
        await this.serial(() => this.runChunks(view, decoder.length, input.slice(0, -1), 'none'));
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
    } catch (e) {
      decoder.reset();
      seq.decoded = 0;
      throw e;
    } finally {
      seq.running = null;
    }
    if (out.length > 0) {
      // the decoder holds the input and every token but the last
      for (let i = 0; i < prompt.length; i++) seq.tokens.push(prompt[i]!);
      seq.tokens.push(...out.slice(0, -1));
      seq.decoded = decoder.length;
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
    if (this.ownsGpu) this.gpu.destroy();
  }
}

function allocateActivations(gpu: Gpu, c: ModelConfig, contextLength: number, chunk: number): Activations {
  const qDim = c.numHeads * c.headDim, kvDim = c.numKvHeads * c.headDim;
  const f32 = (label: string, floats: number, extra = 0) => gpu.createBuffer(label, floats * 4, GPUBufferUsage.STORAGE | extra);
  const { cos, sin } = ropeTables(c, contextLength);
  return {
    step: gpu.createBuffer('step', (STEP_HEADER_WORDS + chunk) * 4, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST),
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
