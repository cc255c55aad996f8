/**
 * Pruning: which weights of a [rows, cols] matrix to zero. Scores are |W| (magnitude) or, for Wanda,
 * |W[r, c]| * ||X[:, c]||, the norm of input channel c's activations over the calibration tokens.
 * Weights are compared within each output row, as Wanda does.
 */

/** Score of every weight: |W|, times the input channel's activation norm when given (Wanda). */
export function pruningScores(w: Float32Array, rows: number, cols: number, channelNorms: Float32Array | null): Float32Array {
  const s = new Float32Array(w.length);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const i = r * cols + c;
      s[i] = Math.abs(w[i]!) * (channelNorms ? channelNorms[c]! : 1);
    }
  }
  return s;
}

/** Zeroes the round(sparsity * cols) lowest-scored weights of each row; returns a new matrix. */
export function pruneUnstructured(w: Float32Array, scores: Float32Array, rows: number, cols: number, sparsity: number): Float32Array {
  const out = Float32Array.from(w);
  const drop = Math.round(sparsity * cols);
  if (drop === 0) return out;
  for (let r = 0; r < rows; r++) {
    const row = scores.subarray(r * cols, (r + 1) * cols);
    const threshold = Float32Array.from(row).sort()[drop - 1]!;
    // everything below the threshold goes, then weights equal to it until `drop` are gone
    let dropped = 0;
    for (let c = 0; c < cols; c++) {
      if (row[c]! < threshold) {
        out[r * cols + c] = 0;
        dropped++;
      }
    }
    for (let c = 0; c < cols && dropped < drop; c++) {
      if (row[c] === threshold) {
        out[r * cols + c] = 0;
        dropped++;
      }
    }
  }
  return out;
}

/** Keeps the n highest-scored weights of every aligned block of m columns; returns a new matrix. */
export function pruneNM(w: Float32Array, scores: Float32Array, rows: number, cols: number, n: number, m: number): Float32Array {
  const out = Float32Array.from(w);
  const order = new Array<number>(m);
  for (let r = 0; r < rows; r++) {
    for (let b = 0; b < cols; b += m) {
      const len = Math.min(m, cols - b);
      for (let k = 0; k < len; k++) order[k] = r * cols + b + k;
      const block = order.slice(0, len).sort((i, j) => scores[j]! - scores[i]! || i - j);
      for (const i of block.slice(n)) out[i] = 0;
    }
  }
  return out;
}
