/**
 * Writes a synthetic Hugging Face model folder (config.json + model.safetensors, bf16 random weights)
 * tensor by tensor, so even a multi-gigabyte one never sits in memory. Used by bench/compress.ts and
 * the compressor's interruption test. No tokenizer: such models take token ids only.
 */
import { mkdir, open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { encodeSafetensorsHeader } from '../src/format/safetensors.js';

export interface SyntheticShape {
  architecture: 'LlamaForCausalLM' | 'Phi3ForCausalLM';
  hidden: number;
  intermediate: number;
  layers: number;
  heads: number;
  kvHeads: number;
  vocab: number;
}

/** (name, shape) of every tensor, in checkpoint order. */
function tensorList(s: SyntheticShape): [string, number[]][] {
  const headDim = s.hidden / s.heads;
  const kv = s.kvHeads * headDim;
  const list: [string, number[]][] = [['model.embed_tokens.weight', [s.vocab, s.hidden]]];
  for (let i = 0; i < s.layers; i++) {
    const p = `model.layers.${i}.`;
    list.push([p + 'input_layernorm.weight', [s.hidden]], [p + 'post_attention_layernorm.weight', [s.hidden]]);
    if (s.architecture === 'Phi3ForCausalLM') {
      list.push([p + 'self_attn.qkv_proj.weight', [s.hidden + 2 * kv, s.hidden]], [p + 'mlp.gate_up_proj.weight', [2 * s.intermediate, s.hidden]]);
    } else {
      list.push(
        [p + 'self_attn.q_proj.weight', [s.hidden, s.hidden]],
        [p + 'self_attn.k_proj.weight', [kv, s.hidden]],
        [p + 'self_attn.v_proj.weight', [kv, s.hidden]],
        [p + 'mlp.gate_proj.weight', [s.intermediate, s.hidden]],
        [p + 'mlp.up_proj.weight', [s.intermediate, s.hidden]],
      );
    }
    list.push([p + 'self_attn.o_proj.weight', [s.hidden, s.hidden]], [p + 'mlp.down_proj.weight', [s.hidden, s.intermediate]]);
  }
  list.push(['model.norm.weight', [s.hidden]], ['lm_head.weight', [s.vocab, s.hidden]]);
  return list;
}

/** Writes the folder; returns the checkpoint's size in bytes. */
export async function writeSyntheticModel(dir: string, s: SyntheticShape, seed = 1): Promise<number> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'config.json'), JSON.stringify({
    architectures: [s.architecture],
    hidden_size: s.hidden,
    intermediate_size: s.intermediate,
    num_hidden_layers: s.layers,
    num_attention_heads: s.heads,
    num_key_value_heads: s.kvHeads,
    vocab_size: s.vocab,
    max_position_embeddings: 4096,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: false,
    bos_token_id: 1,
    eos_token_id: 2,
  }, null, 2));
  const tensors = tensorList(s);
  const entries = tensors.map(([name, shape]) => ({ name, dtype: 'BF16' as const, shape, byteLength: 2 * shape.reduce((a, b) => a * b, 1) }));
  const { header } = encodeSafetensorsHeader(entries);
  const handle = await open(join(dir, 'model.safetensors'), 'w');
  let state = seed >>> 0 || 1;
  try {
    let pos = 0;
    await handle.write(header, 0, header.length, pos);
    pos += header.length;
    for (const [, shape] of tensors) {
      const n = shape.reduce((a, b) => a * b, 1);
      const isNorm = shape.length === 1;
      const std = isNorm ? 0 : 1 / Math.sqrt(shape[1]!);
      // a block at a time: bf16 of uniform noise with the std of a trained-ish init (norm weights near 1)
      const block = 1 << 22;
      for (let begin = 0; begin < n; begin += block) {
        const count = Math.min(block, n - begin);
        const out = new Uint16Array(count);
        const f = new Float32Array(1);
        const u = new Uint32Array(f.buffer);
        for (let i = 0; i < count; i++) {
          state ^= state << 13;
          state ^= state >>> 17;
          state ^= state << 5;
          state >>>= 0;
          f[0] = isNorm ? 1 + ((state / 4294967296) - 0.5) * 0.2 : ((state / 4294967296) - 0.5) * 3.464 * std;
          out[i] = u[0]! >>> 16;
        }
        const bytes = new Uint8Array(out.buffer);
        await handle.write(bytes, 0, bytes.length, pos);
        pos += bytes.length;
      }
    }
    return pos;
  } finally {
    await handle.close();
  }
}
