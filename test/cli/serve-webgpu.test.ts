/**
 * `pdvm serve --backend webgpu` decodes through the batched step by default (continuous batching and
 * prefix reuse), and `--no-batched-step` goes back to generations taking turns: the same prompt sent
 * twice has its prefix reused the second time only in the first case (prefix reuse needs the batched
 * step). Lavapipe in CI; skipped, with the reason, where the server cannot get a WebGPU adapter.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { CLI } from '../helpers.js';

const PROMPT = 'The jury said that the city had been given a good deal of money by the state, and that it would be used for the new school';

async function serve(extra: string[]): Promise<{ url: string; stop: () => Promise<void>; log: () => string } | { unavailable: string }> {
  const child = spawn(process.execPath, [CLI, 'serve', '--backend', 'webgpu', '--port', '0', '--context', '256', '--max-concurrency', '2', ...extra], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d: string) => (err += d));
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  const t0 = Date.now();
  for (;;) {
    const m = /serving .* on (http:\/\/[^\s]+\/v1)/.exec(err);
    if (m) {
      const stop = async () => {
        child.kill('SIGTERM');
        await exited;
      };
      return { url: m[1]!, stop, log: () => err };
    }
    if (child.exitCode !== null) {
      if (/webgpu/i.test(err) && /not installed|no (WebGPU )?adapter|unavailable/i.test(err)) return { unavailable: err.trim() };
      assert.fail(`the server exited with ${child.exitCode}:\n${err}`);
    }
    if (Date.now() - t0 > 90_000) {
      child.kill('SIGKILL');
      assert.fail(`the server never started:\n${err}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function complete(url: string): Promise<{ text: string; cached: number }> {
  const res = await fetch(`${url}/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'brown-llama-12m', prompt: PROMPT, max_tokens: 4, temperature: 0 }),
  });
  const body = (await res.json()) as { choices: { text: string }[]; usage: { prompt_tokens: number; prompt_tokens_details?: { cached_tokens: number } } };
  assert.equal(res.status, 200, JSON.stringify(body));
  return { text: body.choices[0]!.text, cached: body.usage.prompt_tokens_details?.cached_tokens ?? 0 };
}

for (const [name, extra, reused] of [
  ['batched step by default: the second request reuses the first one\'s prefix', [], true],
  ['--no-batched-step: generations take turns, no prefix reuse', ['--no-batched-step'], false],
] as const) {
  test(`serve --backend webgpu, ${name}`, { timeout: 180_000 }, async (t) => {
    const server = await serve([...extra]);
    if ('unavailable' in server) {
      t.skip(`no WebGPU here: ${server.unavailable}`);
      return;
    }
    try {
      const first = await complete(server.url);
      const second = await complete(server.url);
      assert.equal(first.cached, 0, 'nothing is kept before the first request');
      if (reused) assert.ok(second.cached >= 16, `the second request reused ${second.cached} prompt tokens (at least 16 expected)\n${server.log()}`);
      else assert.equal(second.cached, 0, 'no prefix reuse without the batched step');
      assert.equal(second.text, first.text, 'the same greedy reply, from a kept cache or a fresh prefill');
    } finally {
      await server.stop();
    }
  });
}
