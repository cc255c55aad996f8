/**
 * A synthetic model of a named shape (BENCH_SHAPES) with random q4 weights made on the host, as a
 * LoadedModel any backend can run: `pdvm serve --synthetic llama-3.1-8b` and the load test serve it on
 * a machine that cannot download a model. No tokenizer (prompts are token ids) and no EOS (every
 * stream runs to max_tokens). Weights as `pdvm bench` makes them on the GPU: random nibbles, per group
 * scale in [0.002, 0.004] and min = -7.5 scale; norms are ones. Deterministic from the seed.
 */
import { Q4Tensor } from '../format/upg/encodings/q4.js';
import { roundToF16 } from '../format/upg/encodings/common.js';
import { InvalidInputError } from '../errors.js';
import type { LoadedModel } from '../model/loaded.js';
import type { LayerWeights, ModelWeights } from '../model/weights.js';
import { BENCH_SHAPES, benchConfig } from './synthetic.js';

const GROUP = 64;

/** Random q4 matrix (rows, cols) from a xorshift stream. */
function randomQ4(rows: number, cols: number, next: () => number): Q4Tensor {
  const groups = Math.ceil(cols / GROUP);
  const qweight = new Uint32Array(rows * (groups * GROUP) / 8);
  for (let i = 0; i < qweight.length; i++) qweight[i] = next();
  const scaleMin = new Uint16Array(rows * groups * 2);
  for (let i = 0; i < rows * groups; i++) {
    const scale = roundToF16(0.002 + 0.002 * ((next() >>> 8) / 16777216));
    scaleMin[2 * i] = scale.bits;
    scaleMin[2 * i + 1] = roundToF16(-7.5 * scale.value).bits;
  }
  return new Q4Tensor(rows, cols, GROUP, qweight, scaleMin);
}

export function syntheticModel(shapeName: string, seed = 1): LoadedModel {
  const shape = BENCH_SHAPES[shapeName];
  if (!shape) throw new InvalidInputError(`--synthetic: unknown shape "${shapeName}"; one of ${Object.keys(BENCH_SHAPES).join(', ')}`);
  const config = benchConfig(shape);
  let s = (seed * 2654435761) >>> 0 || 1;
  const next = () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return s >>> 0;
  };
  const H = shape.hidden, hd = shape.headDim;
  const ones = (n: number) => new Float32Array(n).fill(1);
  const layers: LayerWeights[] = Array.from({ length: shape.layers }, () => ({
    attnNorm: ones(H),
    qkv: [randomQ4((shape.heads + 2 * shape.kvHeads) * hd, H, next)],
    qkvBias: null,
    o: randomQ4(H, shape.heads * hd, next),
    mlpNorm: ones(H),
    gateUp: [randomQ4(2 * shape.intermediate, H, next)],
    down: randomQ4(H, shape.intermediate, next),
  }));
  const weights: ModelWeights = { embed: randomQ4(shape.vocab, H, next), layers, finalNorm: ones(H), lmHead: randomQ4(shape.vocab, H, next) };
  return { path: `synthetic-${shapeName}-q4`, config, weights, tokenizer: null, generationConfig: {}, tensors: [] };
}
