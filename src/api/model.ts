/**
 * The library API: `loadModel(path)` gives a `Model` that generates from a prompt or a chat, streamed
 * or whole, from any number of callers at once (they share one engine, each with its own KV cache).
 *
 *   const model = await loadModel('models/brown-llama-12m.upg');
 *   for await (const chunk of model.generate('The jury said', { maxTokens: 20, stream: true })) ...
 *   const { text } = await model.chat([{ role: 'user', content: 'Hello' }], { temperature: 0 });
 */
import { createEngine } from '../backends/index.js';
import { AbortError, InvalidInputError } from '../errors.js';
import { checkContextLength } from '../model/config.js';
import { loadModel as loadModelFiles, type LoadedModel, type LoadProgress, type ModelSource } from '../model/load.js';
import type { FetchFunction } from '../io/http.js';
import { generationConfigSource, generationDefaults } from '../runtime/defaults.js';
import type { Engine } from '../runtime/engine.js';
import { PREFILL_CHUNK, type GenerateOptions as RuntimeGenerateOptions, type GenerationContext, type GenerationResult } from '../runtime/generate.js';
import { GrammarCompiler, GrammarError, type ResponseFormat, type TokenizerJson, jumpTokenizer } from '../runtime/grammar/compiler.js';
import { resolveSampling, type SamplingOptions } from '../runtime/sampling.js';
import type { Constraint } from '../runtime/token-filter.js';
import type { StructuralTag } from '@mlc-ai/web-xgrammar';
import type { ChatMessage, ChatTemplateExtras } from '../tokenizer/tokenizer.js';
import { ContextLengthError, ModelDisposedError } from './errors.js';
import { kvCacheBytes, Scheduler, type SchedulerStats } from './scheduler.js';
import { GenerationStream } from './stream.js';

export type Backend = 'cpu' | 'webgpu' | 'auto';

export interface LoadModelOptions {
  /** Where to run the model (default 'cpu'; 'auto' tries WebGPU first). */
  backend?: Backend;
  /**
   * WebGPU only: 'fused' (default) decodes through the fused path, tokens chosen on the GPU;
   * 'unfused' through the forward pass and CPU sampling. Penalties always take the forward path.
   */
  decode?: 'fused' | 'unfused';
  /**
   * WebGPU fused path only: x of the q4 matrix-vector products, 'int8' (default; blocks of 32 with
   * dot4I8Packed, +0.03% NLL on the demo model) or 'f32' (the CPU's numerics). docs/PERFORMANCE.md.
   */
  matvecActivations?: 'int8' | 'f32';
  /** WebGPU only: the KV cache's storage, 'f16' (default: half the bytes) or 'f32' (docs/KV-CACHE.md). */
  kvCache?: 'f16' | 'f32';
  /**
   * WebGPU, where int8 subgroup matrices pass their self-test: the prefill's q4 products on the int8
   * tensor cores, 'row' (default, scaled by row, an int8 copy of W) or 'row-q4' (no copy), or false
   * (f16 tensor cores). Default: PDVM_PREFILL_I8, else 'row'. docs/PERFORMANCE.md.
   */
  prefillInt8?: 'row' | 'row-q4' | false;
  /** Positions each generation may hold, prompt included (default: the model's, at most 4096). */
  contextLength?: number;
  /**
   * Generations decoding at once, in one batched step where the backend batches; more wait in a
   * queue. Default: as many KV caches as fit in 2 GiB, between 1 and 32 (`defaultMaxConcurrency`).
   */
  maxConcurrency?: number;
  /**
   * Bytes of KV caches kept after generations end, for prefix reuse (default 256 MiB; 0 turns reuse
   * off). Least recently used first out; a kept cache gives way when a running generation needs memory.
   */
  prefixCacheBytes?: number;
  /**
   * Prompt tokens a batched step prefills at most, over all prompts being read (default 64): larger
   * cuts the time to first token of a burst, smaller keeps running streams smoother.
   */
  stepPrefillTokens?: number;
  /**
   * WebGPU: generations run together through the engine's batched step (continuous batching over the
   * pooled KV cache) where the engine offers one; default false, as a single stream decodes faster
   * through the fused path (see soloOnDevice).
   */
  batchedStep?: boolean;
  /**
   * With batchedStep: a generation decoding alone (none other running or queued, no penalties, no
   * grammar) takes the fused decode path until another arrives, then joins the batch from its KV slot
   * (`pdvm serve --batched-step` sets it). Default false: a lone generation steps through the batched
   * kernels too, so a request's tokens are exactly the same alone or batched.
   */
  soloOnDevice?: boolean;
  /** Generations allowed to wait for a slot; past that, generate() throws QueueFullError (default 64). */
  maxQueued?: number;
  /** Called as the model loads: bytes downloaded ('download') and tensors read ('tensors'), each of a total. */
  onProgress?: (progress: LoadProgress) => void;
  /** Cancels the load: loadModel rejects with AbortError. */
  signal?: AbortSignal;
  /** URLs: headers sent with every request (e.g. { Authorization: 'Bearer hf_...' } for a gated repository). */
  headers?: Record<string, string>;
  /** URLs: used instead of the global fetch. */
  fetch?: FetchFunction;
  /**
   * URLs in a browser: keep the downloaded files in the origin's private storage (OPFS) and load them
   * from there next time, revalidated by ETag (default true; see listCachedModels, deleteCachedModel).
   */
  cache?: boolean;
}

export interface GenerateOptions extends SamplingOptions {
  /** New tokens at most. Default: 256, or what is left of the context if less. */
  maxTokens?: number;
  /** Generation ends before the first occurrence of any of these (not included in the text). */
  stop?: string | string[];
  /** Keep generating past the end-of-sequence token. */
  ignoreEos?: boolean;
  /** Token ids that end generation. Default: the model's EOS ids; for chat(), also the template's end-of-turn token. */
  eosTokenIds?: number[];
  /** Cancels the generation, queued or running: the stream and the promise reject with AbortError. */
  signal?: AbortSignal;
  /** true: return a GenerationStream (async iterable of chunks); false or absent: a promise of the result. */
  stream?: boolean;
  /**
   * Structured output: `{ type: 'json_object' }` or `{ type: 'json_schema', schema, strict? }`; every
   * token is chosen among those the schema allows, so output that ends with finishReason 'stop'
   * parses and validates. `strict: true` refuses schema keywords the engine cannot enforce.
   */
  responseFormat?: ResponseFormat;
  /**
   * A grammar the output must match: GBNF text (xgrammar's EBNF; start rule `root`), or an xgrammar
   * structural tag (`{ type: 'structural_tag', format: {...} }`).
   */
  grammar?: Grammar;
  /** A constraint compiled beforehand by `model.compileConstraint` (reused across generations). */
  constraint?: Constraint | null;
}

export type Grammar = string | StructuralTag;
export type { Constraint, ResponseFormat };

/** A plain-text prompt, or token ids as they are (for models without a tokenizer). */
export type Prompt = string | number[];

export type { ChatMessage, GenerationResult, LoadProgress, SamplingOptions };
export type { GenerationChunk } from '../runtime/generate.js';
export { GenerationStream } from './stream.js';

/** Chat templates end each turn with a token that should end generation too; these are the common ones. */

export class Model {
  /** The model's name: its folder or file name without extension. */
  readonly id: string;
  /** Set when `backend: 'auto'` fell back to another backend, or the fused decode path to the forward pass, saying why. */
  readonly backendNotice: string | undefined;
  private readonly scheduler: Scheduler;
  private readonly context: GenerationContext;
  /** Token ids that end a chat answer: the EOS ids and the chat template's end-of-turn token. */
  readonly chatEndTokenIds: number[];
  private disposed = false;
  private grammars: GrammarCompiler | null = null;

  constructor(readonly loaded: LoadedModel, readonly engine: Engine, options: { maxConcurrency?: number; maxQueued?: number; prefixCacheBytes?: number; stepPrefillTokens?: number; backendNotice?: string; soloOnDevice?: boolean } = {}) {
    this.id = modelId(loaded.path);
    this.backendNotice = options.backendNotice;
    this.context = {
      engine,
      tokenizer: loaded.tokenizer,
      defaults: generationDefaults(loaded.generationConfig, generationConfigSource(loaded.path)),
      eosTokenIds: loaded.config.eosTokenIds,
    };
    this.chatEndTokenIds = loaded.tokenizer?.chatEndTokenIds(loaded.config.eosTokenIds) ?? loaded.config.eosTokenIds;
    const maxActive = options.maxConcurrency ?? defaultMaxConcurrency(engine);
    const maxQueued = options.maxQueued ?? 64;
    const prefixCacheBytes = options.prefixCacheBytes ?? DEFAULT_PREFIX_CACHE_BYTES;
    if (!Number.isInteger(maxActive) || maxActive < 1) throw new InvalidInputError(`max concurrency must be a whole number >= 1, got ${maxActive}`);
    if (!Number.isInteger(maxQueued) || maxQueued < 0) throw new InvalidInputError(`max queued must be a whole number >= 0, got ${maxQueued}`);
    if (!Number.isFinite(prefixCacheBytes) || prefixCacheBytes < 0) throw new InvalidInputError(`prefix cache bytes must be >= 0, got ${prefixCacheBytes}`);
    const prefillTokens = options.stepPrefillTokens ?? PREFILL_CHUNK;
    if (!Number.isInteger(prefillTokens) || prefillTokens < 1) throw new InvalidInputError(`step prefill tokens must be a whole number >= 1, got ${prefillTokens}`);
    this.scheduler = new Scheduler(engine, this.context, { maxActive, maxQueued, prefixCacheBytes, prefillTokens, soloOnDevice: options.soloOnDevice });
  }

  get backend(): 'cpu' | 'webgpu' {
    return this.engine.backend;
  }

  get contextLength(): number {
    return this.engine.contextLength;
  }

  get hasTokenizer(): boolean {
    return this.loaded.tokenizer !== null;
  }

  get hasChatTemplate(): boolean {
    return this.loaded.tokenizer?.hasChatTemplate ?? false;
  }

  /** Generations holding a KV cache slot now, and waiting for one. */
  get activity(): { active: number; queued: number } {
    return { active: this.scheduler.activeCount, queued: this.scheduler.queuedCount };
  }

  /** Generations decoding at once at most (the batch size). */
  get maxConcurrency(): number {
    return this.scheduler.limits.maxActive;
  }

  /** The scheduler's state now: batch rows of the latest step, KV caches running and kept, bytes. */
  get schedulerStats(): SchedulerStats {
    return this.scheduler.stats;
  }

  /** Text to token ids; `addSpecialTokens` adds what the tokenizer adds to a plain prompt (a BOS...). */
  tokenize(text: string, options: { addSpecialTokens?: boolean } = {}): number[] {
    return this.tokenizer().encode(text, options.addSpecialTokens ?? true);
  }

  detokenize(ids: number[], options: { skipSpecialTokens?: boolean } = {}): string {
    return this.tokenizer().decode(ids, options.skipSpecialTokens ?? false);
  }

  /** Token ids of a plain prompt, as generate() feeds it to the model. */
  promptIds(prompt: Prompt): number[] {
    if (typeof prompt !== 'string') {
      if (!Array.isArray(prompt) || prompt.some((id) => !Number.isInteger(id) || id < 0 || id >= this.loaded.config.vocabSize)) {
        throw new InvalidInputError(`a token-id prompt must be a list of whole numbers in 0..${this.loaded.config.vocabSize - 1}`);
      }
      return [...prompt];
    }
    const ids = this.tokenize(prompt, { addSpecialTokens: true });
    const bos = this.loaded.config.bosTokenId;
    return ids.length === 0 && bos !== null ? [bos] : ids;
  }

  /** Token ids of a chat: the model's chat template with the assistant's turn opened. */
  chatPromptIds(messages: ChatMessage[], extras: ChatTemplateExtras = {}): number[] {
    const tokenizer = this.tokenizer();
    return tokenizer.encode(tokenizer.applyChatTemplate(messages, true, extras), false);
  }

  /** The chat template's source, or null (tool calling reads which format it speaks). */
  get chatTemplate(): string | null {
    return this.loaded.tokenizer?.files.chatTemplate ?? null;
  }

  /** Continues a prompt. With `stream: true`, an async iterable of chunks (with `result`); else the whole result. */
  generate(prompt: Prompt, options: GenerateOptions & { stream: true }): GenerationStream;
  generate(prompt: Prompt, options?: GenerateOptions & { stream?: false }): Promise<GenerationResult>;
  generate(prompt: Prompt, options?: GenerateOptions): GenerationStream | Promise<GenerationResult>;
  generate(prompt: Prompt, options: GenerateOptions = {}): GenerationStream | Promise<GenerationResult> {
    return this.run(() => this.promptIds(prompt), this.context.eosTokenIds, options);
  }

  /** Answers a chat (the model's chat template applied). Same forms as generate(). */
  chat(messages: ChatMessage[], options: GenerateOptions & { stream: true }): GenerationStream;
  chat(messages: ChatMessage[], options?: GenerateOptions & { stream?: false }): Promise<GenerationResult>;
  chat(messages: ChatMessage[], options?: GenerateOptions): GenerationStream | Promise<GenerationResult>;
  chat(messages: ChatMessage[], options: GenerateOptions = {}): GenerationStream | Promise<GenerationResult> {
    return this.run(() => this.chatPromptIds(messages), this.chatEndTokenIds, options);
  }

  /**
   * Compiles a response format or grammar into a Constraint (cached by its text) that
   * `generate`/`chat` take as `constraint`; null for plain text. Rejects with GrammarError (an
   * InvalidInputError) naming the problem: a schema or grammar xgrammar cannot compile, or with
   * `strict`, a keyword it cannot enforce.
   */
  async compileConstraint(spec: { responseFormat?: ResponseFormat; grammar?: Grammar }): Promise<Constraint | null> {
    if (spec.responseFormat !== undefined && spec.grammar !== undefined) throw new GrammarError('give responseFormat or grammar, not both');
    if (spec.responseFormat === undefined && spec.grammar === undefined) return null;
    const grammars = this.grammarCompiler();
    if (spec.grammar === undefined) return grammars.responseFormat(spec.responseFormat!, 'responseFormat');
    if (typeof spec.grammar === 'string') return grammars.grammar(spec.grammar);
    return grammars.structuralTag(spec.grammar, 'structural tag', 'grammar');
  }

  /** The GBNF of a JSON schema as the engine enforces it (compact JSON), for building larger grammars; GrammarError names `param`. */
  schemaGrammar(schema: Record<string, unknown> | boolean, options: { strict?: boolean; param?: string } = {}): Promise<string> {
    return this.grammarCompiler().schemaGrammar(schema, options.strict ?? false, options.param ?? 'schema');
  }

  private grammarCompiler(): GrammarCompiler {
    const tokenizer = this.loaded.tokenizer;
    if (!tokenizer) throw new GrammarError(`${this.loaded.path} has no tokenizer.json, and a grammar is matched against token text`);
    return (this.grammars ??= new GrammarCompiler(tokenizer.files.tokenizerJson as TokenizerJson, this.loaded.config.vocabSize, jumpTokenizer(tokenizer)));
  }

  /** Cancels every generation (they reject with ModelDisposedError) and frees the engine's memory. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.scheduler.close();
    this.engine.dispose();
  }

  private tokenizer() {
    const t = this.loaded.tokenizer;
    if (!t) throw new InvalidInputError(`${this.loaded.path} has no tokenizer.json, so text cannot be tokenized; pass token ids instead`);
    return t;
  }

  /**
   * Validates and submits one generation. The streaming form throws invalid input, a full queue or a
   * disposed model at once; the promise form rejects with them.
   */
  private run(promptIds: () => number[], eosTokenIds: number[], options: GenerateOptions): GenerationStream | Promise<GenerationResult> {
    try {
      const stream = this.submit(promptIds(), eosTokenIds, options);
      return options.stream ? stream : stream.result;
    } catch (e) {
      if (options.stream) throw e;
      return Promise.reject(e);
    }
  }

  private submit(promptIds: number[], eosTokenIds: number[], options: GenerateOptions): GenerationStream {
    if (this.disposed) throw new ModelDisposedError();
    const { stream = false, stop, signal: callerSignal, responseFormat, grammar, ...rest } = options;
    const compiles = (responseFormat !== undefined && responseFormat?.type !== 'text') || grammar !== undefined;
    if (compiles && rest.constraint) throw new InvalidInputError('give constraint, or responseFormat / grammar, not both');
    const runtimeOptions: RuntimeGenerateOptions = {
      ...rest,
      stop: stop === undefined ? [] : typeof stop === 'string' ? [stop] : stop,
      eosTokenIds: rest.eosTokenIds ?? eosTokenIds,
    };
    // everything generate() would reject later is rejected now, before the request is queued
    resolveSampling(runtimeOptions, this.context.defaults);
    if (runtimeOptions.stop!.some((s) => typeof s !== 'string')) throw new InvalidInputError('stop must be a string or a list of strings');
    const context = this.engine.contextLength;
    if (promptIds.length === 0) throw new InvalidInputError('the prompt is empty: give at least one token');
    if (rest.maxTokens === undefined) {
      if (promptIds.length >= context) throw new ContextLengthError(promptIds.length, 1, context);
      runtimeOptions.maxTokens = Math.min(256, context - promptIds.length);
    } else {
      if (!Number.isInteger(rest.maxTokens) || rest.maxTokens < 0) throw new InvalidInputError(`max tokens must be a whole number >= 0, got ${rest.maxTokens}`);
      if (promptIds.length + rest.maxTokens > context || promptIds.length >= context) throw new ContextLengthError(promptIds.length, rest.maxTokens, context);
    }
    // one controller per generation: the caller's signal or a consumer that stops reading aborts it
    const controller = new AbortController();
    if (callerSignal) {
      if (callerSignal.aborted) controller.abort();
      else callerSignal.addEventListener('abort', () => controller.abort(), { once: true, signal: controller.signal });
    }
    runtimeOptions.signal = controller.signal;
    const out = new GenerationStream(() => controller.abort(), stream);
    if (!compiles) this.scheduler.submit({ promptIds, options: runtimeOptions, sink: out });
    else {
      // the grammar compiles first (cached by its text); its errors reach the caller through the stream or promise
      this.compileConstraint({ responseFormat, grammar }).then(
        (constraint) => {
          if (controller.signal.aborted) return out.fail(new AbortError());
          if (this.disposed) return out.fail(new ModelDisposedError());
          try {
            this.scheduler.submit({ promptIds, options: { ...runtimeOptions, constraint }, sink: out });
          } catch (e) {
            out.fail(e);
          }
        },
        (e: unknown) => out.fail(e),
      );
    }
    // drop the listener on the caller's signal when the generation ends, whichever way
    out.result.then(() => controller.abort(), () => controller.abort());
    return out;
  }
}

/**
 * A path's or URL's last part without a model file's extension: "models/brown-llama-12m.upg" ->
 * "brown-llama-12m"; a folder keeps its dots ("Llama-3.1-8B-Instruct", not "Llama-3").
 */
export function modelId(where: string): string {
  const last = where.replace(/[?#].*$/, '').replace(/[\\/]+$/, '').split(/[\\/]/).pop() ?? where;
  return last.replace(/\.(upg|safetensors)$/i, '') || last || 'model';
}

/**
 * Loads a UPG artifact or a Hugging Face folder and prepares it to generate on the chosen backend.
 * `source`: a local path or file: URL (Node), an http(s) URL (a folder's ends with "/"), an
 * ArrayBuffer or Uint8Array, a Blob or File, a ByteSource, or a folder's files by name
 * ({ 'config.json': ..., 'model.safetensors': ..., 'tokenizer.json': ... }).
 */
export async function loadModel(source: ModelSource, options: LoadModelOptions = {}): Promise<Model> {
  const { onProgress, signal, headers, fetch, cache } = options;
  // for WebGPU the matrices stay in their source until uploaded, a tensor at a time (model/lazy.ts)
  const loaded = await loadModelFiles(source, { onProgress, signal, headers, fetch, cache, lazy: (options.backend ?? 'cpu') !== 'cpu' });
  try {
    return await modelFromLoaded(loaded, options);
  } finally {
    await loaded.close?.();
  }
}

/** A Model over a model already in memory (a loader's result, or a synthetic model: `pdvm serve --synthetic`). */
export async function modelFromLoaded(loaded: LoadedModel, options: LoadModelOptions = {}): Promise<Model> {
  // checked against the model's maximum before the engine allocates anything
  const contextLength = checkContextLength(loaded.config, options.contextLength ?? Math.min(loaded.config.maxPositionEmbeddings, 4096), 'the context length');
  // batchedStep: an option of the WebGPU engine with the pooled KV cache (a variable, not a literal, so
  // this compiles against an engine that does not know it yet; such an engine ignores it)
  const webgpu: Record<string, unknown> = {};
  if (options.matvecActivations) webgpu.matvecActivations = options.matvecActivations;
  if (options.prefillInt8 !== undefined) webgpu.prefillInt8 = options.prefillInt8;
  if (options.batchedStep) {
    webgpu.batchedStep = true;
    // the slots of the batch (and as many kept caches) allocated at load, in one buffer group: a pool
    // grown on demand doubles into several groups (6 for 32 streams), and a batched step dispatches
    // RoPE and attention once a group
    const c = loaded.config;
    const slotBytes = 2 * c.numLayers * contextLength * c.numKvHeads * c.headDim * (options.kvCache === 'f32' ? 4 : 2);
    const running = options.maxConcurrency ?? Math.max(1, Math.min(32, Math.floor(DEFAULT_KV_BUDGET_BYTES / slotBytes)));
    webgpu.kvSlots = running + Math.min(running, Math.floor((options.prefixCacheBytes ?? DEFAULT_PREFIX_CACHE_BYTES) / slotBytes)) + 1;
  }
  const { engine, notice } = await createEngine(loaded, { backend: options.backend ?? 'cpu', contextLength, decode: options.decode, kvCache: options.kvCache, webgpu: Object.keys(webgpu).length ? webgpu : undefined });
  return new Model(loaded, engine, { maxConcurrency: options.maxConcurrency, maxQueued: options.maxQueued, prefixCacheBytes: options.prefixCacheBytes, stepPrefillTokens: options.stepPrefillTokens, backendNotice: notice, soloOnDevice: options.batchedStep === true && options.soloOnDevice === true });
}

/** KV cache memory the default batch size may take. */
export const DEFAULT_KV_BUDGET_BYTES = 2 * 1024 ** 3;
export const DEFAULT_PREFIX_CACHE_BYTES = 256 * 1024 ** 2;

/** The default maxConcurrency: as many KV caches (float32, whole context) as fit DEFAULT_KV_BUDGET_BYTES, 1 to 32. */
export function defaultMaxConcurrency(engine: Engine): number {
  return Math.max(1, Math.min(32, Math.floor(DEFAULT_KV_BUDGET_BYTES / kvCacheBytes(engine))));
}
