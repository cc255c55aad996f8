/**
 * Runs many generations on one engine. Each admitted generation gets its own Sequence (a KV cache
 * slot). Generations beyond `maxActive` wait in a FIFO queue of at most `maxQueued`; beyond that,
 * submit() throws QueueFullError. A cancelled generation leaves at the next step boundary and its slot
 * goes to the next in the queue.
 *
 * Where the engine has a batched step (continuous batching): every step decodes one token of every
 * running generation in one pass (each weight read once for all of them) and feeds up to
 * `prefillTokens` prompt tokens of generations still prefilling, so a long prompt is prefilled in
 * chunks between decode steps instead of stalling the running streams. Requests join and leave between
 * steps; each has its own position, cache and sampler (penalties, seeds) run on the CPU per sequence.
 * A finished generation's cache may be kept (prefix reuse): a later prompt that begins with the same
 * tokens takes it and prefills only the rest.
 *
 * Otherwise (an engine without a step, e.g. WebGPU's fused decode path today) the scheduler steps the
 * generations in turn, round robin, one `next()` of the runtime's generate() each: the first is the
 * prefill, each later one a token. Either way it yields to the event loop between steps so sockets
 * and timers are serviced while a forward pass (synchronous work on the CPU) runs.
 */
import { AbortError } from '../errors.js';
import type { Engine, Sequence, StepRow } from '../runtime/engine.js';
import { generate, Generation, PREFILL_CHUNK, type GenerateOptions, type GenerationChunk, type GenerationContext, type GenerationResult } from '../runtime/generate.js';
import { ModelDisposedError, QueueFullError } from './errors.js';
import { PrefixCache } from './prefix-cache.js';
import type { GenerationSink } from './stream.js';

/** Event-loop turns between batched steps (each costs microseconds when nothing is waiting). */
const TURNS_BETWEEN_STEPS = 4;

export interface SchedulerLimits {
  /** Generations decoding at once (the batch size B; each holds a KV cache for the whole context). */
  maxActive: number;
  /** Generations waiting for a slot before new ones are refused. */
  maxQueued: number;
  /** Prompt tokens a batched step prefills at most, over all prefilling generations (default PREFILL_CHUNK). */
  prefillTokens?: number;
  /** Bytes finished generations' caches may keep for prefix reuse (0 = none; batched engines only). */
  prefixCacheBytes?: number;
  /**
   * Engines with both a batched step and a device decoder (WebGPU): a generation decoding alone (no
   * other active or queued, no grammar, sampling the device does) runs through decodeOnDevice (the
   * fused decoder, the fastest one-stream path) until another arrives; both append to its KV slot.
   * Default false; off, a lone generation steps through the batched kernels like any other.
   */
  soloOnDevice?: boolean;
}

export interface GenerationJob {
  promptIds: number[];
  /** Passed to the runtime's generate(); its `signal` cancels the job, queued or running. */
  options: GenerateOptions;
  sink: GenerationSink;
}

/** What the scheduler is doing now (for /metrics and /health). */
export interface SchedulerStats {
  active: number;
  queued: number;
  /** Rows of the latest batched step: decode rows and prompt-chunk rows. */
  lastStepDecodeRows: number;
  lastStepPrefillTokens: number;
  /** Batched steps run, and the seconds spent awaiting them (the rest of the loop's time is the server's). */
  steps: number;
  stepSeconds: number;
  /** The same for the steps of decode rows only (no prompt tokens), and the rows they took. */
  decodeSteps: number;
  decodeStepSeconds: number;
  decodeStepRows: number;
  /** Seconds between a batched step's end and the next one's start (sampling, streaming, the event loop). */
  betweenStepSeconds: number;
  /** KV caches held by running generations and kept for prefix reuse, and their bytes. */
  runningCaches: number;
  keptCaches: number;
  cacheBytes: number;
  keptBytes: number;
}

/** A batched step started on the engine: its rows, whose entries they belong to, and when it started. */
interface Flight {
  entries: Entry[];
  rows: StepRow[];
  step: Promise<(Float32Array | number | null)[]>;
  t0: number;
  prefill: number;
  decode: number;
}

interface Entry {
  job: GenerationJob;
  state: 'queued' | 'active' | 'done';
  seq: Sequence | null;
  onAbort: () => void;
  // round-robin mode: the runtime's generator and whether it had its first step (the prefill)
  steps: AsyncGenerator<GenerationChunk, GenerationResult> | null;
  started: boolean;
  // batched mode
  gen: Generation | null;
  /** Tokens in the sequence's cache, in order (prompt, then every fed token). */
  fed: number[];
  /** The tokens to feed at the next step (the chosen one, and any the grammar forces after it), or null while prefilling. */
  next: number[] | null;
  /** The grammar's filter is made (Generation.start()). */
  filterReady: boolean;
}

export class Scheduler {
  private readonly queue: Entry[] = [];
  private readonly active: Entry[] = [];
  /** Entries in the step in flight: their sequences must not be freed or reused until it ends. */
  private readonly stepping = new Set<Entry>();
  private looping: Promise<void> | null = null;
  private closed = false;
  private readonly batched: boolean;
  private readonly prefixCache: PrefixCache | null;
  private readonly slotBytes: number;
  private lastStep = { decodeRows: 0, prefillTokens: 0 };
  private steps = { count: 0, seconds: 0, decode: 0, decodeSeconds: 0, decodeRows: 0, between: 0 };
  /** performance.now() at the end of the latest batched step while the loop runs, else null. */
  private lastStepEnd: number | null = null;

  constructor(private readonly engine: Engine, private readonly ctx: GenerationContext, readonly limits: SchedulerLimits) {
    this.batched = engine.step !== undefined;
    this.slotBytes = kvCacheBytes(engine);
    const keep = limits.prefixCacheBytes ?? 0;
    this.prefixCache = this.batched && keep >= this.slotBytes ? new PrefixCache(Math.floor(keep / this.slotBytes)) : null;
  }

  /** Generations holding a KV cache slot now. */
  get activeCount(): number {
    return this.active.length;
  }

  get queuedCount(): number {
    return this.queue.length;
  }

  get stats(): SchedulerStats {
    const kept = this.prefixCache?.size ?? 0;
    return {
      active: this.active.length,
      queued: this.queue.length,
      lastStepDecodeRows: this.lastStep.decodeRows,
      lastStepPrefillTokens: this.lastStep.prefillTokens,
      steps: this.steps.count,
      stepSeconds: this.steps.seconds,
      decodeSteps: this.steps.decode,
      decodeStepSeconds: this.steps.decodeSeconds,
      decodeStepRows: this.steps.decodeRows,
      betweenStepSeconds: this.steps.between,
      runningCaches: this.active.length,
      keptCaches: kept,
      cacheBytes: (this.active.length + kept) * this.slotBytes,
      keptBytes: kept * this.slotBytes,
    };
  }

  /** Starts the job or queues it; throws QueueFullError, AbortError or ModelDisposedError at once instead. */
  submit(job: GenerationJob): void {
    if (this.closed) throw new ModelDisposedError();
    const signal = job.options.signal;
    if (signal?.aborted) throw new AbortError();
    const mustWait = this.active.length >= this.limits.maxActive || this.queue.length > 0;
    if (mustWait && this.queue.length >= this.limits.maxQueued) throw new QueueFullError(this.active.length, this.queue.length);
    const entry: Entry = {
      job, state: 'queued', seq: null, onAbort: () => this.cancel(entry, new AbortError()),
      steps: null, started: false, gen: null, fed: [], next: null, filterReady: false,
    };
    signal?.addEventListener('abort', entry.onAbort, { once: true });
    this.queue.push(entry);
    this.admit();
  }

  /** Fails every queued and running generation, waits for a step in flight to end, frees kept caches. */
  async close(): Promise<void> {
    this.closed = true;
    for (const entry of [...this.queue, ...this.active]) this.cancel(entry, new ModelDisposedError());
    await this.looping;
    this.prefixCache?.clear();
  }

  private admit(): void {
    while (this.active.length < this.limits.maxActive && this.queue.length > 0) {
      const entry = this.queue.shift()!;
      try {
        if (this.batched) this.startBatched(entry);
        else {
          entry.seq = this.engine.createSequence();
          entry.steps = generate(this.ctx, entry.seq, entry.job.promptIds, entry.job.options);
        }
      } catch (e) {
        this.end(entry);
        entry.job.sink.fail(e);
        continue;
      }
      entry.state = 'active';
      this.active.push(entry);
    }
    if (this.active.length > 0 && !this.looping) this.looping = this.batched ? this.batchLoop() : this.roundRobinLoop();
  }

  /** A batched generation's sequence: the kept cache sharing the longest prefix of its prompt, or a new one. */
  private startBatched(entry: Entry): void {
    const promptIds = entry.job.promptIds;
    entry.gen = new Generation(this.ctx, promptIds, entry.job.options);
    // at least the prompt's last token is fed again: its logits choose the first new token
    const found = this.prefixCache?.match(promptIds, promptIds.length - 1) ?? null;
    if (found && (found.held === found.length || !found.seq.copyPrefix)) {
      // the prompt continues all the kept cache holds (a chat's next turn): take it over
      this.prefixCache!.take(found.seq);
      found.seq.truncate(found.length);
      entry.seq = found.seq;
    } else {
      entry.seq = this.newSequence();
      entry.seq.reset();
      // a shared prefix (a system prompt): copied out, the kept cache stays for other requests
      if (found) {
        entry.seq.copyPrefix!(found.seq, found.length);
        this.prefixCache!.touch(found.seq);
      }
    }
    const reused = found?.length ?? 0;
    entry.fed = promptIds.slice(0, reused);
    entry.gen.cachedTokens = reused;
  }

  /**
   * A new sequence; where memory is short, a kept cache gives way to it (the least recently used: its
   * memory is reused as it is, reset by the caller).
   */
  private newSequence(): Sequence {
    try {
      return this.engine.createSequence();
    } catch (e) {
      const evicted = this.prefixCache?.evictOldest();
      if (!evicted) throw e;
      return evicted;
    }
  }

  private async roundRobinLoop(): Promise<void> {
    try {
      while (this.active.length > 0) {
        // a generation still waiting for its prefill goes first (short time to first token); the others
        // take turns: the one stepped moves to the back of the line
        const fresh = this.active.findIndex((e) => !e.started);
        const entry = this.active.splice(fresh >= 0 ? fresh : 0, 1)[0]!;
        this.active.push(entry);
        entry.started = true;
        await this.roundRobinStep(entry);
        await yieldToEventLoop();
      }
    } finally {
      this.looping = null;
    }
  }

  private async roundRobinStep(entry: Entry): Promise<void> {
    this.stepping.add(entry);
    let r: IteratorResult<GenerationChunk, GenerationResult>;
    try {
      r = await entry.steps!.next();
    } catch (e) {
      this.stepping.delete(entry);
      this.end(entry);
      entry.job.sink.fail(e);
      return;
    }
    this.stepping.delete(entry);
    if (entry.state !== 'active') {
      // cancelled while the step ran: finish the cancellation now that the generator is idle
      void entry.steps!.return(undefined as never).catch(() => {});
      this.freeSequence(entry);
      return;
    }
    if (r.done) {
      this.end(entry);
      entry.job.sink.finish(r.value);
    } else {
      entry.job.sink.push(r.value);
    }
  }

  /**
   * The continuous batching loop: each step takes every decoding generation's next token and prompt
   * chunks of the prefilling ones (oldest first, up to the step's prefill budget), runs them as one
   * batched step, then samples each row that produced logits.
   * On an engine that steps on a device (stepChoosesTokens: WebGPU), the next step is launched as soon
   * as this one's tokens are known, before their text goes out to the streams and the event loop
   * turns: that work then runs while the device computes instead of between steps. (On the CPU a
   * step computes where it is called, so the text goes out first.)
   */
  private async batchLoop(): Promise<void> {
    const budget = this.limits.prefillTokens ?? PREFILL_CHUNK;
    const overlap = this.engine.stepChoosesTokens === true;
    let flight: Flight | null = null;
    try {
      while (this.active.length > 0 || flight) {
        if (!flight) {
          await this.startFilters();
          const solo = this.soloCandidate();
          if (solo) {
            await this.decodeSolo(solo);
            await yieldToEventLoop();
            continue;
          }
          flight = this.launch(budget);
          if (!flight) continue;
        }
        const { entries, rows, step, t0, prefill, decode } = flight;
        flight = null;
        let out: (Float32Array | number | null)[];
        try {
          out = await step;
          const t1 = (this.lastStepEnd = performance.now());
          this.steps.count++;
          this.steps.seconds += (t1 - t0) / 1000;
          if (prefill === 0) {
            this.steps.decode++;
            this.steps.decodeSeconds += (t1 - t0) / 1000;
            this.steps.decodeRows += decode;
          }
        } catch (e) {
          this.stepping.clear();
          for (const entry of entries) {
            if (entry.state !== 'active') this.freeSequence(entry);
            else {
              this.end(entry);
              entry.job.sink.fail(e);
            }
          }
          await yieldToEventLoop();
          continue;
        }
        this.stepping.clear();
        // the streams' text waits in `emits` until the next step is on its way
        const emits: (() => void)[] = [];
        for (let i = 0; i < entries.length; i++) await this.afterStep(entries[i]!, rows[i]!, out[i]!, emits);
        if (overlap && this.active.length > 0) {
          await this.startFilters();
          if (!this.soloCandidate()) flight = this.launch(budget);
          // one turn: the step's commands are submitted (the engine runs it from a microtask)
          await yieldToEventLoop();
        }
        for (const emit of emits) emit();
        // a request goes through several turns of the event loop (connection, body, handler) before it
        // is submitted; a batched step is long, so give it a few turns between steps, not one
        for (let i = 0; i < TURNS_BETWEEN_STEPS; i++) await yieldToEventLoop();
      }
    } finally {
      this.looping = null;
      this.lastStepEnd = null;
    }
  }

  /** Generations new to the loop make their grammar filters (Generation.start()) before their first step. */
  private async startFilters(): Promise<void> {
    for (const entry of this.active.filter((e) => !e.filterReady)) {
      entry.filterReady = true;
      try {
        await entry.gen!.start();
      } catch (e) {
        if (entry.state === 'active') {
          this.end(entry);
          entry.job.sink.fail(e);
        }
      }
    }
  }

  /** The next batched step's rows (decode rows, then prompt chunks up to the budget), started on the engine; null when there are none. */
  private launch(budget: number): Flight | null {
    const rows: StepRow[] = [];
    const entries: Entry[] = [];
    let prefill = 0, decode = 0;
    for (const entry of this.active) {
      if (!entry.filterReady) continue;
      if (entry.next !== null) {
        rows.push(this.chooseOnDevice(entry, { seq: entry.seq!, tokens: entry.next, logits: true }));
        entries.push(entry);
        decode++;
      } else if (prefill < budget) {
        // a chunk of `budget` tokens (the prompt's rest where shorter), cut where it would be alone:
        // an engine may prefill a chunk as a whole (WebGPU's prefill kernels), its arithmetic then
        // depending on the chunk; one that does not fit beside this step's others waits for the next
        const prompt = entry.job.promptIds, at = entry.fed.length;
        const n = Math.min(budget, prompt.length - at);
        if (prefill > 0 && prefill + n > budget) continue;
        const row = { seq: entry.seq!, tokens: prompt.slice(at, at + n), logits: at + n === prompt.length };
        rows.push(row.logits ? this.chooseOnDevice(entry, row) : row);
        entries.push(entry);
        prefill += n;
      }
    }
    if (rows.length === 0) return null;
    this.lastStep = { decodeRows: decode, prefillTokens: prefill };
    for (const e of entries) this.stepping.add(e);
    const t0 = performance.now();
    if (this.lastStepEnd !== null) this.steps.between += (t0 - this.lastStepEnd) / 1000;
    const step = this.engine.step!(rows);
    step.catch(() => {}); // awaited by the loop; not an unhandled rejection meanwhile
    return { entries, rows, step, t0, prefill, decode };
  }

  /** The one active generation, when it may decode through the engine's device decoder (SchedulerLimits.soloOnDevice). */
  private soloCandidate(): Entry | null {
    if (!this.limits.soloOnDevice || !this.engine.decodeOnDevice || this.active.length !== 1 || this.queue.length > 0) return null;
    const entry = this.active[0]!;
    const gen = entry.gen!;
    // decoding (one token to feed), or still to prefill: a lone prompt goes through the device decoder's
    // prefill (the prompt-processing kernels) instead of batched steps of decode rows
    const ready = entry.next === null ? entry.fed.length < entry.job.promptIds.length : entry.next.length === 1;
    return entry.filterReady && ready && !gen.filter && gen.deviceSampling ? entry : null;
  }

  /**
   * Decodes a lone generation through decodeOnDevice from its next token until it ends or another
   * generation arrives (then the device's steps past the token that stopped it are discarded and the
   * generation goes on in the batch from that token). One draw per sampled token, as in a batch.
   */
  private async decodeSolo(entry: Entry): Promise<void> {
    const gen = entry.gen!, seq = entry.seq!;
    const input = entry.next ?? entry.job.promptIds.slice(entry.fed.length);
    let ended = false;
    this.stepping.add(entry);
    this.lastStep = { decodeRows: 1, prefillTokens: entry.next === null ? input.length : 0 };
    let ids: number[];
    try {
      ids = await this.engine.decodeOnDevice!(seq, input, {
        maxTokens: this.engine.contextLength,
        sampling: gen.deviceSampling!,
        random: () => gen.nextDraw(),
        onToken: (id) => {
          if (entry.state !== 'active') return true;
          const step = gen.takeChosen(id);
          for (const chunk of step.chunks) entry.job.sink.push(chunk);
          if (step.end) {
            ended = true;
            return true;
          }
          entry.next = step.feed;
          return this.active.length > 1 || this.queue.length > 0;
        },
      });
    } catch (e) {
      this.stepping.delete(entry);
      if (entry.state !== 'active') this.freeSequence(entry);
      else {
        this.end(entry);
        entry.job.sink.fail(e);
      }
      return;
    }
    this.stepping.delete(entry);
    if (entry.state !== 'active') {
      this.freeSequence(entry);
      return;
    }
    // the sequence holds the input and every token but the last, which is fed next (or never)
    entry.fed.push(...input, ...ids.slice(0, -1));
    if (ended) this.finish(entry);
  }

  /**
   * Where the engine chooses tokens on the device, a row whose sampling the device does exactly (no
   * penalties, no grammar mask) asks for its token instead of its logits.
   */
  private chooseOnDevice(entry: Entry, row: StepRow): StepRow {
    const gen = entry.gen!;
    const sampling = this.engine.stepChoosesTokens && !gen.filter ? gen.deviceSampling : null;
    return sampling ? { ...row, choose: { sampling, random: gen.nextDraw() } } : row;
  }

  /** A step's result for one entry: its state now, its text (chunks, the end) pushed to `emits` for the caller to send. */
  private async afterStep(entry: Entry, row: StepRow, logits: Float32Array | number | null, emits: (() => void)[]): Promise<void> {
    if (entry.state !== 'active') {
      // cancelled while the step ran: its sequence can be freed now
      this.freeSequence(entry);
      return;
    }
    for (let i = 0; i < row.tokens.length; i++) entry.fed.push(row.tokens[i]!);
    if (logits === null) return; // a prompt chunk that is not the prompt's end
    const gen = entry.gen!;
    let step;
    try {
      step = typeof logits === 'number' ? gen.takeChosen(logits) : await gen.choose(logits);
    } catch (e) {
      if (entry.state === 'active') {
        this.end(entry);
        entry.job.sink.fail(e);
      }
      return;
    }
    if (entry.state !== 'active') return; // cancelled while a grammar filter advanced
    const sink = entry.job.sink, chunks = step.chunks;
    if (chunks.length > 0) emits.push(() => {
      for (const chunk of chunks) sink.push(chunk);
    });
    if (!step.end) {
      entry.next = step.feed;
      return;
    }
    this.finish(entry, emits);
  }

  /** A generation that ended well: its tail and result (sent now, or pushed to `emits`), its cache kept for prefix reuse, its slot freed. */
  private finish(entry: Entry, emits?: (() => void)[]): void {
    const { tail, result } = entry.gen!.finish();
    const sink = entry.job.sink;
    const send = () => {
      if (tail) sink.push(tail);
      sink.finish(result);
    };
    // a cache that finished well is kept for a later prompt sharing its prefix
    if (this.prefixCache && entry.seq && !this.closed) {
      const evicted = this.prefixCache.put(entry.seq, entry.fed);
      evicted?.dispose();
      entry.seq = null;
    }
    this.end(entry);
    if (emits) emits.push(send);
    else send();
  }

  private cancel(entry: Entry, error: Error): void {
    if (entry.state === 'done') return;
    if (entry.state === 'queued') this.queue.splice(this.queue.indexOf(entry), 1);
    if (!this.stepping.has(entry)) void entry.steps?.return(undefined as never).catch(() => {});
    this.end(entry);
    entry.job.sink.fail(error);
  }

  private freeSequence(entry: Entry): void {
    entry.seq?.dispose();
    entry.seq = null;
    entry.gen?.dispose();
  }

  /**
   * Leaves the scheduler: frees the KV cache slot (or leaves that to the step in flight, which frees
   * it when it ends) and lets the next queued job in.
   */
  private end(entry: Entry): void {
    const index = this.active.indexOf(entry);
    if (index >= 0) this.active.splice(index, 1);
    entry.state = 'done';
    if (!this.stepping.has(entry)) this.freeSequence(entry);
    entry.job.options.signal?.removeEventListener('abort', entry.onAbort);
    if (!this.closed) this.admit();
  }
}

/**
 * Bytes one sequence's KV cache takes: the engine's figure (WebGPU: its slot, f16 by default), else
 * K and V of every layer for the whole context in float32 (the CPU backend).
 */
export function kvCacheBytes(engine: Engine): number {
  if (engine.kvBytesPerSequence !== undefined) return engine.kvBytesPerSequence;
  const c = engine.config;
  return c.numLayers * 2 * engine.contextLength * c.numKvHeads * c.headDim * 4;
}

/**
 * Lets I/O and other callbacks run between steps: setImmediate in Node, a MessageChannel message in a
 * browser (setTimeout would wait at least 4 ms once nested).
 */
function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => {
    const g = globalThis as { setImmediate?: (f: () => void) => void };
    if (g.setImmediate) return g.setImmediate(resolve);
    const channel = new MessageChannel();
    channel.port1.onmessage = () => {
      channel.port1.close();
      resolve();
    };
    channel.port2.postMessage(null);
  });
}
