/**
 * Runs many generations on one engine, fairly. Each admitted generation gets its own Sequence (a KV
 * cache slot) and the scheduler steps them in turn, one token each per round (a newly admitted one
 * gets its prefill before the next turn, for a short time to first token), yielding to the event loop
 * between steps so sockets and timers are serviced while a CPU forward pass (synchronous work)
 * runs. Generations beyond `maxActive` wait in a FIFO queue of at most `maxQueued`; beyond that,
 * submit() throws QueueFullError. A cancelled generation leaves at once and its slot goes to the next
 * in the queue.
 *
 * Each step is exactly one `next()` of the runtime's `generate()`: the first is the prefill, each later
 * one decodes a single token, so tokens of different requests can never mix.
 */
import { AbortError } from '../errors.js';
import type { Engine, Sequence } from '../runtime/engine.js';
import { generate, type GenerateOptions, type GenerationChunk, type GenerationContext, type GenerationResult } from '../runtime/generate.js';
import { ModelDisposedError, QueueFullError } from './errors.js';
import type { GenerationSink } from './stream.js';

export interface SchedulerLimits {
  /** Generations decoding at once (each holds a KV cache for the whole context). */
  maxActive: number;
  /** Generations waiting for a slot before new ones are refused. */
  maxQueued: number;
}

export interface GenerationJob {
  promptIds: number[];
  /** Passed to the runtime's generate(); its `signal` cancels the job, queued or running. */
  options: GenerateOptions;
  sink: GenerationSink;
}

interface Entry {
  job: GenerationJob;
  state: 'queued' | 'active' | 'done';
  seq: Sequence | null;
  steps: AsyncGenerator<GenerationChunk, GenerationResult> | null;
  /** Has had its first step (the prefill). */
  started: boolean;
  onAbort: () => void;
}

export class Scheduler {
  private readonly queue: Entry[] = [];
  private readonly active: Entry[] = [];
  /** The entry whose step is in flight (its generator must not be touched until the step ends). */
  private stepping: Entry | null = null;
  private looping: Promise<void> | null = null;
  private closed = false;

  constructor(private readonly engine: Engine, private readonly ctx: GenerationContext, readonly limits: SchedulerLimits) {}

  /** Generations holding a KV cache slot now. */
  get activeCount(): number {
    return this.active.length;
  }

  get queuedCount(): number {
    return this.queue.length;
  }

  /** Starts the job or queues it; throws QueueFullError, AbortError or ModelDisposedError at once instead. */
  submit(job: GenerationJob): void {
    if (this.closed) throw new ModelDisposedError();
    const signal = job.options.signal;
    if (signal?.aborted) throw new AbortError();
    const mustWait = this.active.length >= this.limits.maxActive || this.queue.length > 0;
    if (mustWait && this.queue.length >= this.limits.maxQueued) throw new QueueFullError(this.active.length, this.queue.length);
    const entry: Entry = { job, state: 'queued', seq: null, steps: null, started: false, onAbort: () => this.cancel(entry, new AbortError()) };
    signal?.addEventListener('abort', entry.onAbort, { once: true });
    this.queue.push(entry);
    this.admit();
  }

  /** Fails every queued and running generation and waits for a step in flight to end. */
  async close(): Promise<void> {
    this.closed = true;
    for (const entry of [...this.queue, ...this.active]) this.cancel(entry, new ModelDisposedError());
    await this.looping;
  }

  private admit(): void {
    while (this.active.length < this.limits.maxActive && this.queue.length > 0) {
      const entry = this.queue.shift()!;
      try {
        entry.seq = this.engine.createSequence();
      } catch (e) {
        this.end(entry);
        entry.job.sink.fail(e);
        continue;
      }
      entry.state = 'active';
      entry.steps = generate(this.ctx, entry.seq, entry.job.promptIds, entry.job.options);
      this.active.push(entry);
    }
    if (this.active.length > 0 && !this.looping) this.looping = this.loop();
  }

  private async loop(): Promise<void> {
    try {
      while (this.active.length > 0) {
        // a generation still waiting for its prefill goes first (short time to first token); the others
        // take turns: the one stepped moves to the back of the line
        const fresh = this.active.findIndex((e) => !e.started);
        const entry = this.active.splice(fresh >= 0 ? fresh : 0, 1)[0]!;
        this.active.push(entry);
        entry.started = true;
        await this.step(entry);
        await yieldToEventLoop();
      }
    } finally {
      this.looping = null;
    }
  }

  private async step(entry: Entry): Promise<void> {
    this.stepping = entry;
    let r: IteratorResult<GenerationChunk, GenerationResult>;
    try {
      r = await entry.steps!.next();
    } catch (e) {
      this.stepping = null;
      this.end(entry);
      entry.job.sink.fail(e);
      return;
    }
    this.stepping = null;
    if (entry.state !== 'active') {
      // cancelled while the step ran: finish the cancellation now that the generator is idle
      void entry.steps!.return(undefined as never).catch(() => {});
      entry.seq?.dispose();
      entry.seq = null;
      return;
    }
    if (r.done) {
      this.end(entry);
      entry.job.sink.finish(r.value);
    } else {
      entry.job.sink.push(r.value);
    }
  }

  private cancel(entry: Entry, error: Error): void {
    if (entry.state === 'done') return;
    if (entry.state === 'queued') this.queue.splice(this.queue.indexOf(entry), 1);
    if (this.stepping !== entry) void entry.steps?.return(undefined as never).catch(() => {});
    this.end(entry);
    entry.job.sink.fail(error);
  }

  /**
   * Leaves the scheduler: frees the KV cache slot (or leaves that to step() when a step is in flight)
   * and lets the next queued job in.
   */
  private end(entry: Entry): void {
    const index = this.active.indexOf(entry);
    if (index >= 0) this.active.splice(index, 1);
    entry.state = 'done';
    if (this.stepping !== entry) {
      entry.seq?.dispose();
      entry.seq = null;
    }
    entry.job.options.signal?.removeEventListener('abort', entry.onAbort);
    if (!this.closed) this.admit();
  }
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
