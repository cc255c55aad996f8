/** Worker thread for parallel-perplexity.ts: loads the model, scores its windows, reports back. */
import { parentPort, workerData } from 'node:worker_threads';
import { loadModel } from '../model/load.js';
import { CpuEngine } from '../backends/cpu/engine.js';
import { logProbability } from './perplexity.js';
import type { WorkerJob, WorkerMessage } from './parallel-perplexity.js';

const job = workerData as WorkerJob;
const post = (m: WorkerMessage) => parentPort!.postMessage(m);
try {
  const model = await loadModel(job.modelPath);
  const engine = new CpuEngine(model.config, model.weights, job.ctx + 1);
  const seq = engine.createSequence();
  const vocab = model.config.vocabSize;
  let nll = 0;
  let predicted = 0;
  for (const s of job.starts) {
    const window = job.ids.slice(s, s + job.ctx + 1);
    seq.reset();
    const logits = engine.forwardSync(seq, window.slice(0, -1), true);
    for (let t = 0; t + 1 < window.length; t++) nll -= logProbability(logits, t * vocab, vocab, window[t + 1]!);
    predicted += window.length - 1;
    post({ kind: 'progress', predicted: window.length - 1 });
  }
  post({ kind: 'done', nll, predicted });
} catch (e) {
  post({ kind: 'error', message: (e as Error).message });
}
