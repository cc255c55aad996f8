/**
 * CPU backend benchmark on the built-in demo model: prefill and decode tokens/s.
 *   npm run bench:cpu [-- --prompt 128 --decode 128 --runs 3 --model PATH]
 * Prints a table and one JSON line. A program, not a test: figures go to docs/PERFORMANCE.md.
 */
import { scriptArgs } from '../scripts/args.js';
import os from 'node:os';
import { loadModel } from '../src/model/load.js';
import { CpuEngine } from '../src/backends/cpu/engine.js';
import { argmax } from '../src/runtime/sampling.js';
import { demoModelPath } from '../src/cli/common.js';

const { values } = scriptArgs({
  options: {
    model: { type: 'string' },
    prompt: { type: 'string', default: '128' },
    decode: { type: 'string', default: '128' },
    runs: { type: 'string', default: '3' },
  },
});
const promptLen = Number(values.prompt);
const decodeLen = Number(values.decode);
const runs = Number(values.runs);

const model = await loadModel(values.model ?? demoModelPath());
const c = model.config;
const engine = new CpuEngine(c, model.weights, promptLen + decodeLen + 1);
const seq = engine.createSequence();
const prompt = Array.from({ length: promptLen }, (_, i) => (i * 7919 + 13) % c.vocabSize);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const prefill: number[] = [];
const decode: number[] = [];
for (let r = 0; r < runs + 1; r++) {
  seq.reset();
  let t0 = performance.now();
  let logits = await engine.forward(seq, prompt);
  const tp = performance.now() - t0;
  t0 = performance.now();
  for (let i = 0; i < decodeLen; i++) logits = await engine.forward(seq, [argmax(logits)]);
  const td = performance.now() - t0;
  if (r === 0) continue; // warm-up
  prefill.push((promptLen / tp) * 1000);
  decode.push((decodeLen / td) * 1000);
}
const weightBytes = model.tensors.reduce((a, t) => a + t.bytes, 0);
const result = {
  model: model.path,
  backend: 'cpu',
  cpu: os.cpus()[0]?.model,
  cores: os.cpus().length,
  prompt_tokens: promptLen,
  decode_tokens: decodeLen,
  prefill_tokens_per_second: median(prefill),
  decode_tokens_per_second: median(decode),
  runs,
  weight_bytes: weightBytes,
};
console.log(`model    ${model.path} (${(weightBytes / 1e6).toFixed(1)} MB of weights as stored)`);
console.log(`machine  ${result.cpu}, ${result.cores} cores, node ${process.version}`);
console.log(`prefill  ${result.prefill_tokens_per_second.toFixed(1)} tok/s  (${promptLen}-token prompt, median of ${runs})`);
console.log(`decode   ${result.decode_tokens_per_second.toFixed(1)} tok/s  (${decodeLen} tokens after the prompt, median of ${runs})`);
console.log(JSON.stringify(result));
