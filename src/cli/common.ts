/** What the CLI commands share: model resolution, backend selection, progress, error exit. */
import { fileURLToPath } from 'node:url';
import { dirname, resolve } from 'node:path';
import { existsSync } from 'node:fs';
import { totalmem } from 'node:os';
import { checkContextLength } from '../model/config.js';
import { Option, type Command } from 'commander';
import { PdvmError, InvalidInputError } from '../errors.js';
import { loadModel, type LoadedModel } from '../model/load.js';
import type { Engine } from '../runtime/engine.js';
import { createEngine } from '../backends/index.js';
import { progressBar } from './progress.js';
import { forCli } from '../wording.js';

/** The built-in demo model shipped in the package's models/ folder. */
export function demoModelPath(): string {
  const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
  for (const candidate of [resolve(root, 'models', 'brown-llama-12m.upg'), resolve(root, 'models', 'brown-llama-12m')]) {
    if (existsSync(candidate)) return candidate;
  }
  throw new PdvmError(`the built-in demo model is missing from ${resolve(root, 'models')}; reinstall pdvm`);
}

export type BackendChoice = 'cpu' | 'webgpu' | 'auto';

export function backendOption(): Option {
  return new Option('--backend <name>', 'where to run the model').choices(['cpu', 'webgpu', 'auto']).default('cpu');
}

export type DecodeChoice = 'fused' | 'unfused';

export function decodeOption(): Option {
  return new Option('--decode <path>', 'webgpu: decode through the fused path (tokens chosen on the GPU) or through the forward pass (logits to the CPU)')
    .choices(['fused', 'unfused'])
    .default('fused');
}

export type KvCacheChoice = 'f16' | 'f32';

export function kvCacheOption(): Option {
  return new Option('--kv-cache <dtype>', 'webgpu: the KV cache storage (f16 halves its bytes; f32 matches the CPU reference)').choices(['f16', 'f32']).default('f16');
}

/** --prefill-int8: the prefill's q4 products on the int8 tensor cores (where self-tested): row, row-q4 or off. */
export type PrefillInt8Choice = 'row' | 'row-q4' | 'off';
export function prefillInt8Option(): Option {
  return new Option(
    '--prefill-int8 <mode>',
    "webgpu, where int8 subgroup matrices pass their self-test: the prefill's q4 products on the int8 tensor cores, row (the default: W kept as int8 too, a byte a weight more), row-q4 (rounded as staged, no copy, slower) or off (f16 tensor cores; also PDVM_PREFILL_I8)",
  ).choices(['row', 'row-q4', 'off']);
}
/** GpuOptions.prefillInt8 of --prefill-int8 (undefined: PDVM_PREFILL_I8, else the default). */
export const prefillInt8Of = (c: PrefillInt8Choice | undefined): 'row' | 'row-q4' | false | undefined => (c === 'off' ? false : c);

export function parseIntOption(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n)) throw new InvalidInputError(`${name} must be a whole number, got "${v}"`);
    return n;
  };
}

export function parseFloatOption(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n)) throw new InvalidInputError(`${name} must be a number, got "${v}"`);
    return n;
  };
}

/**
 * Loads a model with a progress bar on stderr (when it is a terminal). `lazy` (for --backend webgpu or
 * auto) leaves the matrices in the file until the engine uploads them (model/lazy.ts): the bar then
 * runs on through createEngineForCli, which closes the model's file.
 */
export async function loadForCli(path: string | undefined, options: { lazy?: boolean } = {}): Promise<LoadedModel> {
  const bar = progressBar('loading', 'B');
  let model: LoadedModel;
  try {
    model = await loadModel(path ?? demoModelPath(), { lazy: options.lazy, onProgress: (p) => bar.update(p.loadedBytes, p.totalBytes) });
  } catch (e) {
    bar.stop();
    throw e;
  }
  const close = model.close;
  if (!close) {
    bar.stop();
    return model;
  }
  return {
    ...model,
    close: async () => {
      bar.stop();
      await close();
    },
  };
}

/** Creates the engine for --backend; prints the notice when `auto` or the fused decode path falls back. */
export async function createEngineForCli(
  model: LoadedModel, backend: BackendChoice, contextLength: number, decode: DecodeChoice = 'fused', kvCache: KvCacheChoice = 'f16', prefillInt8?: PrefillInt8Choice,
): Promise<Engine> {
  let created: Awaited<ReturnType<typeof createEngine>>;
  const int8 = prefillInt8Of(prefillInt8);
  try {
    created = await createEngine(model, { backend, contextLength, decode, kvCache, ...(int8 !== undefined ? { webgpu: { prefillInt8: int8 } } : {}) });
  } finally {
    await model.close?.(); // a lazy model's file: every matrix is in the engine now
  }
  const { engine, notice } = created;
  if (notice) process.stderr.write(`pdvm: ${forCli(notice)}\n`);
  return engine;
}

/**
 * Default context: the model's, capped so the KV cache stays modest. A requested one is checked against
 * the model's maximum and this machine's memory before anything is allocated.
 */
export function defaultContext(model: LoadedModel, requested?: number, flag = '--context'): number {
  const ctx = requested ?? Math.min(model.config.maxPositionEmbeddings, 4096);
  return checkContextLength(model.config, ctx, requested === undefined ? 'the default context' : flag, totalmem());
}

/** Runs a command action; user errors print one line and exit 1, without a stack trace. */
export function action<A extends unknown[]>(fn: (...args: A) => Promise<void>) {
  return async (...args: A): Promise<void> => {
    try {
      await fn(...args);
    } catch (e) {
      reportAndExit(e);
    }
  };
}

export function reportAndExit(e: unknown): never {
  if (e instanceof PdvmError) {
    process.stderr.write(`pdvm: error: ${forCli(e.message)}\n`);
  } else if (e instanceof Error) {
    process.stderr.write(`pdvm: error: ${forCli(e.message)}\n`);
    if (process.env.PDVM_DEBUG) process.stderr.write(`${e.stack}\n`);
  } else {
    process.stderr.write(`pdvm: error: ${String(e)}\n`);
  }
  process.exit(1);
}

export type { Command };
