/** Sampling defaults from a model's generation_config.json, as transformers reads it. */
import type { SamplingOptions } from './sampling.js';

export function generationDefaults(gen: Record<string, unknown>): SamplingOptions {
  const num = (k: string) => (typeof gen[k] === 'number' ? (gen[k] as number) : undefined);
  // do_sample: false means greedy, whatever temperature says
  if (gen.do_sample === false) return { temperature: 0 };
  return {
    temperature: num('temperature'),
    topK: num('top_k'),
    topP: num('top_p'),
    minP: num('min_p'),
    repetitionPenalty: num('repetition_penalty'),
  };
}
