/**
 * Sampling defaults from a model's generation_config.json, as transformers reads it. A value out of
 * range is the file's fault, so it is refused here naming the file and key (not later as if the user
 * had passed `--top-p`).
 */
import { ModelFormatError } from '../errors.js';
import type { SamplingOptions } from './sampling.js';

/** Key, option, and the check a present value must pass (with the range in words). */
const KEYS: [string, keyof SamplingOptions, (v: number) => boolean, string][] = [
  ['temperature', 'temperature', (v) => v >= 0, '>= 0'],
  ['top_k', 'topK', (v) => Number.isInteger(v) && v >= 0, 'a whole number >= 0'],
  ['top_p', 'topP', (v) => v > 0 && v <= 1, 'in (0, 1]'],
  ['min_p', 'minP', (v) => v >= 0 && v < 1, 'in [0, 1)'],
  ['repetition_penalty', 'repetitionPenalty', (v) => v > 0, '> 0'],
];

/** How messages name a model's generation config: the file in a folder, the metadata key in a .upg. */
export function generationConfigSource(modelPath: string): string {
  return modelPath.endsWith('.upg') ? `${modelPath} (upg_generation_config)` : `${modelPath.replace(/[\\/]+$/, '')}/generation_config.json`;
}

export function generationDefaults(gen: Record<string, unknown>, file = 'generation_config.json'): SamplingOptions {
  const out: SamplingOptions = {};
  for (const [key, option, ok, range] of KEYS) {
    const v = gen[key];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) {
      throw new ModelFormatError(file, `"${key}" must be ${range}, got ${JSON.stringify(v)}; fix or remove it (a command-line flag overrides it only per run)`);
    }
    out[option] = v;
  }
  if (gen.do_sample !== undefined && gen.do_sample !== null && typeof gen.do_sample !== 'boolean') {
    throw new ModelFormatError(file, `"do_sample" must be true or false, got ${JSON.stringify(gen.do_sample)}`);
  }
  // do_sample: false means greedy, whatever temperature says
  if (gen.do_sample === false) return { temperature: 0 };
  return out;
}
