/**
 * Perplexity on several CPU cores (Node only): windows are independent, so each worker thread loads
 * the model and scores every W-th window; the main thread adds up the log-likelihoods.
 */
import { Worker } from 'node:worker_threads';
import { availableParallelism } from 'node:os';
import type { PerplexityResult } from './perplexity.js';
import { InvalidInputError, PdvmError } from '../errors.js';

export interface WorkerJob {
  modelPath: string;
  ids: number[];
  ctx: number;
  /** Window starts this worker scores. */
  starts: number[];
}

export type WorkerMessage = { kind: 'progress'; predicted: number } | { kind: 'done'; nll: number; predicted: number } | { kind: 'error'; message: string };

export function defaultWorkerCount(): number {
  return Math.max(1, Math.min(availableParallelism(), 8));
}

export async function parallelPerplexity(
  modelPath: string,
  ids: number[],
  ctx: number,
  workers = defaultWorkerCount(),
  onProgress?: (done: number, total: number) => void,
): Promise<PerplexityResult> {
  if (!Number.isInteger(ctx) || ctx < 1) throw new InvalidInputError(`--ctx must be a whole number >= 1, got ${ctx}`);
  if (ids.length < 2) throw new InvalidInputError(`perplexity needs at least 2 tokens, got ${ids.length}`);
  const starts: number[] = [];
  for (let s = 0; s + 1 < ids.length; s += ctx) starts.push(s);
  const n = Math.max(1, Math.min(workers, starts.length));
  const total = ids.length - 1;
  let done = 0;
  const url = new URL('./perplexity-worker.js', import.meta.url);
  const results = await Promise.all(
    Array.from({ length: n }, (_, k) => {
      const job: WorkerJob = { modelPath, ids, ctx, starts: starts.filter((_, i) => i % n === k) };
      return new Promise<{ nll: number; predicted: number }>((resolve, reject) => {
        const w = new Worker(url, { workerData: job });
        w.on('message', (m: WorkerMessage) => {
          if (m.kind === 'progress') {
            done += m.predicted;
            onProgress?.(done, total);
          } else if (m.kind === 'done') resolve(m);
          else reject(new PdvmError(m.message));
        });
        w.on('error', reject);
        w.on('exit', (code) => {
          if (code !== 0) reject(new PdvmError(`perplexity worker exited with code ${code}`));
        });
      });
    }),
  );
  const nll = results.reduce((a, r) => a + r.nll, 0);
  const predicted = results.reduce((a, r) => a + r.predicted, 0);
  return { perplexity: Math.exp(nll / predicted), predictedTokens: predicted, totalNll: nll };
}
