/** What the server tests share: an in-process server on an ephemeral loopback port, the OpenAI client, the CLI. */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { loadModel, startServer, type LoadModelOptions, type Model, type PdvmServer, type ServerOptions } from 'pdvm';
import { CLI, ROOT } from '../helpers.js';

export const DEMO = join(ROOT, 'models', 'brown-llama-12m.upg');

export interface TestServer {
  model: Model;
  server: PdvmServer;
  client: OpenAI;
  logs: string[];
  stop(): Promise<void>;
}

export async function startTestServer(modelOptions: LoadModelOptions = {}, serverOptions: ServerOptions = {}): Promise<TestServer> {
  const model = await loadModel(DEMO, modelOptions);
  const logs: string[] = [];
  const server = await startServer(model, { port: 0, log: (line) => logs.push(line), ...serverOptions });
  // no retries: a 429 must reach the test as a 429
  const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: serverOptions.apiKey ?? 'not-needed', maxRetries: 0, timeout: 120_000 });
  return {
    model,
    server,
    client,
    logs,
    async stop() {
      await server.close(1000);
      await model.dispose();
    },
  };
}

/**
 * `pdvm generate ... --json` on the demo model: the reference a greedy server reply must equal. Run
 * asynchronously: a synchronous spawn would block this process's event loop (and the in-process
 * server's keep-alive timers) for seconds, so the client's next request could race a socket the
 * server is closing.
 */
export async function cliGenerate(args: string[]): Promise<{ token_ids: number[]; text: string; prompt_tokens: number; finish_reason: string }> {
  const child = spawn(process.execPath, [CLI, 'generate', DEMO, '--json', ...args], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 });
  let out = '', err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  assert.equal(code, 0, err);
  return JSON.parse(out);
}

/** Starts `pdvm serve --port 0 ...` and resolves with its URL once it listens. */
export function spawnServe(args: string[]): Promise<{ child: ChildProcess; url: string; stderr: () => string; exited: Promise<number | null> }> {
  return spawnServeOn(DEMO, args);
}

/** `pdvm serve MODEL --port 0 ...` (null: no model argument, e.g. with --synthetic), resolved once it listens. */
export async function spawnServeOn(modelPath: string | null, args: string[]): Promise<{ child: ChildProcess; url: string; stderr: () => string; exited: Promise<number | null> }> {
  const child = spawn(process.execPath, [CLI, 'serve', ...(modelPath === null ? [] : [modelPath]), '--port', '0', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const url = await new Promise<string>((resolve, reject) => {
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (d: string) => {
      err += d;
      const m = /on (http:\/\/[^\s/]+)\/v1/.exec(err);
      if (m) resolve(m[1]!);
    });
    void exited.then((code) => reject(new Error(`pdvm serve exited with ${code}:\n${err}`)));
  });
  return { child, url, stderr: () => err, exited };
}

/** Polls until `check` holds (or fails after `ms`). */
export async function waitFor(check: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
