/**
 * Weights for the fused decode path: each matrix as the buffers its fused kernel reads, with the
 * checkpoint's parts (q, k, v; gate, up) joined by rows at load so that one dispatch covers them.
 *   f32/bf16/f16  W: (rows, units) vec4<u32> chunks (uploadDense's layout)
 *   q4            Q: (rows, groups * group / 8) u32 nibble words;  SM: (rows, groups) f16 (scale, min)
 *   q8            Q: (rows, units * 16) int8, each row zero-padded to whole units of 16;  SCALE: (rows) f32
 *   bitmap4       MASK: (rows, tiles * tile / 32);  OFFS: (rows * tiles + 1);  VALS: nibble words;
 *                 SC: (rows, tiles) f16 scales, two per u32
 * Encodings without a fused kernel (nm, csr, bitmap with 8-bit values) are decoded to f32 rows.
 *
 * A 4-bit bitmap whose tile is a multiple of 32 columns is rewritten on the GPU as q4 with the tile as
 * the group (exactly: kernels/bitmap-expand.ts) unless `bitmap: 'walk'`: at 50% density the q4 kernel
 * reads 19% more bytes but decodes several times faster than walking the mask bits (docs/PERFORMANCE.md).
 */
import { BitmapTensor } from '../../../format/upg/encodings/bitmap.js';
import { Q4Tensor } from '../../../format/upg/encodings/q4.js';
import { Q8Tensor } from '../../../format/upg/encodings/q8.js';
import { DenseTensor, type WeightTensor } from '../../../model/tensor.js';
import type { ModelWeights } from '../../../model/weights.js';
import type { Gpu } from '../device.js';
import { columnsPerUnit, type FusedEncoding } from '../kernels/fused-matvec.js';
import { uploadDense } from '../weights.js';
import { bitmapToQ4Wgsl } from '../kernels/bitmap-expand.js';

export interface FusedMatrix {
  encoding: FusedEncoding;
  rows: number;
  cols: number;
  /** Units per row (vec4<u32> chunks, or tiles for bitmap4). */
  units: number;
  /** q4 group or bitmap4 tile; 0 for dense and q8. */
  group: number;
  /** Buffers by binding name (W; Q, SM; Q, SCALE; MASK, OFFS, VALS, SC). */
  buffers: Record<string, GPUBuffer>;
  /** Bytes a full product reads (every buffer once). */
  bytes: number;
  /**
   * Where one storage binding cannot hold the matrix (maxStorageBufferBindingSize: 128 MiB by default
   * in browsers and on lavapipe, 2 GiB on an H200): its rows split into blocks, each a matrix of its
   * own over rows rowStart.. (dispatched one after another); `buffers` is then empty.
   */
  rowBlocks?: { rowStart: number; matrix: FusedMatrix }[];
}

/** Every buffer of a matrix (its row blocks' when split). */
export function matrixBuffers(m: FusedMatrix): GPUBuffer[] {
  return m.rowBlocks ? m.rowBlocks.flatMap((b) => Object.values(b.matrix.buffers)) : Object.values(m.buffers);
}

/** A matrix over row blocks (each a whole matrix of `rows` rows of the same encoding and columns). */
export function rowBlocked(blocks: FusedMatrix[]): FusedMatrix {
  if (blocks.length === 1) return blocks[0]!;
  const first = blocks[0]!;
  let r0 = 0;
  const rowBlocks = blocks.map((matrix) => ((r0 += matrix.rows), { rowStart: r0 - matrix.rows, matrix }));
  return { encoding: first.encoding, rows: r0, cols: first.cols, units: first.units, group: first.group, buffers: {}, bytes: blocks.reduce((a, b) => a + b.bytes, 0), rowBlocks };
}

/** Rows a block may hold so that none of its buffers (rowBytes each a row) exceeds one binding. */
export function rowsPerBinding(gpu: Gpu, label: string, rowBytes: number[]): number {
  const n = Math.floor(gpu.maxBindingBytes / Math.max(...rowBytes));
  if (n < 1) throw new Error(`${label}: one row (${Math.max(...rowBytes)} bytes) exceeds this device's storage binding limit of ${gpu.maxBindingBytes} bytes`);
  return n;
}

export interface FusedLayerWeights {
  attnNorm: GPUBuffer;
  qkv: FusedMatrix;
  qkvBias: GPUBuffer | null;
  o: FusedMatrix;
  mlpNorm: GPUBuffer;
  gateUp: FusedMatrix;
  down: FusedMatrix;
}

export interface FusedModelWeights {
  /** Dense embedding table (the kernel reads one row a token). */
  embed: FusedMatrix;
  layers: FusedLayerWeights[];
  finalNorm: GPUBuffer;
  lmHead: FusedMatrix;
  /** Bytes of every weight buffer. */
  bytes: number;
}

/** A storage buffer holding `data`, created mapped (no staging copy beyond the mapping). */
export function uploadWords(gpu: Gpu, label: string, data: ArrayBufferView): GPUBuffer {
  const buffer = gpu.createBuffer(label, data.byteLength, GPUBufferUsage.STORAGE, true);
  new Uint8Array(buffer.getMappedRange()).set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  buffer.unmap();
  return buffer;
}

export function uploadFloats(gpu: Gpu, label: string, v: Float32Array): GPUBuffer {
  return uploadWords(gpu, label, v);
}

function bytesOf(buffers: Record<string, GPUBuffer>): number {
  return Object.values(buffers).reduce((a, b) => a + b.size, 0);
}

function denseRows(parts: WeightTensor[]): DenseTensor {
  // one dense part is already its own rows: no copy (an embedding or lm_head is the largest tensor)
  if (parts.length === 1 && parts[0] instanceof DenseTensor) return parts[0];
  const rows = parts.reduce((a, p) => a + p.rows, 0), cols = parts[0]!.cols;
  const dense = parts.every((p) => p instanceof DenseTensor) ? (parts as DenseTensor[]) : null;
  const data = new Float32Array(rows * cols);
  let r0 = 0;
  for (const p of parts) {
    if (p instanceof DenseTensor) data.set(p.data, r0 * cols);
    else for (let r = 0; r < p.rows; r++) p.readRow(r, data.subarray((r0 + r) * cols, (r0 + r + 1) * cols));
    r0 += p.rows;
  }
  const dtype = dense && dense.every((p) => p.storedDtype === dense[0]!.storedDtype) ? dense[0]!.storedDtype : 'F32';
  return new DenseTensor(rows, cols, data, dtype);
}

function joinQ4(parts: Q4Tensor[]): { qweight: Uint32Array; scaleMin: Uint16Array } {
  const qweight = new Uint32Array(parts.reduce((a, p) => a + p.qweight.length, 0));
  const scaleMin = new Uint16Array(parts.reduce((a, p) => a + p.scaleMin.length, 0));
  let q = 0, s = 0;
  for (const p of parts) {
    qweight.set(p.qweight, q);
    scaleMin.set(p.scaleMin, s);
    q += p.qweight.length;
    s += p.scaleMin.length;
  }
  return { qweight, scaleMin };
}

/** q8 parts stacked by rows, each row's int8 re-strided from `stride` (a multiple of 4) to `units` * 16 with zeros. */
function joinQ8(parts: Q8Tensor[], units: number): { qweight: Uint32Array; scales: Float32Array } {
  const rows = parts.reduce((a, p) => a + p.rows, 0);
  const qweight = new Uint32Array(rows * units * 4);
  const bytes = new Int8Array(qweight.buffer); // (rows, units * 16), little-endian: byte i of a word is column 4w + i
  const scales = new Float32Array(rows);
  let r0 = 0;
  for (const p of parts) {
    for (let r = 0; r < p.rows; r++) bytes.set(p.qweight.subarray(r * p.stride, r * p.stride + p.cols), (r0 + r) * units * 16);
    scales.set(p.scales, r0);
    r0 += p.rows;
  }
  return { qweight, scales };
}

function joinBitmap(parts: BitmapTensor[]): { mask: Uint32Array; offsets: Uint32Array; values: Uint32Array; scales: Uint16Array } {
  const sum = (f: (p: BitmapTensor) => number) => parts.reduce((a, p) => a + f(p), 0);
  const mask = new Uint32Array(sum((p) => p.mask.length));
  const offsets = new Uint32Array(sum((p) => p.offsets.length - 1) + 1);
  const nnz = sum((p) => p.nnz);
  const values = new Uint32Array(Math.max(1, Math.ceil(nnz / 8)));
  const scales = new Uint16Array(sum((p) => p.scales.length));
  let m = 0, o = 0, v = 0, s = 0;
  for (const p of parts) {
    mask.set(p.mask, m);
    for (let i = 0; i < p.offsets.length - 1; i++) offsets[o + i] = p.offsets[i]! + v;
    const src = p.values as Uint32Array;
    for (let i = 0; i < p.nnz; i++) {
      const nib = (src[i >>> 3]! >>> ((i & 7) * 4)) & 15, j = v + i;
      values[j >>> 3] = values[j >>> 3]! | (nib << ((j & 7) * 4));
    }
    scales.set(p.scales as Uint16Array, s);
    m += p.mask.length;
    o += p.offsets.length - 1;
    v += p.nnz;
    s += p.scales.length;
  }
  offsets[o] = v;
  return { mask, offsets, values, scales };
}

export interface FusedUploadOptions {
  /** 4-bit bitmap matrices: 'expand' (default) rewrites them as q4 on the GPU, 'walk' keeps the bitmap kernel. */
  bitmap?: 'expand' | 'walk';
}

/**
 * A bitmap4 matrix as q4 (group = tile), by a kernel on the GPU; the bitmap's buffers are destroyed
 * (after the submitted kernel has read them). Matrices whose tile is not a multiple of 32 are returned as they are.
 */
export function expandBitmap4(gpu: Gpu, m: FusedMatrix, label: string): FusedMatrix {
  if (m.encoding !== 'bitmap4' || m.group % 32 !== 0) return m;
  const { rows, units: tiles, group: tile } = m;
  const units = (tiles * tile) / 32;
  if (rows * units * 16 > gpu.maxBindingBytes) throw new Error(`${label}: expanded to q4 it needs ${rows * units * 16} bytes, over this device's storage binding limit of ${gpu.maxBindingBytes} bytes; use --bitmap walk or a device with a larger limit`);
  // COPY_SRC: tests read the expansion back
  const Q = gpu.createBuffer(`${label}.q`, rows * units * 16, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC);
  const SM = gpu.createBuffer(`${label}.sm`, rows * tiles * 4, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC);
  const pipeline = gpu.pipeline('bitmap_to_q4', { rows, tiles, tile }, () => bitmapToQ4Wgsl(rows, tiles, tile));
  const b = m.buffers;
  const encoder = gpu.device.createCommandEncoder();
  const pass = encoder.beginComputePass();
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, gpu.bindGroup('bitmap_to_q4', pipeline, [b.MASK!, b.OFFS!, b.VALS!, b.SC!, Q, SM]));
  pass.dispatchWorkgroups(Math.min(4096, Math.ceil((rows * units) / 256)));
  pass.end();
  gpu.device.queue.submit([encoder.finish()]);
  for (const buffer of Object.values(b)) buffer.destroy();
  const buffers = { Q, SM };
  return { encoding: 'q4', rows, cols: m.cols, units, group: tile, buffers, bytes: bytesOf(buffers) };
}

/** Uploads parts stacked by rows as one matrix the fused kernels can read. */
export function uploadFusedMatrix(gpu: Gpu, parts: WeightTensor[], label: string, options: FusedUploadOptions = {}): FusedMatrix {
  const rows = parts.reduce((a, p) => a + p.rows, 0), cols = parts[0]!.cols;
  if (parts.some((p) => p.cols !== cols)) throw new Error(`${label}: parts have different column counts`);
  if (cols % 4 !== 0) throw new Error(`${label}: the fused path needs a column count divisible by 4, got ${cols}`);
  const first = parts[0]!;
  if (first instanceof Q4Tensor && parts.every((p) => p instanceof Q4Tensor && p.group === first.group)) {
    const { qweight, scaleMin } = joinQ4(parts as Q4Tensor[]);
    const words = first.wordsPerRow, halves = first.groups * 2;
    const per = rowsPerBinding(gpu, label, [words * 4, halves * 2]);
    const blocks: FusedMatrix[] = [];
    for (let r0 = 0; r0 < rows; r0 += per) {
      const n = Math.min(per, rows - r0), l = rows > per ? `${label}.rows${r0}` : label;
      const buffers = { Q: uploadWords(gpu, `${l}.q`, qweight.subarray(r0 * words, (r0 + n) * words)), SM: uploadWords(gpu, `${l}.sm`, scaleMin.subarray(r0 * halves, (r0 + n) * halves)) };
      blocks.push({ encoding: 'q4', rows: n, cols, units: words / 4, group: first.group, buffers, bytes: bytesOf(buffers) });
    }
    return rowBlocked(blocks);
  }
  if (parts.every((p) => p instanceof Q8Tensor)) {
    const units = Math.ceil(cols / 16);
    const { qweight, scales } = joinQ8(parts as Q8Tensor[], units);
    const per = rowsPerBinding(gpu, label, [units * 16, 4]);
    const blocks: FusedMatrix[] = [];
    for (let r0 = 0; r0 < rows; r0 += per) {
      const n = Math.min(per, rows - r0), l = rows > per ? `${label}.rows${r0}` : label;
      const buffers = { Q: uploadWords(gpu, `${l}.q`, qweight.subarray(r0 * units * 4, (r0 + n) * units * 4)), SCALE: uploadWords(gpu, `${l}.scale`, scales.subarray(r0, r0 + n)) };
      blocks.push({ encoding: 'q8', rows: n, cols, units, group: 0, buffers, bytes: bytesOf(buffers) });
    }
    return rowBlocked(blocks);
  }
  if (first instanceof BitmapTensor && parts.every((p) => p instanceof BitmapTensor && p.bits === 4 && p.tile === first.tile)) {
    const j = joinBitmap(parts as BitmapTensor[]);
    const largest = Math.max(j.mask.byteLength, j.offsets.byteLength, j.values.byteLength, j.scales.byteLength);
    if (largest > gpu.maxBindingBytes) throw new Error(`${label}: a 4-bit bitmap buffer of ${largest} bytes exceeds this device's storage binding limit of ${gpu.maxBindingBytes} bytes; bitmaps are not split across bindings (store this tensor as q4)`);
    const scales = new Uint16Array(Math.ceil(j.scales.length / 2) * 2);
    scales.set(j.scales);
    const buffers = {
      MASK: uploadWords(gpu, `${label}.mask`, j.mask),
      OFFS: uploadWords(gpu, `${label}.offsets`, j.offsets),
      VALS: uploadWords(gpu, `${label}.values`, j.values),
      SC: uploadWords(gpu, `${label}.scales`, scales),
    };
    const m: FusedMatrix = { encoding: 'bitmap4', rows, cols, units: first.tiles, group: first.tile, buffers, bytes: bytesOf(buffers) };
    return (options.bitmap ?? 'expand') === 'expand' ? expandBitmap4(gpu, m, label) : m;
  }
  const dense = denseRows(parts);
  // uploadDense splits the rows into segments of at most one binding each
  const g = uploadDense(gpu, dense, label);
  return rowBlocked(g.segments.map((seg) => ({ encoding: g.dtype, rows: seg.rows, cols, units: g.rowChunks, group: 0, buffers: { W: seg.buffer }, bytes: seg.buffer.size })));
}

/** The embedding for the fused path: read a row a token, so kept dense (decoded once when stored in another encoding). */
export function uploadFusedEmbedding(gpu: Gpu, embed: WeightTensor): FusedMatrix {
  return uploadFusedMatrix(gpu, [embed instanceof DenseTensor ? embed : denseRows([embed])], 'embed');
}

/** Uploads a model's weights for the fused path (parts joined, tensor by tensor). */
export function uploadFusedWeights(gpu: Gpu, w: ModelWeights, options: FusedUploadOptions = {}): FusedModelWeights {
  const layers = w.layers.map((L, l): FusedLayerWeights => ({
    attnNorm: uploadFloats(gpu, `layers.${l}.attn_norm`, L.attnNorm),
    qkv: uploadFusedMatrix(gpu, L.qkv, `layers.${l}.qkv`, options),
    qkvBias: L.qkvBias ? uploadFloats(gpu, `layers.${l}.qkv_bias`, L.qkvBias) : null,
    o: uploadFusedMatrix(gpu, [L.o], `layers.${l}.o`, options),
    mlpNorm: uploadFloats(gpu, `layers.${l}.mlp_norm`, L.mlpNorm),
    gateUp: uploadFusedMatrix(gpu, L.gateUp, `layers.${l}.gate_up`, options),
    down: uploadFusedMatrix(gpu, [L.down], `layers.${l}.down`, options),
  }));
  const embed = uploadFusedEmbedding(gpu, w.embed);
  const lmHead = w.lmHead === w.embed ? embed : uploadFusedMatrix(gpu, [w.lmHead], 'lm_head', options);
  const finalNorm = uploadFloats(gpu, 'final_norm', w.finalNorm);
  return { embed, layers, finalNorm, lmHead, bytes: fusedWeightBytes({ embed, layers, finalNorm, lmHead }) };
}

export function fusedWeightBytes(w: Omit<FusedModelWeights, 'bytes'>): number {
  let bytes = w.embed.bytes + (w.lmHead === w.embed ? 0 : w.lmHead.bytes) + w.finalNorm.size;
  for (const L of w.layers) bytes += L.qkv.bytes + L.o.bytes + L.gateUp.bytes + L.down.bytes + L.attnNorm.size + L.mlpNorm.size + (L.qkvBias?.size ?? 0);
  return bytes;
}

/** Weight bytes one decode step reads: every layer matrix, norms, lm_head and one embedding row. */
export function weightBytesPerToken(w: FusedModelWeights): number {
  let bytes = w.lmHead.bytes + w.finalNorm.size + (w.embed.units * 16);
  for (const L of w.layers) bytes += L.qkv.bytes + L.o.bytes + L.gateUp.bytes + L.down.bytes + L.attnNorm.size + L.mlpNorm.size + (L.qkvBias?.size ?? 0);
  return bytes;
}

export function destroyFusedWeights(w: FusedModelWeights): void {
  const seen = new Set<GPUBuffer>();
  const all = [w.finalNorm, ...matrixBuffers(w.embed), ...matrixBuffers(w.lmHead)];
  for (const L of w.layers) all.push(L.attnNorm, L.mlpNorm, ...(L.qkvBias ? [L.qkvBias] : []), ...[L.qkv, L.o, L.gateUp, L.down].flatMap(matrixBuffers));
  for (const b of all) if (!seen.has(b)) { seen.add(b); b.destroy(); }
}

export { columnsPerUnit };
