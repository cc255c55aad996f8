/**
 * The WebGPU backend's engine. At load: weights uploaded once, activations sized for one prefill
 * chunk, pipelines and bind groups built, the forward pass recorded as lists of dispatches. Per step:
 * one small writeBuffer (T, position, sampling values, token ids), one compute pass, one readback of
 * the logits (or of 4 bytes when the token is chosen on the GPU). Nothing is created per token.
 */
import { InvalidInputError } from '../../errors.js';
import type { ModelConfig } from '../../model/config.js';
import type { ModelWeights } from '../../model/weights.js';
import type { Engine, Sequence } from '../../runtime/engine.js';
import { ropeTables } from '../cpu/ops.js';
import { Gpu, type GpuOptions } from './device.js';
import { encodeDispatches, STEP_HEADER_WORDS, StepWord, type Dispatch } from './dispatch.js';
import { DeviceLostError, GpuOutOfMemoryError } from './errors.js';
import { argmaxOp, attentionOp, embeddingOp, matmulOp, rmsnormOp, ropeKvOp, sampleOp, swigluOp } from './ops.js';
import { gpuWeightBytes, uploadVector, uploadWeights, type GpuMatrix, type GpuModelWeights, type UploadOptions } from './weights.js';

export interface WebGpuEngineOptions extends GpuOptions, UploadOptions {
  /** Positions a sequence can hold; sizes each sequence's KV cache. */
  contextLength: number;
  /** Tokens per prefill step (activations are sized for it); default 128. */
  prefillChunk?: number;
  /** Use this device instead of acquiring one (the engine then does not destroy it). */
  gpu?: Gpu;
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

interface Activations {
  step: GPUBuffer; // u32: header + (chunk) token ids
  x: GPUBuffer; // (chunk, hidden) residual stream
  xn: GPUBuffer; // (chunk, hidden) normalised
  qkv: GPUBuffer; // (chunk, qDim + 2 kvDim)
  att: GPUBuffer; // (chunk, qDim)
  gateUp: GPUBuffer; // (chunk, 2 ffn)
  act: GPUBuffer; // (chunk, ffn)
  logits: GPUBuffer; // (chunk, vocab)
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

export class WebGpuSequence implements Sequence {
  length = 0;
  private disposed = false;
  constructor(
    readonly k: GPUBuffer[], // per layer: (contextLength, kvDim)
    readonly v: GPUBuffer[],
    /** Per layer: rope_kv then attention, bound to this sequence's cache. */
    readonly cacheDispatches: Dispatch[][],
  ) {}
  reset(): void {
    this.length = 0;
  }
  truncate(length: number): void {
    this.length = Math.min(this.length, Math.max(0, length));
  }
  get isDisposed(): boolean {
    return this.disposed;
  }
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const b of [...this.k, ...this.v]) b.destroy();
  }
}

function mb(bytes: number): string {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

export class WebGpuEngine implements Engine {
  readonly backend = 'webgpu';
  private readonly plans: Plans;
  private readonly logitsOne: Float32Array;
  private readonly stepWords: Uint32Array;
  private readonly stepFloats: Float32Array;
  private spare: WebGpuSequence | null;
  private queue: Promise<unknown> = Promise.resolve();
  private disposed = false;

  private constructor(
    readonly config: ModelConfig,
    readonly contextLength: number,
    readonly gpu: Gpu,
    private readonly ownsGpu: boolean,
    readonly weights: GpuModelWeights,
    private readonly a: Activations,
    /** Tokens per prefill step. */
    readonly prefillChunk: number,
    firstSequence: WebGpuSequence | null,
  ) {
    this.plans = this.buildPlans();
    this.logitsOne = new Float32Array(config.vocabSize);
    this.stepWords = new Uint32Array(STEP_HEADER_WORDS + prefillChunk);
    this.stepFloats = new Float32Array(this.stepWords.buffer);
    this.spare = firstSequence;
  }

  /** Acquires a device (unless given), uploads the weights and allocates one sequence's KV cache. */
  static async create(model: { config: ModelConfig; weights: ModelWeights }, options: WebGpuEngineOptions): Promise<WebGpuEngine> {
    const c = model.config;
    const ctx = options.contextLength;
    if (!Number.isInteger(ctx) || ctx < 1) throw new InvalidInputError(`context length must be a whole number >= 1, got ${ctx}`);
    const gpu = options.gpu ?? (await Gpu.acquire(options));
    try {
      const kvDim = c.numKvHeads * c.headDim;
      const qkvDim = (c.numHeads + 2 * c.numKvHeads) * c.headDim;
      const widest = Math.max(qkvDim, 2 * c.intermediateSize, c.vocabSize, c.hiddenSize) * 4;
      const chunk = Math.max(1, Math.min(options.prefillChunk ?? 128, ctx, Math.floor(gpu.maxBindingBytes / widest)));
      const cacheBytesPerLayer = ctx * kvDim * 4;
      if (cacheBytesPerLayer > gpu.maxBindingBytes) {
        throw new GpuOutOfMemoryError(
          `a KV cache of ${ctx} positions needs ${mb(cacheBytesPerLayer)} per layer for K (and V), over this device's storage binding limit of ${mb(gpu.maxBindingBytes)}; use a context length of at most ${Math.floor(gpu.maxBindingBytes / (kvDim * 4))}`,
        );
      }
      const weightBytes = gpuWeightBytes(model.weights, options);
      const cacheBytes = 2 * c.numLayers * cacheBytesPerLayer;
      const hint = `model weights take ${mb(weightBytes)} and a KV cache of ${ctx} positions ${mb(cacheBytes)}; use a smaller context length (--context) or a smaller model, or --backend cpu`;
      const weights = await gpu.allocating(`the model weights (${mb(weightBytes)})`, hint, () =>
        guardAllocation(hint, () => uploadWeights(gpu, model.weights, options, options.onProgress)),
      );
      const activations = await gpu.allocating('the activations', hint, () => guardAllocation(hint, () => allocateActivations(gpu, c, ctx, chunk)));
      const engine = new WebGpuEngine(c, ctx, gpu, !options.gpu, weights, activations, chunk, null);
      engine.spare = await gpu.allocating(`a KV cache of ${ctx} positions (${mb(cacheBytes)})`, hint, () => guardAllocation(hint, () => engine.newSequence()));
      return engine;
    } catch (e) {
      if (!options.gpu) gpu.destroy();
      throw e;
    }
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
      matmulOp(gpu, w.lmHead, { x: a.xn, y: a.logits, yStride: c.vocabSize, yOffset: 0, bias: null, residual: false, step: a.step }, kind, C);
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

  private newSequence(): WebGpuSequence {
    const c = this.config, gpu = this.gpu, a = this.a;
    const kvDim = c.numKvHeads * c.headDim;
    const bytes = this.contextLength * kvDim * 4;
    const k: GPUBuffer[] = [], v: GPUBuffer[] = [];
    const cacheDispatches: Dispatch[][] = [];
    for (let l = 0; l < c.numLayers; l++) {
      k.push(gpu.createBuffer(`kv.${l}.k`, bytes, STORAGE()));
      v.push(gpu.createBuffer(`kv.${l}.v`, bytes, STORAGE()));
      cacheDispatches.push([
        ropeKvOp(gpu, { numHeads: c.numHeads, numKvHeads: c.numKvHeads, headDim: c.headDim, rotaryDim: c.rotaryDim }, a.qkv, a.cos, a.sin, k[l]!, v[l]!, a.step),
        attentionOp(gpu, { numHeads: c.numHeads, numKvHeads: c.numKvHeads, headDim: c.headDim, slidingWindow: c.slidingWindow }, a.qkv, k[l]!, v[l]!, a.att, a.step),
      ]);
    }
    return new WebGpuSequence(k, v, cacheDispatches);
  }

  createSequence(): WebGpuSequence {
    this.assertUsable();
    const s = this.spare;
    if (s) {
      this.spare = null;
      return s;
    }
    return this.newSequence();
  }

  private assertUsable(): void {
    if (this.disposed) throw new InvalidInputError('this WebGPU engine was disposed');
    this.gpu.check();
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
    if (!(seqIn instanceof WebGpuSequence) || seqIn.isDisposed) throw new InvalidInputError('forward needs a live sequence from this engine\'s createSequence()');
    const seq = seqIn;
    const c = this.config;
    const T = tokens.length;
    if (T === 0) throw new InvalidInputError('forward needs at least one token');
    if (seq.length + T > this.contextLength) throw new InvalidInputError(`${seq.length + T} tokens do not fit the context length ${this.contextLength}`);
    for (let i = 0; i < T; i++) {
      const id = tokens[i]!;
      if (!(Number.isInteger(id) && id >= 0 && id < c.vocabSize)) throw new InvalidInputError(`token id ${id} is outside the vocabulary (0..${c.vocabSize - 1})`);
    }
    const vocab = c.vocabSize;
    const out = output === 'all' ? new Float32Array(T * vocab) : this.logitsOne;
    for (let s = 0; s < T; s += this.prefillChunk) {
      const n = Math.min(this.prefillChunk, T - s);
      const last = s + n === T;
      this.stepWords[StepWord.T] = n;
      this.stepWords[StepWord.pos0] = seq.length;
      for (let i = 0; i < n; i++) this.stepWords[STEP_HEADER_WORDS + i] = tokens[s + i]!;
      this.gpu.device.queue.writeBuffer(this.a.step, 0, this.stepWords, 0, STEP_HEADER_WORDS + n);

      const encoder = this.gpu.device.createCommandEncoder();
      const pass = encoder.beginComputePass();
      this.encodeLayers(pass, seq, n);
      let readBytes = 0;
      if (output === 'all') {
        encodeDispatches(pass, n === 1 ? this.plans.lastLogits : this.plans.allLogits, n);
        readBytes = n * vocab * 4;
      } else if (last) {
        encodeDispatches(pass, this.plans.lastLogits, n);
        if (output === 'last') readBytes = vocab * 4;
        else encodeDispatches(pass, [output === 'argmax' ? this.plans.argmax : this.plans.sample], 1);
      }
      pass.end();
      if (readBytes > 0) encoder.copyBufferToBuffer(this.a.logits, 0, this.a.logitsReadback, 0, readBytes);
      if (last && (output === 'argmax' || output === 'sample')) encoder.copyBufferToBuffer(this.a.token, 0, this.a.tokenReadback, 0, 16);
      this.gpu.device.queue.submit([encoder.finish()]);
      seq.length += n;
      if (readBytes > 0) {
        await this.mapRead(this.a.logitsReadback, readBytes);
        out.set(new Float32Array(this.a.logitsReadback.getMappedRange(0, readBytes)), output === 'all' ? s * vocab : 0);
        this.a.logitsReadback.unmap();
      }
    }
    return out;
  }

  private encodeLayers(pass: GPUComputePassEncoder, seq: WebGpuSequence, T: number): void {
    const layers = T === 1 ? this.plans.decode : this.plans.prefill;
    encodeDispatches(pass, this.plans.embedding, T);
    for (let l = 0; l < layers.length; l++) {
      encodeDispatches(pass, layers[l]!.beforeAttention, T);
      encodeDispatches(pass, seq.cacheDispatches[l]!, T);
      encodeDispatches(pass, layers[l]!.afterAttention, T);
    }
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

/** Dawn throws RangeError for a mapped allocation it cannot make: report it as out of memory. */
function guardAllocation<R>(hint: string, fn: () => R): R {
  try {
    return fn();
  } catch (e) {
    if (e instanceof RangeError || /memory|allocat/i.test((e as Error).message)) {
      throw new GpuOutOfMemoryError(`GPU allocation failed (${(e as Error).message}); ${hint}`);
    }
    throw e;
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
    logits: f32('logits', chunk * c.vocabSize, GPUBufferUsage.COPY_SRC),
    token: gpu.createBuffer('token', 16, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC),
    cos: uploadVector(gpu, cos, 'rope_cos'),
    sin: uploadVector(gpu, sin, 'rope_sin'),
    logitsReadback: gpu.createBuffer('logits_readback', chunk * c.vocabSize * 4, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST),
    tokenReadback: gpu.createBuffer('token_readback', 16, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST),
  };
}
