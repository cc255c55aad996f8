/**
 * Architecture registry. Mistral (sliding window) and Qwen2 (q/k/v biases) share Llama's tensor layout;
 * their differences are config flags (slidingWindow, attentionBias) read in config.ts.
 */
import type { Architecture } from '../config.js';
import type { ArchitectureDefinition } from '../weights.js';
import { llama } from './llama.js';
import { phi3 } from './phi3.js';

export const architectures: Record<Architecture, ArchitectureDefinition> = {
  LlamaForCausalLM: llama,
  MistralForCausalLM: llama,
  Qwen2ForCausalLM: llama,
  Phi3ForCausalLM: phi3,
};
