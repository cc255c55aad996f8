/**
 * The readable float32 reference for every operation of the decoder. Each function states the
 * PyTorch expression it implements and works on T rows at once (prefill) or one (decode).
 */
import type { ModelConfig } from '../../model/config.js';

/** x * rsqrt(mean(x^2) + eps) * w, per row of x: (T, dim). May run in place (out === x). */
export function rmsnorm(x: Float32Array, w: Float32Array, eps: number, T: number, out: Float32Array): void {
  const dim = w.length;
  for (let t = 0; t < T; t++) {
    const o = t * dim;
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += x[o + i]! * x[o + i]!;
    const scale = 1 / Math.sqrt(ss / dim + eps);
    for (let i = 0; i < dim; i++) out[o + i] = x[o + i]! * scale * w[i]!;
  }
}

/**
 * RoPE inverse frequencies, (rotaryDim / 2), with the config's scaling applied:
 * inv_freq = 1 / theta^(2i / rotaryDim); llama3 scaling divides low frequencies by `factor` and
 * interpolates in between, as transformers' _compute_llama3_parameters.
 */
export function ropeInverseFrequencies(c: ModelConfig): Float64Array {
  const half = c.rotaryDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / Math.pow(c.ropeTheta, (2 * i) / c.rotaryDim);
  const s = c.ropeScaling;
  if (s.type === 'linear') for (let i = 0; i < half; i++) inv[i]! /= s.factor;
  if (s.type === 'llama3') {
    const lowWavelen = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
    const highWavelen = s.originalMaxPositionEmbeddings / s.highFreqFactor;
    for (let i = 0; i < half; i++) {
      const wavelen = (2 * Math.PI) / inv[i]!;
      if (wavelen > lowWavelen) inv[i] = inv[i]! / s.factor;
      else if (wavelen >= highWavelen) {
        const smooth = (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
        inv[i] = (1 - smooth) * (inv[i]! / s.factor) + smooth * inv[i]!;
      }
    }
  }
  return inv;
}

/** cos/sin tables, (maxPositions, rotaryDim / 2), computed once per engine. */
export function ropeTables(c: ModelConfig, maxPositions: number): { cos: Float32Array; sin: Float32Array } {
  const inv = ropeInverseFrequencies(c);
  const half = inv.length;
  const cos = new Float32Array(maxPositions * half);
  const sin = new Float32Array(maxPositions * half);
  for (let p = 0; p < maxPositions; p++) {
    for (let i = 0; i < half; i++) {
      const f = Math.fround(p * Math.fround(inv[i]!));
      cos[p * half + i] = Math.cos(f);
      sin[p * half + i] = Math.sin(f);
    }
  }
  return { cos, sin };
}

/**
 * In-place rotation of `heads` heads in each of T rows of x (row stride `stride`, heads start at
 * `offset`), row t at position pos0 + t. Pairs (i, i + rotaryDim/2), as transformers' rotate_half:
 *   x * cos + rotate_half(x) * sin
 */
export function applyRope(
  x: Float32Array, T: number, stride: number, offset: number, heads: number, headDim: number,
  rotaryDim: number, pos0: number, cos: Float32Array, sin: Float32Array,
): void {
  const half = rotaryDim / 2;
  for (let t = 0; t < T; t++) {
    const tab = (pos0 + t) * half;
    for (let h = 0; h < heads; h++) {
      const b = t * stride + offset + h * headDim;
      for (let i = 0; i < half; i++) {
        const c = cos[tab + i]!, s = sin[tab + i]!;
        const a = x[b + i]!, d = x[b + i + half]!;
        x[b + i] = a * c - d * s;
        x[b + i + half] = d * c + a * s;
      }
    }
  }
}

/**
 * Causal grouped-query attention for T new queries at positions pos0..pos0+T-1 against the cache
 * (which already holds their keys and values). Query head h reads KV head h / (numHeads / numKvHeads).
 * With a sliding window W, position p sees keys p-W+1..p.
 *   softmax(q k^T / sqrt(headDim) + mask) v
 * q: rows of `qStride` with heads at offset 0; kCache, vCache: (maxPositions, kvDim); out: (T, qDim).
 */
export function attention(
  q: Float32Array, qStride: number, T: number, pos0: number,
  kCache: Float32Array, vCache: Float32Array, c: ModelConfig, out: Float32Array, scores: Float32Array,
): void {
  const hd = c.headDim;
  const kvDim = c.numKvHeads * hd;
  const group = c.numHeads / c.numKvHeads;
  const scale = 1 / Math.sqrt(hd);
  for (let t = 0; t < T; t++) {
    const p = pos0 + t;
    const first = c.slidingWindow ? Math.max(0, p - c.slidingWindow + 1) : 0;
    for (let h = 0; h < c.numHeads; h++) {
      const qo = t * qStride + h * hd;
      const kvo = Math.floor(h / group) * hd;
      let max = -Infinity;
      for (let j = first; j <= p; j++) {
        const ko = j * kvDim + kvo;
        let s = 0;
        for (let i = 0; i < hd; i++) s += q[qo + i]! * kCache[ko + i]!;
        s *= scale;
        scores[j] = s;
        if (s > max) max = s;
      }
      let sum = 0;
      for (let j = first; j <= p; j++) {
        const e = Math.exp(scores[j]! - max);
        scores[j] = e;
        sum += e;
      }
      const oo = t * c.numHeads * hd + h * hd;
      out.fill(0, oo, oo + hd);
      for (let j = first; j <= p; j++) {
        const wgt = scores[j]! / sum;
        const vo = j * kvDim + kvo;
        for (let i = 0; i < hd; i++) out[oo + i] += wgt * vCache[vo + i]!;
      }
    }
  }
}

/** silu(gate) * up, per row; gateUp rows hold [gate (ffn) | up (ffn)]; out: (T, ffn). */
export function swiglu(gateUp: Float32Array, T: number, ffn: number, out: Float32Array): void {
  for (let t = 0; t < T; t++) {
    const g = t * 2 * ffn;
    for (let i = 0; i < ffn; i++) {
      const x = gateUp[g + i]!;
      out[t * ffn + i] = (x / (1 + Math.exp(-x))) * gateUp[g + ffn + i]!;
    }
  }
}

/** x += y over n elements. */
export function addInPlace(x: Float32Array, y: Float32Array, n: number): void {
  for (let i = 0; i < n; i++) x[i] += y[i]!;
}
