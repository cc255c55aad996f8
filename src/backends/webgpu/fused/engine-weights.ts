/**
 * The engine's weights (what its forward pass reads) over the buffers the fused decoder already holds,
 * so that a model with the fused path on is on the GPU once. The layouts coincide row for row:
 *   q4       Q, SM              = the engine's qweight, scale_min (also for 4-bit bitmaps the fused
 *                                  path expanded to q4: the engine reads them as q4 with group = tile)
 *   q8       Q, SCALE           = qweight (rows re-strided to whole units of 16 bytes), scales
 *   bitmap4  MASK, OFFS, VALS, SC = mask, offsets, values, scales
 *   dense    W                  = uploadDense's layout in one segment, when the dtype is the engine's
 * Parts the fused path joins by rows (q, k, v; gate, up) become one engine matrix over all their rows,
 * which writes the same outputs as the parts side by side. An encoded embedding (which the fused path
 * decodes to a dense table) is looked up in that table, unless it is tied to lm_head. Every other
 * matrix (nm, csr and 8-bit bitmap, which the fused path decodes to f32) is uploaded again in the
 * engine's own encoding, as is every 16-bit dense matrix under `forceF32`. A layout change in
 * fused/weights.ts must be matched here (generate.test.ts and engine.test.ts compare the forward pass
 * over these buffers with the CPU).
 */
import { BitmapTensor } from '../../../format/upg/encodings/bitmap.js';
import { Q4Tensor } from '../../../format/upg/encodings/q4.js';
import { Q8Tensor } from '../../../format/upg/encodings/q8.js';
import { DenseTensor, type WeightTensor } from '../../../model/tensor.js';
import type { ModelWeights } from '../../../model/weights.js';
import type { Gpu } from '../device.js';
import { denseDtypeOf, memoizedUpload, type GpuEncodedMatrix, type GpuLayerWeights, type GpuMatrix, type GpuModelWeights, type UploadOptions } from '../weights.js';
import { matrixBuffers, type FusedMatrix, type FusedModelWeights } from './weights.js';

/** The engine's view of a fused matrix whose parts it can read as they are; null where it cannot. */
export function sharedMatrix(parts: WeightTensor[], m: FusedMatrix, options: UploadOptions = {}): GpuMatrix | null {
  const { rows, cols } = m;
  // split across bindings: dense row blocks become the engine's segments, encoded ones its row blocks
  if (m.rowBlocks) {
    if (parts.every((p) => p instanceof DenseTensor && denseDtypeOf(p, options) === m.encoding)) return denseView(m);
    const blocks = m.rowBlocks.map((b) => ({ rowStart: b.rowStart, matrix: sharedMatrix(parts, b.matrix, options) }));
    return encodedBlocks(m, blocks);
  }
  const b = m.buffers;
  const first = parts[0]!;
  // the shapes checked too, so that a layout change in fused/weights.ts falls back to uploading
  if (m.encoding === 'q4' && parts.every((p) => p instanceof Q4Tensor) && first instanceof Q4Tensor && b.Q && b.SM && m.units * 4 === first.wordsPerRow && m.group === first.group) {
    const shape = { encoding: 'q4', rows, cols, group: first.group, groups: first.groups, wordsPerRow: first.wordsPerRow } as const;
    return { encoding: 'q4', rows, cols, shape, buffers: [b.Q, b.SM], bytes: m.bytes };
  }
  if (m.encoding === 'q4' && parts.every((p) => p instanceof BitmapTensor && p.bits === 4 && p.tile === m.group) && b.Q && b.SM && m.units * 32 === (first as BitmapTensor).tiles * m.group) {
    const shape = { encoding: 'q4', rows, cols, group: m.group, groups: m.units * 32 / m.group, wordsPerRow: m.units * 4 } as const;
    return { encoding: 'q4', rows, cols, shape, buffers: [b.Q, b.SM], bytes: m.bytes };
  }
  if (m.encoding === 'q8' && parts.every((p) => p instanceof Q8Tensor) && b.Q && b.SCALE) {
    // rows padded to whole units of 16 bytes: the engine's kernel reads words up to the padded length
    const shape = { encoding: 'q8', rows, cols, wordsPerRow: m.units * 4 } as const;
    return { encoding: 'q8', rows, cols, shape, buffers: [b.Q, b.SCALE], bytes: m.bytes };
  }
  if (m.encoding === 'bitmap4' && parts.every((p) => p instanceof BitmapTensor && p.bits === 4) && first instanceof BitmapTensor && b.MASK && b.OFFS && b.VALS && b.SC && m.units === first.tiles && m.group === first.tile) {
    const shape = { encoding: 'bitmap', rows, cols, tile: first.tile, bits: 4, tiles: first.tiles, maskWordsPerRow: first.maskWordsPerRow } as const;
    return { encoding: 'bitmap', rows, cols, shape, buffers: [b.MASK, b.OFFS, b.VALS, b.SC], bytes: m.bytes };
  }
  if (parts.every((p) => p instanceof DenseTensor && denseDtypeOf(p, options) === m.encoding)) return denseView(m);
  return null;
}

/** An encoded matrix over row blocks the engine can each read (null where one cannot). */
function encodedBlocks(m: FusedMatrix, blocks: { rowStart: number; matrix: GpuMatrix | null }[]): GpuMatrix | null {
  const encoded: { rowStart: number; matrix: GpuEncodedMatrix }[] = [];
  for (const b of blocks) {
    if (b.matrix === null || b.matrix.encoding === 'dense' || b.matrix.encoding !== blocks[0]!.matrix?.encoding) return null;
    encoded.push({ rowStart: b.rowStart, matrix: b.matrix });
  }
  const first = encoded[0]?.matrix;
  if (!first) return null;
  return { encoding: first.encoding, rows: m.rows, cols: m.cols, shape: { ...first.shape, rows: m.rows }, buffers: [], bytes: m.bytes, rowBlocks: encoded };
}

/** A dense fused matrix as the engine's dense matrix (one segment), whatever the checkpoint stored. */
function denseView(m: FusedMatrix): GpuMatrix | null {
  const dtype = m.encoding;
  if (dtype !== 'f32' && dtype !== 'bf16' && dtype !== 'f16') return null;
  const blocks = m.rowBlocks ?? [{ rowStart: 0, matrix: m }];
  if (blocks.some((b) => !b.matrix.buffers.W)) return null;
  const segments = blocks.map((b) => ({ buffer: b.matrix.buffers.W!, rowStart: b.rowStart, rows: b.matrix.rows }));
  return { encoding: 'dense', dtype, rows: m.rows, cols: m.cols, rowChunks: m.units, segments, bytes: m.bytes };
}

/** Uploads a matrix the engine cannot share with the fused path, in its own encoding (memoizedUpload). */
export type OwnUpload = (t: WeightTensor, label: string) => GpuMatrix;

/** The engine's view of one fused matrix: one shared matrix over all the parts, or each part uploaded. */
export function matricesOver(parts: WeightTensor[], m: FusedMatrix, label: string, own: OwnUpload, options: UploadOptions): GpuMatrix[] {
  const view = sharedMatrix(parts, m, options);
  return view ? [view] : parts.map((t, i) => own(t, parts.length > 1 ? `${label}.${i}` : label));
}

/**
 * The engine's embedding: an encoded embedding is looked up in the fused path's decoded table (one
 * row a token, so the wider dtype costs nothing), unless lm_head is the same matrix (`tied`) and
 * would be read whole.
 */
export function engineEmbeddingOverFused(embed: WeightTensor, tied: boolean, fusedEmbed: FusedMatrix, own: OwnUpload, options: UploadOptions = {}): GpuMatrix {
  return sharedMatrix([embed], fusedEmbed, options) ?? (tied ? null : denseView(fusedEmbed)) ?? own(embed, 'embed');
}

export function engineLmHeadOverFused(lmHead: WeightTensor, fusedLmHead: FusedMatrix, own: OwnUpload, options: UploadOptions = {}): GpuMatrix {
  return matricesOver([lmHead], fusedLmHead, 'lm_head', own, options)[0]!;
}

/** The engine's weights, sharing the fused buffers wherever sharedMatrix can; the rest uploaded. */
export function engineWeightsOverFused(gpu: Gpu, w: ModelWeights, fused: FusedModelWeights, options: UploadOptions = {}, onTensor?: (name: string) => void): GpuModelWeights {
  const own = memoizedUpload(gpu, options, onTensor);
  const layers = w.layers.map((L, l): GpuLayerWeights => {
    const F = fused.layers[l]!;
    return {
      attnNorm: F.attnNorm,
      qkv: matricesOver(L.qkv, F.qkv, `layers.${l}.qkv`, own, options),
      qkvBias: F.qkvBias,
      o: matricesOver([L.o], F.o, `layers.${l}.o`, own, options)[0]!,
      mlpNorm: F.mlpNorm,
      gateUp: matricesOver(L.gateUp, F.gateUp, `layers.${l}.gate_up`, own, options),
      down: matricesOver([L.down], F.down, `layers.${l}.down`, own, options)[0]!,
    };
  });
  const tied = w.lmHead === w.embed;
  const embed = engineEmbeddingOverFused(w.embed, tied, fused.embed, own, options);
  const lmHead = tied ? embed : engineLmHeadOverFused(w.lmHead, fused.lmHead, own, options);
  const weights = { embed, layers, finalNorm: fused.finalNorm, lmHead, bytes: 0 };
  return { ...weights, bytes: gpuBuffersOf(weights).reduce((a, b) => a + b.size, 0) };
}

/** Every distinct buffer of the engine's weights. */
export function gpuBuffersOf(w: Omit<GpuModelWeights, 'bytes'>): GPUBuffer[] {
  const all = new Set<GPUBuffer>([w.finalNorm]);
  const matrix = (m: GpuMatrix) => (m.encoding === 'dense' ? m.segments.map((s) => s.buffer) : m.rowBlocks ? m.rowBlocks.flatMap((b) => b.matrix.buffers) : m.buffers).forEach((b) => all.add(b));
  matrix(w.embed);
  matrix(w.lmHead);
  for (const L of w.layers) {
    [L.attnNorm, L.mlpNorm, ...(L.qkvBias ? [L.qkvBias] : [])].forEach((b) => all.add(b));
    [...L.qkv, L.o, ...L.gateUp, L.down].forEach(matrix);
  }
  return [...all];
}

/** Every distinct buffer of the fused weights. */
export function fusedBuffersOf(w: FusedModelWeights): GPUBuffer[] {
  const all = new Set<GPUBuffer>([w.finalNorm, ...matrixBuffers(w.embed), ...matrixBuffers(w.lmHead)]);
  for (const L of w.layers) {
    [L.attnNorm, L.mlpNorm, ...(L.qkvBias ? [L.qkvBias] : [])].forEach((b) => all.add(b));
    for (const m of [L.qkv, L.o, L.gateUp, L.down]) matrixBuffers(m).forEach((b) => all.add(b));
  }
  return [...all];
}

/**
 * The engine's weights over fused weights made on the GPU without a checkpoint (`pdvm bench`'s
 * synthetic models): every matrix read in place by the layouts above (q4, q8, bitmap4, dense); the
 * embedding from the fused path's dense table. Throws for a matrix the forward pass cannot read.
 */
export function engineWeightsOfFused(fused: FusedModelWeights): GpuModelWeights {
  const view = (m: FusedMatrix): GpuMatrix => {
    if (m.rowBlocks && m.encoding !== 'f32' && m.encoding !== 'bf16' && m.encoding !== 'f16') {
      const blocked = encodedBlocks(m, m.rowBlocks.map((b) => ({ rowStart: b.rowStart, matrix: view(b.matrix) })));
      if (blocked) return blocked;
    }
    const { rows, cols } = m, b = m.buffers;
    if (m.encoding === 'q4' && b.Q && b.SM) {
      return { encoding: 'q4', rows, cols, shape: { encoding: 'q4', rows, cols, group: m.group, groups: (m.units * 32) / m.group, wordsPerRow: m.units * 4 }, buffers: [b.Q, b.SM], bytes: m.bytes };
    }
    if (m.encoding === 'q8' && b.Q && b.SCALE) return { encoding: 'q8', rows, cols, shape: { encoding: 'q8', rows, cols, wordsPerRow: m.units * 4 }, buffers: [b.Q, b.SCALE], bytes: m.bytes };
    if (m.encoding === 'bitmap4' && b.MASK && b.OFFS && b.VALS && b.SC) {
      const shape = { encoding: 'bitmap', rows, cols, tile: m.group, bits: 4, tiles: m.units, maskWordsPerRow: (m.units * m.group) / 32 } as const;
      return { encoding: 'bitmap', rows, cols, shape, buffers: [b.MASK, b.OFFS, b.VALS, b.SC], bytes: m.bytes };
    }
    const dense = denseView(m);
    if (!dense) throw new Error(`the forward pass cannot read a fused ${m.encoding} matrix [${rows}x${cols}]`);
    return dense;
  };
  const layers = fused.layers.map((F): GpuLayerWeights => ({
    attnNorm: F.attnNorm, qkv: [view(F.qkv)], qkvBias: F.qkvBias, o: view(F.o), mlpNorm: F.mlpNorm, gateUp: [view(F.gateUp)], down: view(F.down),
  }));
  const weights = { embed: view(fused.embed), layers, finalNorm: fused.finalNorm, lmHead: view(fused.lmHead), bytes: 0 };
  return { ...weights, bytes: gpuBuffersOf(weights).reduce((a, b) => a + b.size, 0) };
}
