/**
 * LlamaForCausalLM (also the base for Mistral and Qwen2): separate q/k/v and gate/up projections,
 * optional q/k/v biases, lm_head tied to the embedding when the config says so or the checkpoint has none.
 */
import type { ModelConfig } from '../config.js';
import { kvDim, qDim, type ArchitectureDefinition, type LayerWeights, type TensorSpec } from '../weights.js';

const p = (i: number) => `model.layers.${i}.`;

function lmHeadIsTied(config: ModelConfig, has: (n: string) => boolean): boolean {
  return config.tieWordEmbeddings || !has('lm_head.weight');
}

export function commonSpecs(c: ModelConfig, has: (n: string) => boolean, layer: (i: number) => TensorSpec[]): TensorSpec[] {
  const specs: TensorSpec[] = [{ name: 'model.embed_tokens.weight', shape: [c.vocabSize, c.hiddenSize], kind: 'matrix' }];
  for (let i = 0; i < c.numLayers; i++) {
    specs.push(
      { name: p(i) + 'input_layernorm.weight', shape: [c.hiddenSize], kind: 'vector' },
      ...layer(i),
      { name: p(i) + 'self_attn.o_proj.weight', shape: [c.hiddenSize, qDim(c)], kind: 'matrix' },
      { name: p(i) + 'post_attention_layernorm.weight', shape: [c.hiddenSize], kind: 'vector' },
      { name: p(i) + 'mlp.down_proj.weight', shape: [c.hiddenSize, c.intermediateSize], kind: 'matrix' },
    );
  }
  specs.push({ name: 'model.norm.weight', shape: [c.hiddenSize], kind: 'vector' });
  if (!lmHeadIsTied(c, has)) specs.push({ name: 'lm_head.weight', shape: [c.vocabSize, c.hiddenSize], kind: 'matrix' });
  return specs;
}

export const llama: ArchitectureDefinition = {
  tensorSpecs(c, has) {
    return commonSpecs(c, has, (i) => {
      const s: TensorSpec[] = [
        { name: p(i) + 'self_attn.q_proj.weight', shape: [qDim(c), c.hiddenSize], kind: 'matrix' },
        { name: p(i) + 'self_attn.k_proj.weight', shape: [kvDim(c), c.hiddenSize], kind: 'matrix' },
        { name: p(i) + 'self_attn.v_proj.weight', shape: [kvDim(c), c.hiddenSize], kind: 'matrix' },
        { name: p(i) + 'mlp.gate_proj.weight', shape: [c.intermediateSize, c.hiddenSize], kind: 'matrix' },
        { name: p(i) + 'mlp.up_proj.weight', shape: [c.intermediateSize, c.hiddenSize], kind: 'matrix' },
      ];
      if (c.attentionBias) {
        s.push(
          { name: p(i) + 'self_attn.q_proj.bias', shape: [qDim(c)], kind: 'vector' },
          { name: p(i) + 'self_attn.k_proj.bias', shape: [kvDim(c)], kind: 'vector' },
          { name: p(i) + 'self_attn.v_proj.bias', shape: [kvDim(c)], kind: 'vector' },
        );
      }
      return s;
    });
  },
  assemble(c, matrix, vector, has) {
    const layers: LayerWeights[] = [];
    for (let i = 0; i < c.numLayers; i++) {
      const a = p(i) + 'self_attn.';
      let qkvBias: Float32Array | null = null;
      if (c.attentionBias) {
        qkvBias = new Float32Array(qDim(c) + 2 * kvDim(c));
        qkvBias.set(vector(a + 'q_proj.bias'), 0);
        qkvBias.set(vector(a + 'k_proj.bias'), qDim(c));
        qkvBias.set(vector(a + 'v_proj.bias'), qDim(c) + kvDim(c));
      }
      layers.push({
        attnNorm: vector(p(i) + 'input_layernorm.weight'),
        qkv: [matrix(a + 'q_proj.weight'), matrix(a + 'k_proj.weight'), matrix(a + 'v_proj.weight')],
        qkvBias,
        o: matrix(a + 'o_proj.weight'),
        mlpNorm: vector(p(i) + 'post_attention_layernorm.weight'),
        gateUp: [matrix(p(i) + 'mlp.gate_proj.weight'), matrix(p(i) + 'mlp.up_proj.weight')],
        down: matrix(p(i) + 'mlp.down_proj.weight'),
      });
    }
    const embed = matrix('model.embed_tokens.weight');
    return {
      embed,
      layers,
      finalNorm: vector('model.norm.weight'),
      lmHead: lmHeadIsTied(c, has) ? embed : matrix('lm_head.weight'),
    };
  },
};
