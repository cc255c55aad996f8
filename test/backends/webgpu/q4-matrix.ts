/** Test matrices in q4 with groups of 64 (the prefill products' tests). */
import { f16ToF32, f32ToF16 } from '../../../src/format/dtype.js';
import { rng } from '../../helpers.js';

/** A random q4 g64 matrix: words, packed (scale, min) and its f64 values. */
export function q4Matrix(rows: number, cols: number, seed: number) {
  const r = rng(seed), groups = cols / 64, wordsPerRow = cols / 8;
  const words = new Uint32Array(rows * wordsPerRow).map(() => Math.floor(r() * 4294967296));
  const sm = new Uint32Array(rows * groups), scale = new Float64Array(rows * groups), min = new Float64Array(rows * groups);
  for (let i = 0; i < rows * groups; i++) {
    const s = f32ToF16((r() + 0.1) * 0.05), m = f32ToF16(-(r() * 0.4));
    sm[i] = (s | (m << 16)) >>> 0;
    scale[i] = f16ToF32(s);
    min[i] = f16ToF32(m);
  }
  const nibble = (row: number, c: number) => (words[row * wordsPerRow + (c >> 3)]! >>> (4 * (c & 7))) & 15;
  return { words, sm, scale, min, nibble, groups, wordsPerRow };
}
