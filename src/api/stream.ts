/**
 * The streaming form of a generation: an async iterable of text chunks that the scheduler fills as
 * tokens are decoded, plus `result`, a promise of the whole generation. Breaking out of a
 * `for await` loop cancels the generation (its KV cache slot is freed at once).
 */
import type { GenerationChunk, GenerationResult } from '../runtime/generate.js';

/** Where the scheduler delivers one generation's output. */
export interface GenerationSink {
  push(chunk: GenerationChunk): void;
  finish(result: GenerationResult): void;
  fail(error: unknown): void;
}

export class GenerationStream implements AsyncIterable<GenerationChunk>, GenerationSink {
  /** Resolves with the whole generation when it ends; rejects with the error that ended it (AbortError...). */
  readonly result: Promise<GenerationResult>;
  private resolveResult!: (r: GenerationResult) => void;
  private rejectResult!: (e: unknown) => void;
  private readonly pending: GenerationChunk[] = [];
  private ended = false;
  private error: unknown = undefined;
  private failed = false;
  private wake: (() => void) | null = null;
  private iterated = false;

  /**
   * `cancel` stops the generation when the consumer stops reading; `keepChunks` false drops chunks
   * instead of buffering them (the promise-only form).
   */
  constructor(private readonly cancel: () => void, private readonly keepChunks = true) {
    this.result = new Promise<GenerationResult>((resolve, reject) => {
      this.resolveResult = resolve;
      this.rejectResult = reject;
    });
    // a caller that only iterates sees errors there; never report them twice as unhandled
    this.result.catch(() => {});
  }

  push(chunk: GenerationChunk): void {
    if (!this.keepChunks || this.ended) return;
    this.pending.push(chunk);
    this.signal();
  }

  finish(result: GenerationResult): void {
    if (this.ended) return;
    this.ended = true;
    this.resolveResult(result);
    this.signal();
  }

  fail(error: unknown): void {
    if (this.ended) return;
    this.ended = true;
    this.failed = true;
    this.error = error;
    this.rejectResult(error);
    this.signal();
  }

  private signal(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  [Symbol.asyncIterator](): AsyncIterator<GenerationChunk> {
    if (this.iterated) throw new TypeError('a generation stream can be iterated only once');
    this.iterated = true;
    return {
      next: async (): Promise<IteratorResult<GenerationChunk>> => {
        while (true) {
          const chunk = this.pending.shift();
          if (chunk) return { value: chunk, done: false };
          if (this.failed) throw this.error;
          if (this.ended) return { value: undefined, done: true };
          await new Promise<void>((resolve) => (this.wake = resolve));
        }
      },
      return: async (): Promise<IteratorResult<GenerationChunk>> => {
        // the consumer stopped early (break, throw): stop decoding for nobody
        if (!this.ended) this.cancel();
        this.pending.length = 0;
        return { value: undefined, done: true };
      },
    };
  }
}
