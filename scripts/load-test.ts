/**
 * Load test for `pdvm serve` (a program that prints figures, not a test): starts the server as its
 * own process on a free loopback port, sends N concurrent greedy streaming completions through the
 * openai client, checks each stream's text against the same request run alone, and prints time to
 * first token and tokens/s.
 *
 *   npx tsc -p . && node dist/scripts/load-test.js [--streams 32 | --streams 1,8,32] [--max-tokens 64] [--max-concurrency 32]
 *     [--backend cpu|webgpu] [--context N] [--synthetic llama-3.1-8b --prompt-tokens 32] [--alone N] [--cli PATH] [--step-prefill-tokens N] [--batched-step]
 *
 * With --synthetic SHAPE the server serves a model of that shape with random q4 weights (`pdvm serve
 * --synthetic`; nothing to download): prompts are random token ids, EOS never comes, so every stream
 * runs to --max-tokens. The aggregate rate under load is compared with one stream's rate alone.
 * A list of stream counts runs one burst of each against the same server (one start, one baseline).
 */
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { scriptArgs } from './args.js';
import OpenAI from 'openai';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const CLI = join(ROOT, 'dist', 'src', 'cli', 'main.js');
const MODEL_DIR = join(ROOT, 'models', 'brown-llama-12m.upg');

const { values } = scriptArgs({
  options: {
    streams: { type: 'string', default: '32' },
    'max-tokens': { type: 'string', default: '64' },
    'max-concurrency': { type: 'string' },
    backend: { type: 'string', default: 'cpu' },
    context: { type: 'string' },
    synthetic: { type: 'string' },
    'prompt-tokens': { type: 'string', default: '32' },
    /** The pdvm CLI to start (default dist/src/cli/main.js; an esbuild bundle of src/cli/main.ts on the device). */
    cli: { type: 'string' },
    /** Requests run alone first (the single-stream baseline and the equality check): default every stream's. */
    alone: { type: 'string' },
    'step-prefill-tokens': { type: 'string' },
    'batched-step': { type: 'boolean' },
  },
});
const bursts = values.streams!.split(',').map(Number);
const streams = Math.max(...bursts);
const maxTokens = Number(values['max-tokens']);
const maxConcurrency = Number(values['max-concurrency'] ?? streams);

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function main(): Promise<void> {
  const synthetic = values.synthetic;
  const serveArgs = [values.cli ? resolve(values.cli) : CLI, 'serve', ...(synthetic ? ['--synthetic', synthetic] : [MODEL_DIR]), '--port', '0', '--max-concurrency', String(maxConcurrency), '--backend', values.backend!];
  if (values.context) serveArgs.push('--context', values.context);
  if (values['batched-step']) serveArgs.push('--batched-step');
  if (values['step-prefill-tokens']) serveArgs.push('--step-prefill-tokens', values['step-prefill-tokens']);
  const modelName = synthetic ? `synthetic-${synthetic}-q4` : 'brown-llama-12m';
  const server = spawn(process.execPath, serveArgs, { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  const url = await new Promise<string>((ok, fail) => {
    server.stderr!.setEncoding('utf8');
    server.stderr!.on('data', (d: string) => {
      log += d;
      const m = /on (http:\/\/[^\s/]+)\/v1/.exec(log);
      if (m) ok(m[1]!);
    });
    server.on('exit', (code) => fail(new Error(`pdvm serve exited with ${code}:\n${log}`)));
  });
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'x', maxRetries: 0, timeout: 600_000 });
  const text = await readFile(join(ROOT, '..', 'shared', 'fixtures', 'text', 'brown', 'validation.txt'), 'utf8').catch(() => '');
  const lines = text.split('\n').filter((l) => l.split(' ').length > 6);
  let seed = 12345;
  const randomIds = (n: number) => Array.from({ length: n }, () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 8) % 4096);
  const prompts: (string | number[])[] = synthetic
    ? Array.from({ length: streams }, () => randomIds(Number(values['prompt-tokens'])))
    : Array.from({ length: streams }, (_, i) => lines[i]?.split(' ').slice(0, 5).join(' ') ?? `Story number ${i} began when`);

  const run = async (prompt: string | number[], t0: number) => {
    const stream = await client.completions.create({ model: modelName, prompt, max_tokens: maxTokens, temperature: 0, stream: true, stream_options: { include_usage: true } });
    let out = '';
    let first = NaN;
    let tokens = 0;
    for await (const chunk of stream) {
      const piece = chunk.choices[0]?.text ?? '';
      // a synthetic model has no tokenizer: its chunks carry no text, so the first chunk marks the first token
      if ((piece || synthetic) && chunk.choices.length > 0 && Number.isNaN(first)) first = performance.now() - t0;
      out += piece;
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
    }
    return { text: out, first, end: performance.now() - t0, tokens };
  };

  await run(synthetic ? randomIds(4) : 'Warm up', performance.now());
  const alone: Awaited<ReturnType<typeof run>>[] = [];
  for (const p of prompts.slice(0, Number(values.alone ?? streams))) alone.push(await run(p, performance.now()));
  const soloTtft = alone.map((r) => r.first).sort((a, b) => a - b);
  const soloRate = alone.map((r) => (r.tokens - 1) / ((r.end - r.first) / 1000)).sort((a, b) => a - b);
  const soloTokens = alone.reduce((a, r) => a + r.tokens, 0);
  const soloWall = alone.reduce((a, r) => a + r.end, 0) / 1000;
  console.log(`pdvm serve load test: ${modelName} on ${values.backend}${values['batched-step'] ? ' (--batched-step)' : ''}, greedy streams x ${maxTokens} tokens, --max-concurrency ${maxConcurrency}, ${new Date().toISOString().slice(0, 10)}`);
  console.log(`  alone (one at a time, ${alone.length}): time to first token median ${percentile(soloTtft, 50).toFixed(0)} ms; ${percentile(soloRate, 50).toFixed(1)} tok/s decode per stream; ${(soloTokens / soloWall).toFixed(1)} tok/s end to end`);
  let mismatches = 0;
  // the server's batched steps (/metrics): how much of a burst's time the engine's steps take
  const stepCounters = async () => {
    const text = await fetch(`${url}/metrics`).then((r) => r.text()).catch(() => '');
    const value = (name: string) => Number(new RegExp(`^${name} ([0-9.e+-]+)$`, 'm').exec(text)?.[1] ?? NaN);
    return {
      steps: value('pdvm_batch_steps'), seconds: value('pdvm_batch_step_seconds'), between: value('pdvm_batch_between_step_seconds'),
      decodeSteps: value('pdvm_batch_decode_steps'), decodeSeconds: value('pdvm_batch_decode_step_seconds'), decodeRows: value('pdvm_batch_decode_step_rows'),
    };
  };
  for (const n of bursts) {
    const before = await stepCounters();
    const t0 = performance.now();
    const together = await Promise.all(prompts.slice(0, n).map((p) => run(p, t0)));
    const wall = (performance.now() - t0) / 1000;
    const wrong = alone.filter((r, i) => i < n && r.text !== together[i]!.text).length;
    mismatches += wrong;
    const ttft = together.map((r) => r.first).sort((a, b) => a - b);
    const perStream = together.map((r) => (r.tokens - 1) / ((r.end - r.first) / 1000)).sort((a, b) => a - b);
    const tokens = together.reduce((a, r) => a + r.tokens, 0);
    console.log(`${n} concurrent streams:`);
    console.log(`  under load: ${tokens} tokens in ${wall.toFixed(2)} s = ${(tokens / wall).toFixed(1)} tok/s overall = ${(tokens / wall / (soloTokens / soloWall)).toFixed(2)}x one stream end to end`);
    console.log(`  time to first token: median ${percentile(ttft, 50).toFixed(0)} ms, p95 ${percentile(ttft, 95).toFixed(0)} ms, max ${ttft.at(-1)!.toFixed(0)} ms`);
    console.log(`  per stream: median ${percentile(perStream, 50).toFixed(2)} tok/s (min ${perStream[0]!.toFixed(2)}, max ${perStream.at(-1)!.toFixed(2)})`);
    const after = await stepCounters();
    const steps = after.steps - before.steps, inSteps = after.seconds - before.seconds;
    if (steps > 0) {
      console.log(`  batched steps: ${steps}, ${((inSteps / steps) * 1000).toFixed(2)} ms each in the engine; ${((inSteps / wall) * 100).toFixed(0)}% of the burst's wall time; ${(((after.between - before.between) / steps) * 1000).toFixed(2)} ms between steps`);
      const d = after.decodeSteps - before.decodeSteps;
      if (d > 0) console.log(`  of which decode rows only: ${d} steps, ${(((after.decodeSeconds - before.decodeSeconds) / d) * 1000).toFixed(2)} ms each, ${((after.decodeRows - before.decodeRows) / d).toFixed(1)} rows on average`);
    }
    if (synthetic) console.log('  (a synthetic model has no tokenizer: its replies carry no text to compare with the runs alone)');
    else console.log(`  streams equal to the same request run alone: ${Math.min(n, alone.length) - wrong}/${Math.min(n, alone.length)}`);
  }
  server.kill('SIGTERM');
  if (mismatches > 0) process.exitCode = 1;
}

await main();
