/**
 * Phi3ForCausalLM (Phi-3, Phi-4): the checkpoint already fuses q/k/v into `qkv_proj` and gate/up into
 * `gate_up_proj`, which is the canonical layout, so each is one part.
 */
import { kvDim, qDim, type ArchitectureDefinition, type LayerWeights } from '../weights.js';
import { commonSpecs } from './llama.js';

const p = (i: number) => `model.layers.${i}.`;

export const phi3: ArchitectureDefinition = {
  tensorSpecs(c, has) {
    return commonSpecs(c, has, (i) => [
      { name: p(i) + 'self_attn.qkv_proj.weight', shape: [qDim(c) + 2 * kvDim(c), c.hiddenSize], kind: 'matrix' },
      { name: p(i) + 'mlp.gate_up_proj.weight', shape: [2 * c.intermediateSize, c.hiddenSize], kind: 'matrix' },
    ]);
  },
  assemble(c, matrix, vector, has) {
    const layers: LayerWeights[] = [];
    for (let i = 0; i < c.numLayers; i++) {
      layers.push({
        attnNorm: vector(p(i) + 'input_layernorm.weight'),
        qkv: [matrix(p(i) + 'self_attn.qkv_proj.weight')],
        qkvBias: null,
        o: matrix(p(i) + 'self_attn.o_proj.weight'),
        mlpNorm: vector(p(i) + 'post_attention_layernorm.weight'),
        gateUp: [matrix(p(i) + 'mlp.gate_up_proj.weight')],
        down: matrix(p(i) + 'mlp.down_proj.weight'),
      });
    }
    const embed = matrix('model.embed_tokens.weight');
    const tied = c.tieWordEmbeddings || !has('lm_head.weight');
    return { embed, layers, finalNorm: vector('model.norm.weight'), lmHead: tied ? embed : matrix('lm_head.weight') };
  },
};
