/** Shared test helpers: fixture paths and comparisons that report the worst element. */
import { fileURLToPath } from 'node:url';
import { dirname, join, resolve } from 'node:path';
import { SafetensorsFile } from '../src/format/safetensors.js';
import { FileSource } from '../src/io/node-files.js';
import { generate, type GenerateOptions, type GenerationContext, type GenerationResult } from '../src/runtime/generate.js';

/** Project root (tests run from dist/test/...). */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
/** ../shared/fixtures beside the project, or PDVM_FIXTURES (e.g. on the device machine). */
export const FIXTURES = process.env.PDVM_FIXTURES ? resolve(process.env.PDVM_FIXTURES) : resolve(ROOT, '..', 'shared', 'fixtures');
export const MODELS = join(FIXTURES, 'models');
export const BROWN = join(MODELS, 'brown-llama-12m');
export const ARCH_MODELS = ['llama', 'llama3-tied-scaled', 'phi3', 'qwen2', 'mistral-swa'].map((n) => join(MODELS, 'arch', n));
export const ALL_FIXTURE_MODELS = [BROWN, ...ARCH_MODELS];
export const VALIDATION_TEXT = join(FIXTURES, 'text', 'brown', 'validation.txt');
export const TRAIN_TEXT = join(FIXTURES, 'text', 'brown', 'train.txt');
export const CLI = join(ROOT, 'dist', 'src', 'cli', 'main.js');

export interface Reference {
  inputIds: Int32Array;
  logits: Float32Array;
  prompts: { prompt: number[]; greedy: number[] }[];
}

export async function readReference(modelDir: string): Promise<Reference> {
  const f = await SafetensorsFile.open(await FileSource.open(join(modelDir, 'reference.safetensors')));
  try {
    const prompts = [];
    for (let i = 0; f.tensors.has(`prompt_${i}`); i++) {
      prompts.push({ prompt: [...(await f.readI32(`prompt_${i}`))], greedy: [...(await f.readI32(`greedy_${i}`))] });
    }
    return { inputIds: await f.readI32('input_ids'), logits: await f.readF32('logits'), prompts };
  } finally {
    await f.close();
  }
}

/**
 * ‖a − b‖ / ‖b‖ with the worst element, for messages like
 * "relative error 3e-3 > 1e-4; worst at [17]: 0.512 vs 0.498".
 */
export function compare(a: ArrayLike<number>, b: ArrayLike<number>): { rel: number; worst: number; worstAt: number; a: number; b: number } {
  if (a.length !== b.length) throw new Error(`length mismatch: ${a.length} vs ${b.length}`);
  let num = 0, den = 0, worst = -1, worstAt = -1;
  for (let i = 0; i < a.length; i++) {
    const d = a[i]! - b[i]!;
    num += d * d;
    den += b[i]! * b[i]!;
    const ad = Number.isNaN(d) ? Infinity : Math.abs(d);
    if (ad > worst) {
      worst = ad;
      worstAt = i;
    }
  }
  return { rel: Math.sqrt(num) / Math.sqrt(den || 1), worst, worstAt, a: a[worstAt]!, b: b[worstAt]! };
}

export function assertClose(a: ArrayLike<number>, b: ArrayLike<number>, tol: number, what: string): void {
  const r = compare(a, b);
  if (!(r.rel <= tol)) {
    throw new Error(`${what}: relative error ${r.rel.toExponential(3)} > ${tol}; worst at [${r.worstAt}]: ${r.a} vs ${r.b} (|diff| ${r.worst.toExponential(3)})`);
  }
}

/** Deterministic pseudo-random numbers for test inputs. */
export function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 4294967296;
  };
}

/** Runs a generation on a new sequence, collecting the streamed text beside the result. */
export async function streamed(ctx: GenerationContext, prompt: number[], options: GenerateOptions): Promise<GenerationResult & { streamed: string }> {
  const it = generate(ctx, ctx.engine.createSequence(), prompt, options);
  let text = '';
  while (true) {
    const r = await it.next();
    if (r.done) return { ...r.value, streamed: text };
    text += r.value.text;
  }
}
