/**
 * Weights on the GPU: uploaded once, tensor by tensor (one tensor's staging memory at a time), each
 * matrix split by rows into segments no larger than the device's maxStorageBufferBindingSize.
 * Dense matrices keep their checkpoint dtype: bf16 and f16 stay 16-bit (two per u32 word, low half
 * first), halving the bytes each token streams; f32 stays f32. Rows are padded to whole vec4<u32>
 * chunks (8 16-bit or 4 f32 values) with zeros.
 */
import { f32ToF16 } from '../../format/dtype.js';
import { DenseTensor, type WeightTensor } from '../../model/tensor.js';
import type { ModelWeights } from '../../model/weights.js';
import type { Gpu } from './device.js';
import { GpuOutOfMemoryError } from './errors.js';
import { valuesPerChunk, type DenseDtype } from './kernels/prelude.js';
import { upgRoles, type UpgShape } from './kernels/matmul-upg.js';

export interface MatrixSegment {
  buffer: GPUBuffer;
  /** First row of the matrix this segment holds. */
  rowStart: number;
  rows: number;
}

export interface GpuDenseMatrix {
  encoding: 'dense';
  dtype: DenseDtype;
  rows: number;
  cols: number;
  /** vec4<u32> chunks per stored row. */
  rowChunks: number;
  segments: MatrixSegment[];
  bytes: number;
}

/** A UPG-encoded matrix: its packed buffers uploaded as they are (u32 words), in the spec's role order. */
export interface GpuEncodedMatrix {
  encoding: UpgShape['encoding'];
  rows: number;
  cols: number;
  shape: UpgShape;
  buffers: GPUBuffer[];
  bytes: number;
  /**
   * A matrix larger than one storage binding, split by rows (the fused path's q4/q8 row blocks, shared):
   * each block an encoded matrix over rows rowStart..; `buffers` is then empty and matmulOp dispatches
   * each block at its output offset.
   */
  rowBlocks?: { rowStart: number; matrix: GpuEncodedMatrix }[];
}

export type GpuMatrix = GpuDenseMatrix | GpuEncodedMatrix;

export interface GpuLayerWeights {
  attnNorm: GPUBuffer;
  /** q, k, v parts in output order, each writing its own column range of the qkv activations. */
  qkv: GpuMatrix[];
  qkvBias: GPUBuffer | null;
  o: GpuMatrix;
  mlpNorm: GPUBuffer;
  gateUp: GpuMatrix[];
  down: GpuMatrix;
}

export interface GpuModelWeights {
  embed: GpuMatrix;
  layers: GpuLayerWeights[];
  finalNorm: GPUBuffer;
  lmHead: GpuMatrix;
  /** Bytes of all buffers above. */
  bytes: number;
}

export interface UploadOptions {
  /** Store 16-bit checkpoints' dense matrices as f32 instead (for comparisons). */
  forceF32?: boolean;
}

export function denseDtypeOf(t: DenseTensor, options: UploadOptions): DenseDtype {
  if (options.forceF32 || t.storedDtype === 'F32') return 'f32';
  return t.storedDtype === 'BF16' ? 'bf16' : 'f16';
}

/** Writes rows [r0, r0 + n) of t into `dst` (the mapped segment), padded rows of rowChunks chunks. */
function packDenseRows(t: DenseTensor, dtype: DenseDtype, rowChunks: number, r0: number, n: number, dst: ArrayBuffer): void {
  const cols = t.cols;
  if (dtype === 'f32') {
    const out = new Float32Array(dst);
    const stride = rowChunks * 4;
    for (let r = 0; r < n; r++) out.set(t.data.subarray((r0 + r) * cols, (r0 + r + 1) * cols), r * stride);
    return;
  }
  const out = new Uint16Array(dst);
  const stride = rowChunks * 8;
  if (dtype === 'bf16') {
    // exact: the float32 values came from bf16, so their low 16 bits are zero
    const bits = new Uint32Array(t.data.buffer, t.data.byteOffset, t.data.length);
    for (let r = 0; r < n; r++) {
      const src = (r0 + r) * cols, o = r * stride;
      for (let c = 0; c < cols; c++) out[o + c] = bits[src + c]! >>> 16;
    }
  } else {
    for (let r = 0; r < n; r++) {
      const src = (r0 + r) * cols, o = r * stride;
      for (let c = 0; c < cols; c++) out[o + c] = f32ToF16(t.data[src + c]!);
    }
  }
}

export function uploadDense(gpu: Gpu, t: DenseTensor, label: string, options: UploadOptions = {}): GpuDenseMatrix {
  const dtype = denseDtypeOf(t, options);
  const rowChunks = Math.ceil(t.cols / valuesPerChunk(dtype));
  const rowBytes = rowChunks * 16;
  const rowsPerSegment = Math.floor(gpu.maxBindingBytes / rowBytes);
  if (rowsPerSegment < 1) throw new Error(`${label}: one row (${rowBytes} bytes) exceeds the storage binding limit ${gpu.maxBindingBytes}`);
  const segments: MatrixSegment[] = [];
  for (let r0 = 0; r0 < t.rows; r0 += rowsPerSegment) {
    const n = Math.min(rowsPerSegment, t.rows - r0);
    const buffer = gpu.createBuffer(`${label}[${r0}..${r0 + n})`, n * rowBytes, GPUBufferUsage.STORAGE, true);
    packDenseRows(t, dtype, rowChunks, r0, n, buffer.getMappedRange());
    buffer.unmap();
    segments.push({ buffer, rowStart: r0, rows: n });
  }
  return { encoding: 'dense', dtype, rows: t.rows, cols: t.cols, rowChunks, segments, bytes: t.rows * rowBytes };
}

/** What an encoded tensor offers the GPU: its packed buffers (UPG's EncodedTensor). */
interface PackedTensor extends WeightTensor {
  buffers(): { role: string; bytes: Uint8Array }[];
}

/** The kernel shape of a UPG tensor, from the fields its class exposes (src/format/upg/encodings). */
function upgShape(t: WeightTensor): UpgShape {
  const o = t as unknown as Record<string, unknown>;
  const { rows, cols } = t;
  switch (t.encoding) {
    case 'q8':
      return { encoding: 'q8', rows, cols, wordsPerRow: (o.stride as number) / 4 };
    case 'q4':
      return { encoding: 'q4', rows, cols, group: o.group as number, groups: o.groups as number, wordsPerRow: o.wordsPerRow as number };
    case 'bitmap':
      return { encoding: 'bitmap', rows, cols, tile: o.tile as number, bits: o.bits as 4 | 8, tiles: o.tiles as number, maskWordsPerRow: o.maskWordsPerRow as number };
    case 'nm': {
      const s = o.shape as { width: number; maskWords: number; valueStride: number; groups: number };
      return { encoding: 'nm', rows, cols, n: o.n as number, m: o.m as number, bits: o.bits as 4 | 8, group: o.group as number, ...s };
    }
    case 'csr':
      return { encoding: 'csr', rows, cols };
    default:
      throw new Error(`the WebGPU backend has no kernel for encoding '${t.encoding}'`);
  }
}

/** An encoded tensor whose rows can be cut into tensors of their own (nm, csr, bitmap: `sliceRows`). */
interface RowSliceable extends PackedTensor {
  sliceRows(r0: number, r1: number): RowSliceable;
}

function fitsBinding(gpu: Gpu, t: PackedTensor): boolean {
  return t.buffers().every((b) => b.bytes.length <= gpu.maxBindingBytes);
}

/**
 * Row blocks of t whose buffers each fit one storage binding: the rows halved until every part fits
 * (each part's buffers are views or small re-packs of t's, so this costs little). Null where one row
 * alone does not fit.
 */
function rowBlocksOf(gpu: Gpu, t: RowSliceable, r0 = 0, r1 = t.rows): { rowStart: number; tensor: RowSliceable }[] | null {
  const part = r0 === 0 && r1 === t.rows ? t : t.sliceRows(r0, r1);
  if (fitsBinding(gpu, part)) return [{ rowStart: r0, tensor: part }];
  if (r1 - r0 === 1) return null;
  const mid = r0 + Math.floor((r1 - r0) / 2);
  const a = rowBlocksOf(gpu, t, r0, mid), b = a && rowBlocksOf(gpu, t, mid, r1);
  return a && b ? [...a, ...b] : null;
}

export function uploadEncoded(gpu: Gpu, t: WeightTensor, label: string): GpuEncodedMatrix {
  const shape = upgShape(t);
  const packed = t as PackedTensor;
  if (!fitsBinding(gpu, packed)) {
    // larger than one storage binding: row blocks, each its own encoded matrix (matmulOp dispatches
    // each at its output offset), where the encoding can cut its rows
    const sliceable = typeof (t as Partial<RowSliceable>).sliceRows === 'function' ? (t as unknown as RowSliceable) : null;
    const blocks = sliceable ? rowBlocksOf(gpu, sliceable) : null;
    if (blocks) {
      const rowBlocks = blocks.map((b, i) => ({ rowStart: b.rowStart, matrix: uploadEncoded(gpu, b.tensor as unknown as WeightTensor, `${label}[rows ${b.rowStart}.., block ${i}]`) }));
      return { encoding: shape.encoding, rows: t.rows, cols: t.cols, shape, buffers: [], bytes: rowBlocks.reduce((a, b) => a + b.matrix.bytes, 0), rowBlocks };
    }
    const largest = packed.buffers().reduce((a, b) => (b.bytes.length > a.bytes.length ? b : a));
    const mb = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;
    throw new GpuOutOfMemoryError(
      `${label}: the adapter is too small for this tensor: its ${shape.encoding} '${largest.role}' buffer (${mb(largest.bytes.length)}) exceeds the adapter's storage binding limit (maxStorageBufferBindingSize, ${mb(gpu.maxBindingBytes)})${sliceable ? ' even for a single row' : `, and ${shape.encoding} tensors are not split across bindings`}; ${sliceable ? 'use a device with a larger limit' : 'compress it as q4 or q8 (split by rows)'}, or use backend: 'cpu'`,
    );
  }
  const stored = new Map(packed.buffers().map((b) => [b.role, b.bytes]));
  const buffers = upgRoles(shape.encoding).map((role) => {
    const bytes = stored.get(role);
    if (!bytes) throw new Error(`${label}: encoding ${shape.encoding} has no '${role}' buffer`);
    const buffer = gpu.createBuffer(`${label}.${role}`, bytes.length, GPUBufferUsage.STORAGE, true);
    new Uint8Array(buffer.getMappedRange()).set(bytes); // the tail past bytes.length stays zero
    buffer.unmap();
    return buffer;
  });
  return { encoding: shape.encoding, rows: t.rows, cols: t.cols, shape, buffers, bytes: buffers.reduce((a, b) => a + b.size, 0) };
}

export function uploadMatrix(gpu: Gpu, t: WeightTensor, label: string, options: UploadOptions = {}): GpuMatrix {
  if (t instanceof DenseTensor) return uploadDense(gpu, t, label, options);
  return uploadEncoded(gpu, t, label);
}

export function uploadVector(gpu: Gpu, v: Float32Array, label: string): GPUBuffer {
  const buffer = gpu.createBuffer(label, v.byteLength, GPUBufferUsage.STORAGE, true);
  new Float32Array(buffer.getMappedRange(), 0, v.length).set(v);
  buffer.unmap();
  return buffer;
}

/** Bytes the model's weights will take on the GPU (before uploading anything). */
export function gpuWeightBytes(w: ModelWeights, options: UploadOptions = {}): number {
  const seen = new Set<WeightTensor>();
  let bytes = 0;
  const m = (t: WeightTensor) => {
    if (seen.has(t)) return;
    seen.add(t);
    if (t instanceof DenseTensor) bytes += t.rows * Math.ceil(t.cols / valuesPerChunk(denseDtypeOf(t, options))) * 16;
    else bytes += Math.ceil(t.byteLength / 16) * 16;
  };
  const v = (x: Float32Array | null) => (bytes += x ? x.byteLength : 0);
  m(w.embed);
  m(w.lmHead);
  v(w.finalNorm);
  for (const L of w.layers) {
    L.qkv.forEach(m);
    L.gateUp.forEach(m);
    m(L.o);
    m(L.down);
    v(L.attnNorm);
    v(L.mlpNorm);
    v(L.qkvBias);
  }
  return bytes;
}

/** uploadMatrix once per tensor (a tied lm_head shares the embedding's buffers), reporting each upload. */
export function memoizedUpload(gpu: Gpu, options: UploadOptions = {}, onTensor?: (name: string) => void): (t: WeightTensor, label: string) => GpuMatrix {
  const uploaded = new Map<WeightTensor, GpuMatrix>();
  return (t, label) => {
    let g = uploaded.get(t);
    if (!g) {
      g = uploadMatrix(gpu, t, label, options);
      uploaded.set(t, g);
      onTensor?.(label);
    }
    return g;
  };
}

export function uploadWeights(gpu: Gpu, w: ModelWeights, options: UploadOptions = {}, onTensor?: (name: string) => void): GpuModelWeights {
  const matrix = memoizedUpload(gpu, options, onTensor);
  const vector = (v: Float32Array, label: string) => uploadVector(gpu, v, label);
  const layers = w.layers.map((L, l): GpuLayerWeights => ({
    attnNorm: vector(L.attnNorm, `layers.${l}.attn_norm`),
    qkv: L.qkv.map((t, i) => matrix(t, `layers.${l}.qkv.${i}`)),
    qkvBias: L.qkvBias ? vector(L.qkvBias, `layers.${l}.qkv_bias`) : null,
    o: matrix(L.o, `layers.${l}.o`),
    mlpNorm: vector(L.mlpNorm, `layers.${l}.mlp_norm`),
    gateUp: L.gateUp.map((t, i) => matrix(t, `layers.${l}.gate_up.${i}`)),
    down: matrix(L.down, `layers.${l}.down`),
  }));
  const embed = matrix(w.embed, 'embed');
  const lmHead = matrix(w.lmHead, 'lm_head');
  const finalNorm = vector(w.finalNorm, 'final_norm');
  return { embed, layers, finalNorm, lmHead, bytes: gpuWeightBytes(w, options) };
}
