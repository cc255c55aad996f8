/**
 * Bounded load test (a test, run with the suite): 32 concurrent greedy streaming requests plus one
 * client that aborts mid-stream, on loopback through the openai client. Each stream's text must equal
 * the same request run alone; afterwards every KV cache slot is free and memory is back to its idle
 * level (measured after forced GC). Timings are printed as diagnostics; the figures in
 * docs/PERFORMANCE.md come from scripts/load-test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import OpenAI from 'openai';
import { VALIDATION_TEXT } from '../helpers.js';
import { startTestServer, waitFor } from './util.js';

const STREAMS = 32;
const MAX_TOKENS = 24;
const MB = 1024 * 1024;

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

async function settledMemory(): Promise<{ heapUsed: number; arrayBuffers: number }> {
  for (let i = 0; i < 3; i++) {
    gc();
    await new Promise((r) => setImmediate(r));
  }
  const m = process.memoryUsage();
  return { heapUsed: m.heapUsed, arrayBuffers: m.arrayBuffers };
}

interface StreamOutcome {
  text: string;
  firstTokenMs: number;
  endMs: number;
}

async function streamOnce(client: OpenAI, prompt: string, t0: number, signal?: AbortSignal, onChunk?: (n: number) => void): Promise<StreamOutcome> {
  const stream = await client.completions.create({ model: 'brown-llama-12m', prompt, max_tokens: MAX_TOKENS, temperature: 0, stream: true }, { signal });
  let text = '';
  let firstTokenMs = NaN;
  let chunks = 0;
  for await (const chunk of stream) {
    const piece = chunk.choices[0]?.text ?? '';
    if (piece && Number.isNaN(firstTokenMs)) firstTokenMs = performance.now() - t0;
    text += piece;
    onChunk?.(++chunks);
  }
  return { text, firstTokenMs, endMs: performance.now() - t0 };
}

test(`${STREAMS} concurrent greedy streams each equal the request run alone; an aborted client disturbs none; memory returns to idle`, async () => {
  const lines = (await readFile(VALIDATION_TEXT, 'utf8')).split('\n').filter((l) => l.split(' ').length > 6);
  const prompts = lines.slice(0, STREAMS).map((l) => l.split(' ').slice(0, 5).join(' '));
  assert.equal(new Set(prompts).size, STREAMS, 'distinct prompts');
  const t = await startTestServer({ maxConcurrency: STREAMS + 1, maxQueued: 8 });
  try {
    await streamOnce(t.client, 'Warm up', performance.now());
    const idle = await settledMemory();
    const keptIdle = t.model.schedulerStats.keptBytes;

    const alone: string[] = [];
    for (const p of prompts) alone.push((await streamOnce(t.client, p, performance.now())).text);

    // all at once, plus one client that goes away after three chunks
    let peakArrayBuffers = 0;
    const sampler = setInterval(() => (peakArrayBuffers = Math.max(peakArrayBuffers, process.memoryUsage().arrayBuffers)), 50);
    const quitter = new AbortController();
    const t0 = performance.now();
    const aborted = streamOnce(t.client, 'The Fulton County Grand Jury', t0, quitter.signal, (n) => n === 3 && quitter.abort()).catch((e: unknown) => e);
    const outcomes = await Promise.all(prompts.map((p) => streamOnce(t.client, p, t0)));
    const wallMs = performance.now() - t0;
    clearInterval(sampler);
    const abortOutcome = await aborted;
    assert.ok(abortOutcome instanceof OpenAI.APIUserAbortError || (abortOutcome as StreamOutcome).text !== undefined);

    outcomes.forEach((o, i) => assert.equal(o.text, alone[i], `stream ${i} (${JSON.stringify(prompts[i])}) differs from the same request run alone`));
    assert.ok(t.logs.some((l) => / 499 .*out=\d+ /.test(l)), 'the aborted request was logged as a disconnect');

    const ttft = outcomes.map((o) => o.firstTokenMs).sort((a, b) => a - b);
    const tokens = STREAMS * MAX_TOKENS;
    const median = ttft[Math.floor(STREAMS / 2)]!;
    const perStream = outcomes.map((o) => (MAX_TOKENS - 1) / ((o.endMs - o.firstTokenMs) / 1000)).sort((a, b) => a - b);
    console.log(
      `# load: ${STREAMS} streams x ${MAX_TOKENS} tokens in ${(wallMs / 1000).toFixed(2)} s: ${(tokens / (wallMs / 1000)).toFixed(1)} tok/s overall; ` +
        `time to first token median ${median.toFixed(0)} ms, max ${ttft.at(-1)!.toFixed(0)} ms; per stream ${perStream[Math.floor(STREAMS / 2)]!.toFixed(1)} tok/s median`,
    );

    // memory: every slot free, and after GC back near idle plus the caches kept for prefix reuse, which
    // the scheduler counts and bounds (one KV cache is 6 MB; the load held 33)
    await waitFor(() => t.model.activity.active === 0 && t.server.inFlight === 0, 5000, 'every request to end');
    const after = await settledMemory();
    const kept = t.model.schedulerStats.keptBytes - keptIdle;
    console.log(
      `# memory: idle heap ${(idle.heapUsed / MB).toFixed(1)} MB + buffers ${(idle.arrayBuffers / MB).toFixed(1)} MB; ` +
        `peak buffers ${(peakArrayBuffers / MB).toFixed(1)} MB; after ${(after.heapUsed / MB).toFixed(1)} MB + ${(after.arrayBuffers / MB).toFixed(1)} MB ` +
        `(of which ${(kept / MB).toFixed(1)} MB more KV caches kept for prefix reuse)`,
    );
    assert.ok(peakArrayBuffers > idle.arrayBuffers + 100 * MB, 'the KV caches of the load showed up in the measurement');
    assert.ok(kept <= 256 * MB, `kept caches ${kept} bytes within the default 256 MiB budget`);
    assert.ok(after.arrayBuffers < idle.arrayBuffers + kept + 8 * MB, `buffers after ${after.arrayBuffers} vs idle ${idle.arrayBuffers} + kept ${kept}`);
    assert.ok(after.heapUsed < idle.heapUsed + 16 * MB, `heap after ${after.heapUsed} vs idle ${idle.heapUsed}`);
  } finally {
    await t.stop();
  }
});
