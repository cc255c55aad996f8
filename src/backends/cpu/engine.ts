/**
 * The float32 CPU backend: the whole forward pass reads top to bottom in `forwardSync`.
 * Buffers are allocated once per engine (and grown for longer prefills), never per token.
 */
import { InvalidInputError } from '../../errors.js';
import type { ModelConfig } from '../../model/config.js';
import type { ModelWeights } from '../../model/weights.js';
import { matmulEachRow, type WeightTensor } from '../../model/tensor.js';
import type { Engine, Sequence, StepRow } from '../../runtime/engine.js';
import { addInPlace, applyRope, attention, rmsnorm, ropeTables, swiglu } from './ops.js';

export class CpuSequence implements Sequence {
  length = 0;
  readonly k: Float32Array[]; // per layer: (contextLength, kvDim)
  readonly v: Float32Array[];
  /** Last-token logits of the latest forward, (vocab): each sequence has its own, so interleaved sequences never share. */
  readonly logits: Float32Array;
  readonly kvDim: number;
  constructor(config: ModelConfig, contextLength: number) {
    this.logits = new Float32Array(config.vocabSize);
    const kvDim = (this.kvDim = config.numKvHeads * config.headDim);
    this.k = Array.from({ length: config.numLayers }, () => new Float32Array(contextLength * kvDim));
    this.v = Array.from({ length: config.numLayers }, () => new Float32Array(contextLength * kvDim));
  }
  reset(): void {
    this.length = 0;
  }
  truncate(length: number): void {
    this.length = Math.min(this.length, length);
  }
  copyPrefix(source: Sequence, length: number): void {
    if (!(source instanceof CpuSequence) || source.kvDim !== this.kvDim || source.k.length !== this.k.length) {
      throw new InvalidInputError('copyPrefix needs a sequence of the same engine');
    }
    const n = Math.min(length, source.length);
    for (let l = 0; l < this.k.length; l++) {
      this.k[l]!.set(source.k[l]!.subarray(0, n * this.kvDim));
      this.v[l]!.set(source.v[l]!.subarray(0, n * this.kvDim));
    }
    this.length = n;
  }
  dispose(): void {}
}

/** Runs several tensors stacked along rows as one product: parts write consecutive column ranges of y. */
function stackedMatmul(parts: WeightTensor[], x: Float32Array, T: number, y: Float32Array, yStride: number): void {
  let offset = 0;
  for (const w of parts) {
    w.matmul(x, T, y, yStride, offset);
    offset += w.rows;
  }
}

/** stackedMatmul with each row's one-row arithmetic (batched steps). */
function stackedMatmulEachRow(parts: WeightTensor[], x: Float32Array, T: number, y: Float32Array, yStride: number): void {
  let offset = 0;
  for (const w of parts) {
    matmulEachRow(w, x, T, y, yStride, offset);
    offset += w.rows;
  }
}

interface Scratch {
  T: number;
  x: Float32Array; // (T, hidden) residual stream
  xn: Float32Array; // (T, hidden) normalised
  qkv: Float32Array; // (T, qDim + 2 kvDim)
  att: Float32Array; // (T, qDim)
  proj: Float32Array; // (T, hidden)
  gateUp: Float32Array; // (T, 2 ffn)
  act: Float32Array; // (T, ffn)
}

export class CpuEngine implements Engine {
  readonly backend = 'cpu';
  private readonly cos: Float32Array;
  private readonly sin: Float32Array;
  private scratch: Scratch | null = null;
  private readonly scores: Float32Array;
  /** Logits of a batched step, (rows wanting logits, vocab); grown as needed. */
  private stepLogits = new Float32Array(0);

  constructor(readonly config: ModelConfig, readonly weights: ModelWeights, readonly contextLength: number) {
    if (contextLength < 1) throw new InvalidInputError(`context length must be at least 1, got ${contextLength}`);
    ({ cos: this.cos, sin: this.sin } = ropeTables(config, contextLength));
    this.scores = new Float32Array(contextLength);
  }

  createSequence(): CpuSequence {
    return new CpuSequence(this.config, this.contextLength);
  }

  private scratchFor(T: number): Scratch {
    if (this.scratch && this.scratch.T >= T) return this.scratch;
    const c = this.config;
    const qkvDim = (c.numHeads + 2 * c.numKvHeads) * c.headDim;
    this.scratch = {
      T,
      x: new Float32Array(T * c.hiddenSize),
      xn: new Float32Array(T * c.hiddenSize),
      qkv: new Float32Array(T * qkvDim),
      att: new Float32Array(T * c.numHeads * c.headDim),
      proj: new Float32Array(T * c.hiddenSize),
      gateUp: new Float32Array(T * 2 * c.intermediateSize),
      act: new Float32Array(T * c.intermediateSize),
    };
    return this.scratch;
  }

  async forward(seq: Sequence, tokens: ArrayLike<number>, allLogits = false): Promise<Float32Array> {
    return this.forwardSync(seq as CpuSequence, tokens, allLogits);
  }

  forwardSync(seq: CpuSequence, tokens: ArrayLike<number>, allLogits = false): Float32Array {
    const c = this.config;
    const w = this.weights;
    const T = tokens.length;
    const pos0 = seq.length;
    if (T === 0) throw new InvalidInputError('forward needs at least one token');
    if (pos0 + T > this.contextLength) {
      throw new InvalidInputError(`${pos0 + T} tokens do not fit the context length ${this.contextLength}`);
    }
    const H = c.hiddenSize, hd = c.headDim, ffn = c.intermediateSize;
    const qD = c.numHeads * hd, kvD = c.numKvHeads * hd, qkvD = qD + 2 * kvD;
    const s = this.scratchFor(T);

    // x = embed_tokens(input_ids)
    for (let t = 0; t < T; t++) {
      const id = tokens[t]!;
      if (!(id >= 0 && id < c.vocabSize)) throw new InvalidInputError(`token id ${id} is outside the vocabulary (0..${c.vocabSize - 1})`);
      w.embed.readRow(id, s.x.subarray(t * H, (t + 1) * H));
    }

    for (let l = 0; l < c.numLayers; l++) {
      const L = w.layers[l]!;
      // attention block: x = x + o_proj(attn(rope(q), rope(k), v)) with q,k,v = proj(rmsnorm(x))
      rmsnorm(s.x, L.attnNorm, c.rmsNormEps, T, s.xn);
      stackedMatmul(L.qkv, s.xn, T, s.qkv, qkvD);
      if (L.qkvBias) for (let t = 0; t < T; t++) addInPlace(s.qkv.subarray(t * qkvD), L.qkvBias, qkvD);
      applyRope(s.qkv, T, qkvD, 0, c.numHeads, hd, c.rotaryDim, pos0, this.cos, this.sin);
      applyRope(s.qkv, T, qkvD, qD, c.numKvHeads, hd, c.rotaryDim, pos0, this.cos, this.sin);
      const kc = seq.k[l]!, vc = seq.v[l]!;
      for (let t = 0; t < T; t++) {
        kc.set(s.qkv.subarray(t * qkvD + qD, t * qkvD + qD + kvD), (pos0 + t) * kvD);
        vc.set(s.qkv.subarray(t * qkvD + qD + kvD, (t + 1) * qkvD), (pos0 + t) * kvD);
      }
      attention(s.qkv, qkvD, T, pos0, kc, vc, c, s.att, this.scores);
      L.o.matmul(s.att, T, s.proj, H, 0);
      addInPlace(s.x, s.proj, T * H);

      // MLP block: x = x + down(silu(gate(xn)) * up(xn)) with xn = rmsnorm(x)
      rmsnorm(s.x, L.mlpNorm, c.rmsNormEps, T, s.xn);
      stackedMatmul(L.gateUp, s.xn, T, s.gateUp, 2 * ffn);
      swiglu(s.gateUp, T, ffn, s.act);
      L.down.matmul(s.act, T, s.proj, H, 0);
      addInPlace(s.x, s.proj, T * H);
    }
    seq.length = pos0 + T;

    // logits = lm_head(norm(x)), for every row or only the last
    if (allLogits) {
      rmsnorm(s.x, w.finalNorm, c.rmsNormEps, T, s.xn);
      const logits = new Float32Array(T * c.vocabSize);
      w.lmHead.matmul(s.xn, T, logits, c.vocabSize, 0);
      return logits;
    }
    const last = s.x.subarray((T - 1) * H, T * H);
    rmsnorm(last, w.finalNorm, c.rmsNormEps, 1, s.xn);
    w.lmHead.matmul(s.xn, 1, seq.logits, c.vocabSize, 0);
    return seq.logits;
  }

  async step(rows: StepRow[]): Promise<(Float32Array | null)[]> {
    return this.stepSync(rows);
  }

  /**
   * One batched step: the rows of every sequence stacked, (T, hidden), through each matmul together
   * (each weight read once for all T, each row with its one-row arithmetic), attention per sequence
   * over its own cache. Reads top to bottom like forwardSync.
   */
  stepSync(rows: StepRow[]): (Float32Array | null)[] {
    const c = this.config;
    const w = this.weights;
    const H = c.hiddenSize, hd = c.headDim, ffn = c.intermediateSize, V = c.vocabSize;
    const qD = c.numHeads * hd, kvD = c.numKvHeads * hd, qkvD = qD + 2 * kvD;
    const seen = new Set<Sequence>();
    const first: number[] = []; // first stacked row of each row group
    let T = 0;
    for (const row of rows) {
      const seq = row.seq as CpuSequence;
      if (seen.has(seq)) throw new InvalidInputError('a batched step takes each sequence at most once');
      seen.add(seq);
      if (row.tokens.length === 0) throw new InvalidInputError('a batched step row needs at least one token');
      if (seq.length + row.tokens.length > this.contextLength) {
        throw new InvalidInputError(`${seq.length + row.tokens.length} tokens do not fit the context length ${this.contextLength}`);
      }
      first.push(T);
      T += row.tokens.length;
    }
    if (T === 0) return [];
    const s = this.scratchFor(T);

    // x = embed_tokens(input_ids), the rows of every sequence stacked: (T, hidden)
    rows.forEach((row, i) => {
      for (let j = 0; j < row.tokens.length; j++) {
        const id = row.tokens[j]!;
        if (!(id >= 0 && id < c.vocabSize)) throw new InvalidInputError(`token id ${id} is outside the vocabulary (0..${c.vocabSize - 1})`);
        w.embed.readRow(id, s.x.subarray((first[i]! + j) * H, (first[i]! + j + 1) * H));
      }
    });

    for (let l = 0; l < c.numLayers; l++) {
      const L = w.layers[l]!;
      rmsnorm(s.x, L.attnNorm, c.rmsNormEps, T, s.xn);
      stackedMatmulEachRow(L.qkv, s.xn, T, s.qkv, qkvD);
      if (L.qkvBias) for (let t = 0; t < T; t++) addInPlace(s.qkv.subarray(t * qkvD), L.qkvBias, qkvD);
      // per sequence: rope at its own positions, append to its own cache, attend over it
      rows.forEach((row, i) => {
        const seq = row.seq as CpuSequence;
        const n = row.tokens.length, pos0 = seq.length;
        const qkv = s.qkv.subarray(first[i]! * qkvD, (first[i]! + n) * qkvD);
        applyRope(qkv, n, qkvD, 0, c.numHeads, hd, c.rotaryDim, pos0, this.cos, this.sin);
        applyRope(qkv, n, qkvD, qD, c.numKvHeads, hd, c.rotaryDim, pos0, this.cos, this.sin);
        const kc = seq.k[l]!, vc = seq.v[l]!;
        for (let t = 0; t < n; t++) {
          kc.set(qkv.subarray(t * qkvD + qD, t * qkvD + qD + kvD), (pos0 + t) * kvD);
          vc.set(qkv.subarray(t * qkvD + qD + kvD, (t + 1) * qkvD), (pos0 + t) * kvD);
        }
        attention(qkv, qkvD, n, pos0, kc, vc, c, s.att.subarray(first[i]! * qD), this.scores);
      });
      matmulEachRow(L.o, s.att, T, s.proj, H, 0);
      addInPlace(s.x, s.proj, T * H);

      rmsnorm(s.x, L.mlpNorm, c.rmsNormEps, T, s.xn);
      stackedMatmulEachRow(L.gateUp, s.xn, T, s.gateUp, 2 * ffn);
      swiglu(s.gateUp, T, ffn, s.act);
      matmulEachRow(L.down, s.act, T, s.proj, H, 0);
      addInPlace(s.x, s.proj, T * H);
    }
    for (const row of rows) (row.seq as CpuSequence).length += row.tokens.length;

    // logits = lm_head(norm(x)) for the last row of each group that wants them: (R, vocab)
    const wanted = rows.map((row, i) => (row.logits ? first[i]! + row.tokens.length - 1 : -1)).filter((t) => t >= 0);
    const R = wanted.length;
    if (this.stepLogits.length < R * V) this.stepLogits = new Float32Array(R * V);
    wanted.forEach((t, r) => rmsnorm(s.x.subarray(t * H, (t + 1) * H), w.finalNorm, c.rmsNormEps, 1, s.xn.subarray(r * H, (r + 1) * H)));
    matmulEachRow(w.lmHead, s.xn, R, this.stepLogits, V, 0);
    let r = 0;
    return rows.map((row) => (row.logits ? this.stepLogits.subarray(r * V, ++r * V) : null));
  }

  dispose(): void {
    this.scratch = null;
  }
}
