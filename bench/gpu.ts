/**
 * WebGPU backend benchmark: prefill and decode tokens/s and the weight bandwidth decode achieves.
 *   node dist/bench/gpu.js --model PATH                     a Hugging Face folder or a .upg artifact
 *   node dist/bench/gpu.js --synthetic 4096,14336,32,32,8,128256 [--dtype bf16|f16|f32] [--encoding q8|q4|bitmap|nm|csr]
 *       hidden,intermediate,layers,heads,kvHeads,vocab: random weights built in memory (no files)
 *   options: --prompt 128 --decode 128 --runs 3 --chunk 128 --no-subgroups --json
 * Decode picks tokens on the GPU (argmax, 4 bytes read back a token); "decode+logits" reads the whole
 * logits row back each token, as the CPU-side sampler needs. A program, not a test: the figures go to
 * docs/PERFORMANCE.md with the command that produced them.
 */
import { scriptArgs } from '../scripts/args.js';
import { WebGpuEngine } from '../src/backends/webgpu/engine.js';
import { BitmapTensor, CsrTensor, NmTensor, Q4Tensor, Q8Tensor } from '../src/format/upg/encodings/index.js';
import { f32ToF16, f16ToF32 } from '../src/format/dtype.js';
import { parseConfig, type ModelConfig } from '../src/model/config.js';
import { loadModel } from '../src/model/load.js';
import { DenseTensor, type WeightTensor } from '../src/model/tensor.js';
import type { ModelWeights } from '../src/model/weights.js';

const { values } = scriptArgs({
  options: {
    model: { type: 'string' },
    synthetic: { type: 'string' },
    dtype: { type: 'string', default: 'bf16' },
    encoding: { type: 'string', default: 'dense' },
    prompt: { type: 'string', default: '128' },
    decode: { type: 'string', default: '128' },
    runs: { type: 'string', default: '3' },
    chunk: { type: 'string', default: '128' },
    'no-subgroups': { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
  },
});
const promptLen = Number(values.prompt);
const decodeLen = Number(values.decode);
const runs = Number(values.runs);
const log = (s: string) => {
  if (!values.json) console.log(s);
};

/** xorshift32 values in [-scale, scale), rounded to the stored dtype. */
function randomMatrix(rows: number, cols: number, seed: number, dtype: string): DenseTensor {
  const data = new Float32Array(rows * cols);
  const bits = new Uint32Array(data.buffer);
  let s = seed >>> 0 || 1;
  const scale = 1 / Math.sqrt(cols);
  for (let i = 0; i < data.length; i++) {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    data[i] = ((s / 4294967296) * 2 - 1) * scale;
    if (dtype === 'bf16') bits[i] = bits[i]! & 0xffff0000;
  }
  if (dtype === 'f16') for (let i = 0; i < data.length; i++) data[i] = f16ToF32(f32ToF16(data[i]!));
  return new DenseTensor(rows, cols, data, dtype === 'bf16' ? 'BF16' : dtype === 'f16' ? 'F16' : 'F32');
}

/** Zeroes all but the largest-magnitude half (unstructured) or 2 of every 4 (nm), then packs. */
function encode(t: DenseTensor, encoding: string): WeightTensor {
  const { rows, cols, data } = t;
  if (encoding === 'dense') return t;
  if (encoding === 'q8') return Q8Tensor.pack(rows, cols, data);
  if (encoding === 'q4') return Q4Tensor.pack(rows, cols, data, 64);
  const pruned = Float32Array.from(data);
  if (encoding === 'nm') {
    for (let i = 0; i + 4 <= pruned.length; i += 4) {
      const order = [0, 1, 2, 3].sort((a, b) => Math.abs(pruned[i + a]!) - Math.abs(pruned[i + b]!));
      pruned[i + order[0]!] = 0;
      pruned[i + order[1]!] = 0;
    }
    return NmTensor.pack(rows, cols, pruned, 2, 4, 8);
  }
  const threshold = 0.5 / Math.sqrt(cols); // about half of uniform(-1/sqrt(cols), 1/sqrt(cols))
  for (let i = 0; i < pruned.length; i++) if (Math.abs(pruned[i]!) < threshold) pruned[i] = 0;
  if (encoding === 'bitmap') return BitmapTensor.pack(rows, cols, pruned, 64, 8);
  if (encoding === 'csr') return CsrTensor.pack(rows, cols, pruned);
  throw new Error(`--encoding ${encoding}: expected dense, q8, q4, bitmap, nm or csr`);
}

function syntheticModel(spec: string): { config: ModelConfig; weights: ModelWeights; label: string } {
  const [hidden, intermediate, layers, heads, kvHeads, vocab] = spec.split(',').map(Number) as number[];
  if (![hidden, intermediate, layers, heads, kvHeads, vocab].every((v) => Number.isInteger(v) && v! > 0)) {
    throw new Error('--synthetic hidden,intermediate,layers,heads,kvHeads,vocab (positive integers)');
  }
  const config = parseConfig({
    architectures: ['LlamaForCausalLM'], hidden_size: hidden, intermediate_size: intermediate, num_hidden_layers: layers,
    num_attention_heads: heads, num_key_value_heads: kvHeads, vocab_size: vocab, max_position_embeddings: 8192, rms_norm_eps: 1e-5,
  });
  const hd = hidden! / heads!;
  let seed = 1;
  const m = (r: number, c: number) => encode(randomMatrix(r, c, seed++, values.dtype!), values.encoding!);
  const ones = (n: number) => new Float32Array(n).fill(1);
  const weights: ModelWeights = {
    embed: randomMatrix(vocab!, hidden!, seed++, values.dtype!),
    layers: Array.from({ length: layers! }, () => ({
      attnNorm: ones(hidden!),
      qkv: [m((heads! + 2 * kvHeads!) * hd, hidden!)],
      qkvBias: null,
      o: m(hidden!, heads! * hd),
      mlpNorm: ones(hidden!),
      gateUp: [m(2 * intermediate!, hidden!)],
      down: m(hidden!, intermediate!),
    })),
    finalNorm: ones(hidden!),
    lmHead: m(vocab!, hidden!),
  };
  return { config, weights, label: `synthetic ${spec} ${values.dtype} ${values.encoding}` };
}

const t0 = performance.now();
const model = values.synthetic
  ? syntheticModel(values.synthetic)
  : values.model
    ? { ...(await loadModel(values.model)), label: values.model }
    : (() => {
        throw new Error('give --model PATH or --synthetic hidden,intermediate,layers,heads,kvHeads,vocab');
      })();
const built = performance.now() - t0;
const c = model.config;
const t1 = performance.now();
const engine = await WebGpuEngine.create(model, {
  contextLength: promptLen + decodeLen + 1,
  prefillChunk: Number(values.chunk),
  disableSubgroups: values['no-subgroups'],
  decode: 'unfused', // this measures forward() and forwardToken(); `pdvm bench` measures the fused path
});
const loadMs = performance.now() - t1;
const seq = engine.createSequence();
const prompt = Array.from({ length: promptLen }, (_, i) => (i * 7919 + 13) % c.vocabSize);
const greedy = { temperature: 0, topK: 0, topP: 1, minP: 0, random: 0 };

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const prefill: number[] = [], decode: number[] = [], decodeLogits: number[] = [];
for (let r = 0; r < runs + 1; r++) {
  seq.reset();
  let t = performance.now();
  let token = await engine.forwardToken(seq, prompt, greedy);
  const tp = performance.now() - t;
  t = performance.now();
  for (let i = 0; i < decodeLen; i++) token = await engine.forwardToken(seq, [token], greedy);
  const td = performance.now() - t;
  seq.truncate(promptLen);
  t = performance.now();
  const n = Math.min(decodeLen, 32);
  for (let i = 0; i < n; i++) await engine.forward(seq, [token]);
  const tl = performance.now() - t;
  if (r === 0) continue; // warm-up: pipelines, first submits
  prefill.push((promptLen / tp) * 1000);
  decode.push((decodeLen / td) * 1000);
  decodeLogits.push((n / tl) * 1000);
}
// bytes one decode step streams: every matrix once (the embedding reads one row)
const w = engine.weights;
const streamed = w.bytes - w.embed.bytes + (w.embed === w.lmHead ? w.embed.bytes : 0);
const result = {
  model: model.label,
  backend: 'webgpu',
  adapter: engine.gpu.adapterDescription,
  subgroups: engine.gpu.subgroups,
  encoding: values.synthetic ? values.encoding : 'as stored',
  prompt_tokens: promptLen,
  decode_tokens: decodeLen,
  prefill_tokens_per_second: median(prefill),
  decode_tokens_per_second: median(decode),
  decode_with_logits_readback_tokens_per_second: median(decodeLogits),
  decode_weight_gb_per_second: (streamed * median(decode)) / 1e9,
  gpu_weight_bytes: w.bytes,
  pipelines: engine.gpu.pipelineCount,
  build_ms: Math.round(built),
  load_ms: Math.round(loadMs),
  runs,
};
log(`model    ${result.model}: ${(w.bytes / 1e6).toFixed(1)} MB on the GPU; built in ${result.build_ms} ms, uploaded in ${result.load_ms} ms`);
log(`device   ${result.adapter} (subgroups ${result.subgroups ? 'on' : 'off'}), ${result.pipelines} pipelines`);
log(`prefill  ${result.prefill_tokens_per_second.toFixed(1)} tok/s  (${promptLen}-token prompt, median of ${runs})`);
log(`decode   ${result.decode_tokens_per_second.toFixed(1)} tok/s  (${decodeLen} tokens, GPU argmax; ${result.decode_weight_gb_per_second.toFixed(1)} GB/s of weights)`);
log(`decode   ${result.decode_with_logits_readback_tokens_per_second.toFixed(1)} tok/s  with the logits row read back each token`);
console.log(JSON.stringify(result));
engine.dispose();
