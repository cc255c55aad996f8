/**
 * What int8 tensor-core products would cost in accuracy, on the CPU (no GPU needed): the demo q4
 * model's perplexity by the fixtures' protocol (ctx 256, the first 2,049 validation tokens) with
 * every q4 g64 product emulated in one of these numerics (a program that prints figures):
 *   f32            the CPU reference (x and the q4 weights as they are)
 *   x8-block       x rounded to int8 per token and block of 64 columns, the q4 nibbles exact: the
 *                  arithmetic of kernels/matmul-int8.ts (y = sum_g scale s_x sum u xq + min sum x),
 *                  which needs the per-group round trip of its i32 results (docs/PERFORMANCE.md)
 *   x8-token       x rounded to int8 per token (one scale a row of x), the q4 nibbles exact
 *   w8-row         the q4 weights, decoded, rounded again to int8 with one scale a row; x as it is
 *   w8-row+x8-token  both: y = S_row s_x sum w8 xq, one scale for the whole sum, so an i8 x i8
 *                  tensor-core product needs no per-group round trip (the kernel's 'no-scale' lab
 *                  variant, which ran at 10,091 tok/s on the 8B shape against 3,330 with it)
 *   w8-row+x8-block  per-row int8 weights, x per block of 64
 *
 *   npx tsc -p . && node dist/bench/int8-numerics.js [--model models/brown-llama-12m.upg] [--limit 2049] [--ctx 256] [--only a,b]
 */
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { CpuEngine } from '../src/backends/cpu/engine.js';
import { Q4Tensor } from '../src/format/upg/encodings/q4.js';
import { loadModel } from '../src/model/load.js';
import type { WeightTensor } from '../src/model/tensor.js';
import type { ModelWeights } from '../src/model/weights.js';
import { perplexity, perplexityTokenStream } from '../src/runtime/perplexity.js';
import { scriptArgs } from '../scripts/args.js';

const ROOT = join(import.meta.dirname, '..', '..');
const VARIANTS = ['f32', 'x8-block', 'x8-token', 'w8-row', 'w8-row+x8-token', 'w8-row+x8-block'] as const;
type Variant = (typeof VARIANTS)[number];
const BLOCK = 64;

const { values } = scriptArgs({
  options: {
    model: { type: 'string', default: join(ROOT, 'models', 'brown-llama-12m.upg') },
    limit: { type: 'string', default: '2049' },
    ctx: { type: 'string', default: '256' },
    only: { type: 'string' },
  },
});

/** x (cols) rounded to int8 with one scale per `span` columns: the integers and their scales. */
function quantize(x: Float32Array, span: number): { q: Int8Array; scale: Float32Array } {
  const n = Math.ceil(x.length / span);
  const q = new Int8Array(x.length), scale = new Float32Array(n);
  for (let b = 0; b < n; b++) {
    let amax = 0;
    for (let c = b * span; c < Math.min(x.length, (b + 1) * span); c++) amax = Math.max(amax, Math.abs(x[c]!));
    const s = Math.fround(amax / 127), inv = amax > 0 ? Math.fround(127 / amax) : 0;
    scale[b] = s;
    for (let c = b * span; c < Math.min(x.length, (b + 1) * span); c++) q[c] = Math.round(Math.fround(x[c]! * inv));
  }
  return { q, scale };
}

/** A q4 g64 matrix whose product is emulated in `variant`'s numerics (float64 sums: the integer sums are exact). */
function emulated(w: Q4Tensor, variant: Variant): WeightTensor {
  const { rows, cols } = w;
  const groups = cols / BLOCK;
  const u = new Uint8Array(rows * cols), W = new Float32Array(rows * cols);
  const scaleMin = new Float32Array(rows * groups * 2);
  {
    const row = new Float32Array(cols);
    for (let r = 0; r < rows; r++) {
      w.readRow(r, row);
      W.set(row, r * cols);
    }
    const sm = (w as unknown as { scaleMinF32: Float32Array }).scaleMinF32;
    scaleMin.set(sm);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c += 8) {
        let word = w.qweight[r * w.wordsPerRow + c / 8]!;
        for (let k = 0; k < 8; k++, word >>>= 4) u[r * cols + c + k] = word & 15;
      }
    }
  }
  // per-row int8 of the decoded weights
  const w8 = new Int8Array(rows * cols), wScale = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    const { q, scale } = quantize(W.subarray(r * cols, (r + 1) * cols), cols);
    w8.set(q, r * cols);
    wScale[r] = scale[0]!;
  }
  const product = (x: Float32Array, r: number): number => {
    switch (variant) {
      case 'f32': {
        let s = 0;
        for (let c = 0; c < cols; c++) s += W[r * cols + c]! * x[c]!;
        return s;
      }
      case 'x8-block':
      case 'x8-token': {
        const { q, scale } = quant(x, variant === 'x8-block' ? BLOCK : cols);
        let y = 0;
        for (let g = 0; g < groups; g++) {
          let acc = 0, sum = 0;
          for (let c = g * BLOCK; c < (g + 1) * BLOCK; c++) {
            acc += u[r * cols + c]! * q[c]!;
            sum += x[c]!;
          }
          const s = scale[variant === 'x8-block' ? g : 0]!;
          y += scaleMin[(r * groups + g) * 2]! * s * acc + scaleMin[(r * groups + g) * 2 + 1]! * sum;
        }
        return y;
      }
      case 'w8-row': {
        let s = 0;
        for (let c = 0; c < cols; c++) s += w8[r * cols + c]! * x[c]!;
        return wScale[r]! * s;
      }
      case 'w8-row+x8-token': {
        const { q, scale } = quant(x, cols);
        let acc = 0;
        for (let c = 0; c < cols; c++) acc += w8[r * cols + c]! * q[c]!;
        return wScale[r]! * scale[0]! * acc;
      }
      case 'w8-row+x8-block': {
        const { q, scale } = quant(x, BLOCK);
        let y = 0;
        for (let g = 0; g < groups; g++) {
          let acc = 0;
          for (let c = g * BLOCK; c < (g + 1) * BLOCK; c++) acc += w8[r * cols + c]! * q[c]!;
          y += scale[g]! * acc;
        }
        return wScale[r]! * y;
      }
    }
  };
  // x is quantized once a token, not once a row
  let lastX: Float32Array | null = null, lastSpan = 0, lastQ: { q: Int8Array; scale: Float32Array } | null = null;
  const quant = (x: Float32Array, span: number) => {
    if (x !== lastX || span !== lastSpan) {
      lastQ = quantize(x, span);
      lastX = x;
      lastSpan = span;
    }
    return lastQ!;
  };
  const matmul = (x: Float32Array, T: number, y: Float32Array, yStride: number, yOffset: number): void => {
    for (let t = 0; t < T; t++) {
      const xt = x.slice(t * cols, (t + 1) * cols);
      for (let r = 0; r < rows; r++) y[t * yStride + yOffset + r] = product(xt, r);
    }
  };
  return { encoding: 'q4', rows, cols, byteLength: w.byteLength, matmul, readRow: (r, out) => w.readRow(r, out) };
}

async function main(): Promise<void> {
  const model = await loadModel(values.model!);
  const text = await readFile(join(ROOT, '..', 'shared', 'fixtures', 'text', 'brown', 'validation.txt'), 'utf8');
  const ids = perplexityTokenStream(model.tokenizer!, text, model.config.bosTokenId).slice(0, Number(values.limit));
  const ctx = Number(values.ctx);
  const takes = (t: WeightTensor): t is Q4Tensor => t instanceof Q4Tensor && t.group === BLOCK && t.cols % BLOCK === 0;
  const all: WeightTensor[] = [...model.weights.layers.flatMap((L) => [...L.qkv, L.o, ...L.gateUp, L.down]), model.weights.lmHead];
  console.log(`${values.model}: ${all.filter(takes).length} of ${all.length} products are q4 g64 (lm_head ${takes(model.weights.lmHead) ? 'included' : `not: ${model.weights.lmHead.encoding}`}); ${ids.length} tokens, ctx ${ctx}`);
  const only = values.only ? (values.only.split(',') as Variant[]) : VARIANTS;
  let base: number | null = null;
  for (const variant of only) {
    const swap = (t: WeightTensor) => (takes(t) ? emulated(t, variant) : t);
    const w = model.weights;
    const weights: ModelWeights = { ...w, lmHead: swap(w.lmHead), layers: w.layers.map((L) => ({ ...L, qkv: L.qkv.map(swap), o: swap(L.o), gateUp: L.gateUp.map(swap), down: swap(L.down) })) };
    const engine = new CpuEngine(model.config, weights, ctx + 1);
    const t0 = performance.now();
    const { perplexity: p } = await perplexity(engine, ids, ctx);
    base ??= variant === 'f32' ? p : null;
    const rel = base !== null ? ` (${(((p - base) / base) * 100).toFixed(3)}% from f32)` : '';
    console.log(`${variant.padEnd(16)} perplexity ${p.toFixed(6)}${rel}  [${((performance.now() - t0) / 1000).toFixed(1)} s]`);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
