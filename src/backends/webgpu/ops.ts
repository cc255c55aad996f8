/**
 * The backend's ops: each builds, at load, the dispatches of one kernel family over fixed buffers,
 * checking the shapes against the buffers first. Workgroup counts depend only on the step's T.
 */
import { promptAttentionVariant, type Gpu } from './device.js';
import type { Dispatch } from './dispatch.js';
import { attentionTiledFits, attentionTiledWgsl, attentionWgsl, TILE_Q, type AttentionShape } from './kernels/attention.js';
import { BATCHED_WG, batchedBindings, batchedLayoutApplies, batchedMatvecApplies, batchedMatvecWgsl, batchedRowsLayoutBytes, batchedWorkgroups, batchedWorkgroupSize, normQuantizeRowsWgsl, quantizeRowsWgsl, type AttentionRecords, type BatchedMatvecShape } from './kernels/batched-matvec.js';
import { decodeCombineWgsl, type SplitAttentionShape } from './kernels/fused-attention.js';
import { embeddingWgsl } from './kernels/embedding.js';
import { MATVEC_ROWS, matvecDenseWgsl, type DenseMatmulShape } from './kernels/matmul-dense.js';
import {
  chooseTensorCoreTile, convertF16Invocations, convertF16Wgsl, F32_TILE, linearGrid, matmulTensorCoreWgsl, matmulTiledF32Wgsl, paddedCols, tensorCoreTileName,
  tensorCoreTileSize, tensorCoreWorkgroupBytes, tiledSupports, type TiledKernel, type TiledMatmulShape, type TiledWeight,
} from './kernels/matmul-tiled.js';
import { chooseInt8Split, chooseInt8Tile, INT8_BLOCK, int8DirectFits, matmulInt8DirectWgsl, INT8_FEW_TILE, int8SplitCombineWgsl, type Int8Split, int8InputBytes, int8Supports, int8TileName, int8TileSize, int8WorkgroupBytes, matmulInt8Wgsl, q4ToInt8RowsGrid, q4ToInt8RowsWgsl, quantizeBlocksGrid, quantizeBlocksWgsl, quantizeTokensGrid, quantizeTokensWgsl, type Int8Layout } from './kernels/matmul-int8.js';
import { kvDefines, type KvLayout } from './kernels/kv.js';
import { attentionMergeWgsl, attentionPartsBytes, attentionSplitFor, attentionTensorCoreBytes, attentionRowsFit, attentionTensorCoreFits, attentionTensorCoreWgsl, attentionVariantName } from './kernels/attention-tensor-core.js';
import { f32Literal, grid } from './kernels/prelude.js';
import { embeddingUpgWgsl, matmulUpgWgsl } from './kernels/matmul-upg.js';
import { rmsnormWgsl, type RmsnormShape } from './kernels/rmsnorm.js';
import { ropeKvWgsl, type RopeShape } from './kernels/rope.js';
import { ARGMAX_PARTS, argmaxPartsWgsl, argmaxWgsl, sampleWgsl, sampleWorkgroupSize } from './kernels/sample.js';
import { swigluF16Wgsl, swigluWgsl } from './kernels/swiglu.js';
import { TOKEN_MASK_WG, tokenMaskWgsl } from './kernels/token-mask.js';
import type { GpuMatrix } from './weights.js';

function need(buffer: GPUBuffer, floats: number, what: string): void {
  if (buffer.size < floats * 4) throw new Error(`${what}: buffer '${buffer.label}' has ${buffer.size} bytes, needs ${floats * 4}`);
}

export function embeddingOp(gpu: Gpu, table: GpuMatrix, hidden: number, maxTokens: number, x: GPUBuffer, step: GPUBuffer): Dispatch[] {
  if (table.cols !== hidden) throw new Error(`embedding: table has ${table.cols} columns, hidden is ${hidden}`);
  need(x, maxTokens * hidden, 'embedding');
  if (table.encoding !== 'dense') {
    // a table split across bindings: a dispatch a row block, each writing only the ids in its rows
    const blocks = table.rowBlocks ?? [{ rowStart: 0, matrix: table }];
    return blocks.map(({ rowStart, matrix }) => {
      const shape = matrix.shape, rows = table.rowBlocks ? matrix.rows : 0xffffffff;
      const pipeline = gpu.pipeline(`embedding_${table.encoding}`, { ...shape, rowStart, blockRows: rows }, () => embeddingUpgWgsl(shape, rowStart, rows));
      return { label: `embedding_${table.encoding}`, pipeline, bindGroup: gpu.bindGroup('embedding', pipeline, [...matrix.buffers, x, step]), workgroups: grid };
    });
  }
  return table.segments.map((seg) => {
    const shape = { dtype: table.dtype, hidden, rowStart: seg.rowStart, rows: seg.rows, rowChunks: table.rowChunks };
    const pipeline = gpu.pipeline('embedding', shape, () => embeddingWgsl(shape));
    return { label: 'embedding', pipeline, bindGroup: gpu.bindGroup('embedding', pipeline, [seg.buffer, x, step]), workgroups: grid };
  });
}

/** RMSNorm; with `x16` (and s.f16Cols) the rows also as f16 for the tensor-core products (F16Input). */
export function rmsnormOp(gpu: Gpu, s: RmsnormShape, maxTokens: number, x: GPUBuffer, w: GPUBuffer, out: GPUBuffer, step: GPUBuffer, x16?: GPUBuffer): Dispatch {
  need(w, s.hidden, 'rmsnorm weight');
  need(x, maxTokens * s.hidden, 'rmsnorm input');
  need(out, (s.mode === 'all' ? maxTokens : 1) * s.hidden, 'rmsnorm output');
  if (!x16 !== (s.f16Cols === undefined)) throw new Error('rmsnorm: an f16 output needs both its buffer and its columns');
  if (x16) need(x16, (maxTokens * s.f16Cols!) / 2, 'rmsnorm f16 output');
  const f = { subgroups: gpu.subgroups };
  const pipeline = gpu.pipeline('rmsnorm', { ...s, ...f }, () => rmsnormWgsl(s, f));
  return {
    label: `rmsnorm(${s.mode}${x16 ? ', f16 too' : ''})`,
    pipeline,
    bindGroup: gpu.bindGroup('rmsnorm', pipeline, [x, w, out, step, ...(x16 ? [x16] : [])]),
    workgroups: s.mode === 'all' ? grid : () => [1, 1, 1],
  };
}

export interface MatmulIo {
  /** (tokens, cols) input; matvec reads row 0. */
  x: GPUBuffer;
  /** (tokens, yStride) output. */
  y: GPUBuffer;
  yStride: number;
  /** Column of y where row 0 of the matrix lands. */
  yOffset: number;
  /** Bias over y's columns (indexed by yOffset + row), or null. */
  bias: GPUBuffer | null;
  /** y += W x (fused residual add) instead of y = W x. */
  residual: boolean;
  step: GPUBuffer;
  /**
   * x already in f16 (tokens, paddedCols(cols)), written by the kernel before (rmsnorm, swiglu with
   * an f16 output): the tensor-core products read it instead of converting x themselves.
   */
  x16?: GPUBuffer;
  /**
   * The products of one x in a row (a layer's q, k and v; gate and up): what an earlier one already
   * made of x (its f16 copy, its int8 rows), by scratch buffer, so a later one reads it instead of
   * making it again. Shared by the callers' products of that x, in dispatch order.
   */
  prepared?: Map<string, GPUBuffer[]>;
  /**
   * The batched decode step's products (few tokens a step): the int8 path, scaled by row, takes its
   * small tile and splits the columns over workgroups (kernels/matmul-int8.ts Int8Split).
   */
  fewTokens?: boolean;
}

/**
 * y = W x over `tokens` rows: 'matvec' for one token (decode), 'tiled' for T tokens (prefill).
 * One dispatch per segment of W.
 */
export function matmulOp(gpu: Gpu, m: GpuMatrix, io: MatmulIo, kind: 'matvec' | 'tiled', maxTokens: number): Dispatch[] {
  // split across bindings: each row block writes its rows of y (and reads its rows of the bias)
  if (m.encoding !== 'dense' && m.rowBlocks) return m.rowBlocks.flatMap((b) => matmulOp(gpu, b.matrix, { ...io, yOffset: io.yOffset + b.rowStart }, kind, maxTokens));
  const tokens = kind === 'matvec' ? 1 : maxTokens;
  need(io.x, tokens * m.cols, 'matmul input');
  need(io.y, (tokens - 1) * io.yStride + io.yOffset + m.rows, 'matmul output');
  if (io.yOffset + m.rows > io.yStride) throw new Error(`matmul: rows ${io.yOffset}..${io.yOffset + m.rows} exceed the output stride ${io.yStride}`);
  if (io.bias) need(io.bias, io.yOffset + m.rows, 'matmul bias');
  const f = { subgroups: gpu.subgroups };
  if (kind === 'tiled') {
    const tiled = tiledOp(gpu, m, io, maxTokens);
    if (tiled) return tiled;
  }
  if (m.encoding !== 'dense') {
    // one workgroup per row; prefill applies each decoded weight to 8 tokens at a time
    const upgIo = { yStride: io.yStride, yOffset: io.yOffset, bias: io.bias !== null, residual: io.residual, tokensPerPass: kind === 'matvec' ? 1 : 8 };
    const shape = m.shape;
    const name = `matmul_${m.encoding}`;
    const pipeline = gpu.pipeline(name, { ...shape, ...upgIo }, () => matmulUpgWgsl(shape, upgIo));
    // the one-token kernel reads no step (T is 1)
    const buffers = [...m.buffers, io.x, io.y, ...(kind === 'tiled' ? [io.step] : []), ...(io.bias ? [io.bias] : [])];
    return [{ label: name, pipeline, bindGroup: gpu.bindGroup(name, pipeline, buffers), workgroups: () => grid(m.rows) }];
  }
  return m.segments.map((seg) => {
    const shape: DenseMatmulShape = {
      dtype: m.dtype, rows: seg.rows, cols: m.cols, rowChunks: m.rowChunks,
      yStride: io.yStride, yOffset: io.yOffset + seg.rowStart, bias: io.bias !== null, residual: io.residual,
    };
    const pipeline = gpu.pipeline('matvec_dense', { ...shape, ...f }, () => matvecDenseWgsl(shape, f));
    const n = Math.ceil(seg.rows / MATVEC_ROWS);
    return { label: 'matvec_dense', pipeline, bindGroup: gpu.bindGroup('matvec_dense', pipeline, [seg.buffer, io.x, io.y, ...(io.bias ? [io.bias] : [])]), workgroups: () => grid(n) };
  });
}

/** The prefill's matrix-matrix kernel on this device: subgroup matrices where self-tested, else f32 tiles. */
export function prefillKernel(gpu: Gpu): TiledKernel {
  return gpu.features.subgroupMatrixF16 ? 'subgroup-matrix-f16' : 'f32';
}

/**
 * Whether the prefill's product of `m` runs on the int8 tensor cores (q4 g64, where self-tested; every
 * block of a matrix split across bindings), so that x can reach it already quantized (quantizeTokensOp).
 */
export function int8Prefill(gpu: Gpu, m: GpuMatrix): boolean {
  if (m.encoding !== 'dense' && m.rowBlocks) return m.rowBlocks.every((b) => int8Prefill(gpu, b.matrix));
  if (!gpu.features.subgroupMatrixI8 || prefillKernel(gpu) === 'f32' || m.encoding === 'dense' || m.shape.encoding !== 'q4') return false;
  const weight: TiledWeight = { encoding: 'q4', wordsPerRow: m.shape.wordsPerRow, group: m.shape.group, groups: m.shape.groups };
  return tiledSupports(weight) && int8Supports({ weight, cols: m.cols });
}

/** A line naming the prefill's product kernel (bench, --verbose). */
export function prefillPathDescription(gpu: Gpu): string {
  if (prefillKernel(gpu) === 'f32') return `tiled f32 (${F32_TILE.tokens} tokens x ${F32_TILE.rows} rows a workgroup, WebGPU default limits)`;
  const fixed = gpu.features.subgroupMatrixTile;
  const tiles = fixed ? `tile ${tensorCoreTileName(fixed)}` : 'tiles of 128 tokens x 128 rows, or 64 x 128 for narrow matrices';
  const int8 = gpu.features.subgroupMatrixI8
    ? `; q4 g64 matrices on int8 tensor cores (i8 x i8 -> i32 16x16x32, ${{ row: 'x quantized per token, W rounded again to int8 per row (a byte a weight more)', 'row-q4': 'x quantized per token, W rounded to int8 per row as its q4 words are staged', group: 'x quantized per token and 64 columns' }[gpu.features.int8Scaling]}, ${gpu.features.int8Tile ? `tile ${int8TileName(gpu.features.int8Tile)}` : `128 or 64 tokens x 128 rows${gpu.features.int8Scaling === 'row' ? ', 128 x 128 in two staged buffers' : ''}`}${gpu.features.int8Lab ? `, lab ${gpu.features.int8Lab}: timing only` : ''})`
    : '';
  return `tensor cores: subgroup matrix f16 x f16 -> f32 16x16x16, x converted to f16 once a product, x and W (dequantized to f16) staged through workgroup memory 64 columns a stage (${tiles})${int8}; prompt attention: ${promptAttentionDescription(gpu)}`;
}

/** The prompt attention's kernel in words (part of prefillPathDescription; `pdvm bench --prefill` prints it). */
export function promptAttentionDescription(gpu: Gpu): string {
  const f = gpu.features;
  return f.attentionTensorCore ? `tensor cores, ${attentionVariantName(promptAttentionVariant(f))}${f.attentionSplit ? ', split over keys' : ''}` : 'f32 tiles';
}

/**
 * The matrix-matrix prefill kernel (kernels/matmul-tiled.ts) for q4, q8 and dense matrices, one
 * dispatch per segment (the tensor-core path converts x to f16 first); null for the encodings it does
 * not take (nm, csr, bitmap walked).
 */
function tiledOp(gpu: Gpu, m: GpuMatrix, io: MatmulIo, maxTokens: number): Dispatch[] | null {
  const parts: { weight: TiledWeight; buffers: GPUBuffer[]; rows: number; rowStart: number }[] = [];
  if (m.encoding === 'dense') {
    for (const seg of m.segments) parts.push({ weight: { encoding: 'dense', dtype: m.dtype, rowChunks: m.rowChunks }, buffers: [seg.buffer], rows: seg.rows, rowStart: seg.rowStart });
  } else if (m.shape.encoding === 'q4') {
    parts.push({ weight: { encoding: 'q4', wordsPerRow: m.shape.wordsPerRow, group: m.shape.group, groups: m.shape.groups }, buffers: m.buffers, rows: m.rows, rowStart: 0 });
  } else if (m.shape.encoding === 'q8') {
    parts.push({ weight: { encoding: 'q8', wordsPerRow: m.shape.wordsPerRow }, buffers: m.buffers, rows: m.rows, rowStart: 0 });
  } else return null;
  if (!parts.every((p) => tiledSupports(p.weight))) return null;
  const shapeOf = (p: (typeof parts)[number]): TiledMatmulShape => ({ weight: p.weight, rows: p.rows, cols: m.cols, yStride: io.yStride, yOffset: io.yOffset + p.rowStart, bias: io.bias !== null, residual: io.residual });
  const tail = [io.y, io.step, ...(io.bias ? [io.bias] : [])];
  if (prefillKernel(gpu) === 'f32') {
    return parts.map((p) => {
      const shape = shapeOf(p);
      const pipeline = gpu.pipeline('matmul_tiled_f32', { ...shape, ...shape.weight, weight: p.weight.encoding }, () => matmulTiledF32Wgsl(shape));
      const rowTiles = Math.ceil(p.rows / F32_TILE.rows);
      if (rowTiles > 65535) throw new Error(`matmul: ${p.rows} rows exceed the dispatch grid`);
      return {
        label: `matmul_tiled_f32_${p.weight.encoding}`,
        pipeline,
        bindGroup: gpu.bindGroup('matmul_tiled_f32', pipeline, [...p.buffers, io.x, ...tail]),
        workgroups: (T: number) => [rowTiles, Math.ceil(T / F32_TILE.tokens), 1],
      };
    });
  }
  // q4 g64 on the int8 tensor cores where self-tested and asked for (PDVM_PREFILL_I8=1)
  if (gpu.features.subgroupMatrixI8 && parts.length === 1 && int8Supports(shapeOf(parts[0]!))) return int8Op(gpu, shapeOf(parts[0]!), parts[0]!.buffers, io, maxTokens);
  // tensor cores: x in f16 (tokens padded to the tile, columns to a stage) in a scratch buffer every
  // product shares, written just before it is read
  const tokensPadded = Math.ceil(maxTokens / 128) * 128;
  const dispatches: Dispatch[] = [];
  let x16: GPUBuffer;
  if (io.x16) {
    // rows past the step's T are never stored to y (a product's row t reads only x row t)
    need(io.x16, (maxTokens * paddedCols(m.cols)) / 2, 'matmul f16 input');
    x16 = io.x16;
  } else {
    x16 = gpu.scratch('x16', tokensPadded * paddedCols(m.cols) * 2);
    if (!madeBefore(io, `x16 ${m.cols}`, x16)) {
      const convert = gpu.pipeline('convert_f16', { cols: m.cols }, () => convertF16Wgsl(m.cols));
      dispatches.push({
        label: 'convert_f16',
        pipeline: convert,
        bindGroup: gpu.bindGroup('convert_f16', convert, [io.x, x16, io.step]),
        workgroups: (T: number) => linearGrid(convertF16Invocations(T, m.cols)),
      });
    }
  }
  const sg = gpu.features.subgroupMaxSize;
  const indexing = gpu.features.subgroupMatrixIndexing ?? 'invocation-index';
  const syntax = gpu.features.subgroupMatrixSyntax;
  for (const p of parts) {
    const shape = shapeOf(p);
    const tile = gpu.features.subgroupMatrixTile ?? chooseTensorCoreTile(p.rows, maxTokens);
    if (tensorCoreWorkgroupBytes(tile) > gpu.device.limits.maxComputeWorkgroupStorageSize) {
      throw new Error(`matmul: the tensor-core tile ${tensorCoreTileName(tile)} needs ${tensorCoreWorkgroupBytes(tile)} bytes of workgroup memory, over the device's ${gpu.device.limits.maxComputeWorkgroupStorageSize}`);
    }
    const size = tensorCoreTileSize(tile);
    const rowTiles = Math.ceil(p.rows / size.rows);
    if (rowTiles > 65535) throw new Error(`matmul: ${p.rows} rows exceed the dispatch grid`);
    const pipeline = gpu.pipeline('matmul_tensor_core', { ...shape, ...shape.weight, weight: p.weight.encoding, sg, indexing, syntax, tile: tensorCoreTileName(tile) }, () =>
      matmulTensorCoreWgsl(shape, sg, indexing, tile, syntax),
    );
    dispatches.push({
      label: `matmul_tensor_core_${p.weight.encoding}`,
      pipeline,
      bindGroup: gpu.bindGroup('matmul_tensor_core', pipeline, [...p.buffers, x16, ...tail]),
      workgroups: (T: number) => [Math.ceil(T / size.tokens), rowTiles, 1],
    });
  }
  return dispatches;
}

/** int8_split_combine: y (+)= the parts' sum (+ bias), one invocation a (token, row). */
function splitCombine(gpu: Gpu, shape: TiledMatmulShape, split: Int8Split, parts: GPUBuffer, io: MatmulIo): Dispatch {
  const pipeline = gpu.pipeline('int8_split_combine', { rows: shape.rows, yStride: shape.yStride, yOffset: shape.yOffset, bias: shape.bias, residual: shape.residual, ...split }, () => int8SplitCombineWgsl(shape, split));
  return {
    label: 'int8_split_combine',
    pipeline,
    bindGroup: gpu.bindGroup('int8_split_combine', pipeline, [parts, io.y, io.step, ...(io.bias ? [io.bias] : [])]),
    workgroups: (T: number) => linearGrid(T * shape.rows),
  };
}

/** io.prepared's key for x of `cols` columns quantized by the dispatch `label`. */
const quantizedKey = (label: string, cols: number) => `${label} ${cols}`;

/** Whether an earlier product of io.x made `what` into these `buffers` (io.prepared); records it if not. */
function madeBefore(io: MatmulIo, what: string, ...buffers: GPUBuffer[]): boolean {
  if (!io.prepared) return false;
  const had = io.prepared.get(what);
  if (had && had.length === buffers.length && had.every((b, i) => b === buffers[i])) return true;
  io.prepared.set(what, buffers);
  return false;
}

/**
 * A q4 g64 product on the int8 tensor cores (kernels/matmul-int8.ts): x quantized per token and block
 * of 64 columns (scaling 'group') or per token ('row', 'row-q4') into scratch buffers every such
 * product shares (written just before it is read), then the product. Scaling 'row' reads the matrix
 * rounded again to int8 a row, made here once a matrix (a byte a weight and a scale a row, beside the
 * q4 words); 'row-q4' the q4 words and each row's scales, made here once. With io.fewTokens (scaling
 * by row): the few-token tile and the columns split over workgroups, then int8_split_combine.
 */
function int8Op(gpu: Gpu, shape: TiledMatmulShape, buffers: GPUBuffer[], io: MatmulIo, maxTokens: number): Dispatch[] {
  const few = io.fewTokens === true && gpu.features.int8Scaling !== 'group';
  const scaling = gpu.features.int8Scaling;
  // few tokens, 'row': the operands straight from global memory where asked for (PDVM_I8_DIRECT), in tiles or rows
  const direct = few && scaling === 'row' && gpu.features.int8Direct > 0 && int8DirectFits(shape);
  const layout: Int8Layout = direct ? int8DirectLayout(gpu) : 'rows';
  const { xq, xscale } = int8TokenScratch(gpu, maxTokens, shape.cols, layout);
  const quantize = scaling !== 'group'
    ? { label: quantizeTokensLabel(layout), pipeline: gpu.pipeline('quantize_tokens', { cols: shape.cols, layout }, () => quantizeTokensWgsl(shape.cols, { kind: 'plain' }, layout)), grid: (T: number) => quantizeTokensGrid(T) }
    : { label: 'quantize_blocks', pipeline: gpu.pipeline('quantize_blocks', { cols: shape.cols }, () => quantizeBlocksWgsl(shape.cols)), grid: (T: number) => quantizeBlocksGrid(T, shape.cols) };
  // x quantized once for the products of one x in a row (both its buffers as an earlier one left them)
  const quantizeX = (): Dispatch[] =>
    madeBefore(io, quantizedKey(quantize.label, shape.cols), xq, xscale)
      ? []
      : [{ label: quantize.label, pipeline: quantize.pipeline, bindGroup: gpu.bindGroup(quantize.label, quantize.pipeline, [io.x, xq, xscale, io.step]), workgroups: quantize.grid }];
  const indexing = gpu.features.subgroupMatrixIndexing ?? 'invocation-index';
  const syntax = gpu.features.int8Syntax, units = gpu.features.int8Units;
  if (direct) {
    const TT = gpu.features.int8Direct;
    const pipeline = gpu.pipeline('matmul_int8_direct', { ...shape, ...shape.weight, weight: 'q4', syntax, units, TT, indexing, layout }, () => matmulInt8DirectWgsl(shape, syntax, units, TT, indexing, layout));
    return [
      ...quantizeX(),
      { label: 'matmul_int8_direct', pipeline, bindGroup: gpu.bindGroup('matmul_int8_direct', pipeline, [...int8Rows(gpu, shape, buffers, false, layout), xq, xscale, io.y, io.step, ...(io.bias ? [io.bias] : [])]), workgroups: (T: number) => [Math.ceil(T / (16 * TT)), shape.rows / 16, 1] },
    ];
  }
  const tile = gpu.features.int8Tile ?? (few ? INT8_FEW_TILE : chooseInt8Tile(shape.rows, maxTokens, scaling));
  if (int8WorkgroupBytes(tile, scaling) > gpu.device.limits.maxComputeWorkgroupStorageSize) {
    throw new Error(`matmul: the int8 tile ${int8TileName(tile)} needs ${int8WorkgroupBytes(tile, scaling)} bytes of workgroup memory, over the device's ${gpu.device.limits.maxComputeWorkgroupStorageSize}`);
  }
  const size = int8TileSize(tile);
  const lab = gpu.features.int8Lab ?? undefined;
  const rowTiles = Math.ceil(shape.rows / size.rows);
  if (rowTiles > 65535) throw new Error(`matmul: ${shape.rows} rows exceed the dispatch grid`);
  // few tokens: the columns split over workgroups, the parts added by int8_split_combine
  const parts = few ? chooseInt8Split(rowTiles, shape.cols / INT8_BLOCK, gpu.features.int8SplitWorkgroups) : 1;
  const split = parts > 1 ? { parts, maxTokens } : undefined;
  const pipeline = gpu.pipeline('matmul_int8', { ...shape, ...shape.weight, weight: 'q4', indexing, syntax, units, tile: int8TileName(tile), lab: lab ?? '', scaling, parts, maxTokens: split ? maxTokens : 0 }, () =>
    matmulInt8Wgsl(shape, indexing, tile, syntax, units, lab, scaling, split),
  );
  const partsBuffer = split ? gpu.scratch('int8_parts', parts * maxTokens * shape.rows * 4) : null;
  // 'row': the int8 rows in place of the q4 words; 'row-q4': the q4 words, and the rows' scales after the step
  const weights = scaling === 'row' ? int8Rows(gpu, shape, buffers) : buffers;
  const rowScales = scaling === 'row-q4' ? int8Rows(gpu, shape, buffers, true) : [];
  return [
    ...quantizeX(),
    {
      label: scaling === 'group' ? 'matmul_int8_q4' : 'matmul_int8_rows',
      pipeline,
      bindGroup: gpu.bindGroup('matmul_int8', pipeline, [...weights, xq, xscale, partsBuffer ?? io.y, io.step, ...rowScales, ...(io.bias && !split ? [io.bias] : [])]),
      workgroups: (T: number) => [Math.ceil(T / size.tokens), rowTiles, parts],
    },
    ...(split ? [splitCombine(gpu, shape, split, partsBuffer!, io)] : []),
  ];
}

/**
 * The scratch buffers of x as int8 (xq, xscale) that the int8 products read, for `maxTokens` tokens of
 * up to `cols` columns; x in the 'tiles' layout (the direct kernel's, Int8Layout) has a buffer of its
 * own (and scales), so that a product quantizing x in rows never overwrites tiles another is to read.
 */
export function int8TokenScratch(gpu: Gpu, maxTokens: number, cols: number, layout: Int8Layout = 'rows'): { xq: GPUBuffer; xscale: GPUBuffer } {
  const bytes = int8InputBytes(Math.ceil(maxTokens / 512) * 512, cols);
  const tiles = layout === 'tiles' ? '_tiles' : '';
  return { xq: gpu.scratch(`xq${tiles}`, bytes.xq), xscale: gpu.scratch(`xscale${tiles}`, bytes.xscale) };
}

/** The layout the direct int8 kernel reads (PDVM_I8_DIRECT=tTT: tiles; its offsets must be in words). */
export function int8DirectLayout(gpu: Gpu): Int8Layout {
  return gpu.features.int8DirectTiles && gpu.features.int8Units === 'words' ? 'tiles' : 'rows';
}

/**
 * The layout in which norms and SwiGLU write x (of each of `cols` columns) as int8 a token for the
 * few-token products after them (quantizeTokensOp): the direct kernel's tiles where it runs in tiles
 * and takes every such width, else rows. A product that does not read that layout (its rows not whole
 * tiles of 16) quantizes x itself (io.prepared has no key of its layout).
 */
export function int8TokensLayout(gpu: Gpu, ...cols: number[]): Int8Layout {
  const direct = gpu.features.int8Direct > 0 && gpu.features.int8Scaling === 'row' && cols.every((c) => int8DirectFits({ rows: 16, cols: c })); // the columns' half of the check
  return direct ? int8DirectLayout(gpu) : 'rows';
}

/** The label (and io.prepared key) of x quantized a token in a layout. */
const quantizeTokensLabel = (layout: Int8Layout) => (layout === 'tiles' ? 'quantize_tokens_tiles' : 'quantize_tokens');

/**
 * Whether the int8 products of few tokens take x as int8 a token (scaling by row, self-tested on this
 * device): then norms and SwiGLU write it as they go (quantizeTokensOp) and the products skip theirs.
 */
export function int8TokensInUse(gpu: Gpu): boolean {
  return gpu.features.subgroupMatrixI8 && gpu.features.int8Scaling !== 'group';
}

/**
 * x's int8 rows a token into `s` (int8TokenScratch) for the products that follow, from its RMSNorm
 * (also written to `out`, as xn) or its SwiGLU (gate_up in, `out` = act); int8TokensPrepared tells
 * those products (MatmulIo.prepared) not to quantize x again.
 */
export function quantizeTokensOp(
  gpu: Gpu, cols: number, source: { kind: 'norm'; eps: number; x: GPUBuffer; weight: GPUBuffer } | { kind: 'swiglu'; gateUp: GPUBuffer }, out: GPUBuffer, s: { xq: GPUBuffer; xscale: GPUBuffer }, step: GPUBuffer,
  layout: Int8Layout = 'rows',
): Dispatch {
  const label = `${source.kind}_${quantizeTokensLabel(layout)}`; // the pipeline's name: its source
  const eps = source.kind === 'norm' ? f32Literal(source.eps) : '';
  const pipeline = gpu.pipeline(label, { cols, eps }, () => quantizeTokensWgsl(cols, source.kind === 'norm' ? { kind: 'norm', eps } : { kind: 'swiglu' }, layout));
  const inputs = source.kind === 'norm' ? [source.x, source.weight] : [source.gateUp];
  return { label, pipeline, bindGroup: gpu.bindGroup(label, pipeline, [...inputs, out, s.xq, s.xscale, step]), workgroups: (T: number) => quantizeTokensGrid(T) };
}

/** io.prepared for the products after quantizeTokensOp: x of `cols` columns is in `s` as int8 a token (in `layout`). */
export function int8TokensPrepared(s: { xq: GPUBuffer; xscale: GPUBuffer }, cols: number, layout: Int8Layout = 'rows'): Map<string, GPUBuffer[]> {
  return new Map([[quantizedKey(quantizeTokensLabel(layout), cols), [s.xq, s.xscale]]]);
}

/**
 * A q4 g64 matrix rounded again to int8 a row (kernels/matmul-int8.ts q4ToInt8RowsWgsl), made once and
 * kept beside its q4 words; `scalesOnly` (scaling 'row-q4'): only each row's (scale, 127 / max);
 * `layout` 'tiles': the same bytes in the direct kernel's tiles (a copy of its own).
 */
const int8RowsOf = new WeakMap<GPUBuffer, GPUBuffer[]>(), int8RowScalesOf = new WeakMap<GPUBuffer, GPUBuffer[]>(), int8TilesOf = new WeakMap<GPUBuffer, GPUBuffer[]>();
function int8Rows(gpu: Gpu, shape: TiledMatmulShape, q4: GPUBuffer[], scalesOnly = false, layout: Int8Layout = 'rows'): GPUBuffer[] {
  const memo = scalesOnly ? int8RowScalesOf : layout === 'tiles' ? int8TilesOf : int8RowsOf;
  const known = memo.get(q4[0]!);
  if (known) return known;
  const device = gpu.device;
  const out = scalesOnly
    ? [gpu.createBuffer('int8_row_scales', Math.max(16, shape.rows * 8), GPUBufferUsage.STORAGE)]
    : [gpu.createBuffer('int8_rows', shape.rows * shape.cols, GPUBufferUsage.STORAGE), gpu.createBuffer('int8_rows_scale', Math.max(16, shape.rows * 4), GPUBufferUsage.STORAGE)];
  const pipeline = gpu.pipeline('q4_to_int8_rows', { rows: shape.rows, cols: shape.cols, scalesOnly, layout }, () => q4ToInt8RowsWgsl(shape.rows, shape.cols, scalesOnly, layout));
  const encoder = device.createCommandEncoder();
  const pass = encoder.beginComputePass();
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, gpu.bindGroup('q4_to_int8_rows', pipeline, [q4[0]!, q4[1]!, ...out]));
  pass.dispatchWorkgroups(...q4ToInt8RowsGrid(shape.rows));
  pass.end();
  device.queue.submit([encoder.finish()]);
  memo.set(q4[0]!, out);
  int8CopiesOf.set(gpu, [...(int8CopiesOf.get(gpu) ?? []), { memo, key: q4[0]!, buffers: out }]);
  return out;
}
const int8CopiesOf = new WeakMap<Gpu, { memo: WeakMap<GPUBuffer, GPUBuffer[]>; key: GPUBuffer; buffers: GPUBuffer[] }[]>();

/** The GPU bytes of the int8 copies made so far on `gpu` (int8Rows). */
export function int8CopyBytes(gpu: Gpu): number {
  return (int8CopiesOf.get(gpu) ?? []).reduce((n, c) => n + c.buffers.reduce((m, b) => m + b.size, 0), 0);
}

/**
 * Turns the int8 products off on `gpu` and frees the copies they kept (where they did not fit beside
 * the model): the products built after this multiply on the f16 tensor cores.
 */
export function dropInt8Products(gpu: Gpu): void {
  for (const c of int8CopiesOf.get(gpu) ?? []) {
    c.memo.delete(c.key);
    for (const b of c.buffers) b.destroy();
  }
  int8CopiesOf.delete(gpu);
  gpu.features.subgroupMatrixI8 = false;
}

/**
 * RoPE on the step's q and k, k and v appended to the KV cache at each row's slot and position (the
 * row table, kernels/kv.ts); kCache and vCache are one buffer group of a layer's pools.
 */
export function ropeKvOp(
  gpu: Gpu, s: RopeShape, kv: KvLayout, qkv: GPUBuffer, cos: GPUBuffer, sin: GPUBuffer, kCache: GPUBuffer, vCache: GPUBuffer, step: GPUBuffer, parts = 1,
): Dispatch {
  if (s.rotaryDim % 2 !== 0 || s.rotaryDim > s.headDim) throw new Error(`rope: rotary dim ${s.rotaryDim} must be even and <= head dim ${s.headDim}`);
  const pipeline = gpu.pipeline('rope_kv', { ...s, ...kvDefines(kv), parts }, () => ropeKvWgsl(s, kv, parts));
  const workgroups = (T: number): [number, number, number] => (parts > 1 ? [T, parts, 1] : grid(T));
  return { label: 'rope_kv', pipeline, bindGroup: gpu.bindGroup('rope_kv', pipeline, [qkv, cos, sin, kCache, vCache, step]), workgroups };
}

/** Attention of each row of the step over its slot's keys 0..position (the row table, kernels/kv.ts). */
export function attentionOp(gpu: Gpu, s: AttentionShape, kv: KvLayout, qkv: GPUBuffer, kCache: GPUBuffer, vCache: GPUBuffer, out: GPUBuffer, step: GPUBuffer): Dispatch {
  if (s.numHeads % s.numKvHeads !== 0) throw new Error(`attention: ${s.numHeads} heads are not a multiple of ${s.numKvHeads} KV heads`);
  const f = { subgroups: gpu.subgroups };
  const pipeline = gpu.pipeline('attention', { ...s, slidingWindow: s.slidingWindow ?? 0, ...f, ...kvDefines(kv) }, () => attentionWgsl(s, f, kv));
  return {
    label: 'attention',
    pipeline,
    bindGroup: gpu.bindGroup('attention', pipeline, [qkv, kCache, vCache, out, step]),
    workgroups: (T: number) => grid(T * s.numHeads),
  };
}

/**
 * Attention of a prompt's rows (one sequence: every row in one slot) in tiles of 16 queries x 16 keys,
 * each key and value tile read once for the tile's rows; null where the head dim does not suit it.
 */
export function attentionTiledOp(gpu: Gpu, s: AttentionShape, kv: KvLayout, qkv: GPUBuffer, kCache: GPUBuffer, vCache: GPUBuffer, out: GPUBuffer, step: GPUBuffer): Dispatch | null {
  if (s.numHeads % s.numKvHeads !== 0) throw new Error(`attention: ${s.numHeads} heads are not a multiple of ${s.numKvHeads} KV heads`);
  if (!attentionTiledFits(s) || gpu.device.limits.maxComputeWorkgroupStorageSize < 16384) return null;
  const pipeline = gpu.pipeline('attention_tiled', { ...s, slidingWindow: s.slidingWindow ?? 0, ...kvDefines(kv) }, () => attentionTiledWgsl(s, kv));
  return {
    label: 'attention_tiled',
    pipeline,
    bindGroup: gpu.bindGroup('attention_tiled', pipeline, [qkv, kCache, vCache, out, step]),
    workgroups: (T: number) => [s.numHeads, Math.ceil(T / TILE_Q), 1],
  };
}

/**
 * Attention of a prompt's rows on the tensor cores (kernels/attention-tensor-core.ts: tiles of 64
 * queries x 32 keys, f16 operands, f32 sums) where device.ts's self-test of it passed; null elsewhere
 * (attentionTiledOp serves). Split over keys where the context has several splits (attentionSplitFor,
 * or `splitKeys` keys a split, 0 for none) and their partial results for maxTokens rows fit a binding:
 * then the kernel writes them to scratch buffers and attention_merge combines them into `out`.
 */
export function attentionTensorCoreOp(
  gpu: Gpu, s: AttentionShape, kv: KvLayout, qkv: GPUBuffer, kCache: GPUBuffer, vCache: GPUBuffer, out: GPUBuffer, step: GPUBuffer, maxTokens: number, splitKeys?: number,
): Dispatch[] | null {
  const f = gpu.features, asked = promptAttentionVariant(f);
  // 128 rows where the head dimension allows them (attentionRowsFit) and they fit the workgroup memory, else 64
  const limit = gpu.device.limits.maxComputeWorkgroupStorageSize;
  const take128 = asked.rows === 128 && attentionRowsFit(s, asked) && attentionTensorCoreBytes(s, asked.passes, asked.kvBuffers, 128) <= limit;
  const variant = { ...asked, rows: take128 ? (128 as const) : (64 as const) }, rows = variant.rows;
  if (asked.rows === 128 && !take128 && !f.attentionRows64) return null; // (the 64-row kernel failed its self-test here)
  if (!f.attentionTensorCore || !attentionTensorCoreFits(s) || attentionTensorCoreBytes(s, f.attentionPasses, f.attentionKvBuffers, rows) > limit) return null;
  if (s.numHeads % s.numKvHeads !== 0) throw new Error(`attention: ${s.numHeads} heads are not a multiple of ${s.numKvHeads} KV heads`);
  need(out, maxTokens * s.numHeads * s.headDim, 'attention output');
  const sg = gpu.features.subgroupMaxSize, indexing = gpu.features.subgroupMatrixIndexing ?? 'invocation-index', syntax = gpu.features.subgroupMatrixSyntax;
  let split = !gpu.features.attentionSplit || splitKeys === 0 ? null : splitKeys ? { keys: splitKeys, splits: Math.ceil(kv.contextLength / splitKeys) } : attentionSplitFor(s, kv.contextLength, maxTokens, gpu.maxBindingBytes, gpu.features.attentionSplits);
  if (split && (split.splits < 2 || attentionPartsBytes(s, split, maxTokens).o > gpu.maxBindingBytes)) split = null;
  const defines = { ...s, slidingWindow: s.slidingWindow ?? 0, ...kvDefines(kv), sg, indexing, syntax, splitKeys: split?.keys ?? 0, splits: split?.splits ?? 1, ...variant };
  const pipeline = gpu.pipeline('attention_tensor_core', defines, () => attentionTensorCoreWgsl(s, kv, sg, indexing, syntax, split, variant));
  if (!split) {
    return [{
      label: 'attention_tensor_core',
      pipeline,
      bindGroup: gpu.bindGroup('attention_tensor_core', pipeline, [qkv, kCache, vCache, out, step]),
      workgroups: (T: number) => [s.numHeads, Math.ceil(T / rows), 1],
    }];
  }
  // partial results: scratch every layer's attention shares (written and read within one dispatch pair)
  const bytes = attentionPartsBytes(s, split, maxTokens);
  const parts = gpu.scratch('attention_parts', bytes.o), ml = gpu.scratch('attention_ml', bytes.ml);
  const merge = gpu.pipeline('attention_merge', defines, () => attentionMergeWgsl(s, kv, split));
  const z = split.splits;
  return [
    {
      label: 'attention_tensor_core',
      pipeline,
      bindGroup: gpu.bindGroup('attention_tensor_core', pipeline, [qkv, kCache, vCache, parts, step, ml]),
      workgroups: (T: number) => [s.numHeads, Math.ceil(T / rows), z],
    },
    { label: 'attention_merge', pipeline: merge, bindGroup: gpu.bindGroup('attention_merge', merge, [parts, ml, out, step]), workgroups: (T: number) => grid(T * s.numHeads) },
  ];
}

/** SwiGLU; with `x16` the rows also as f16 (paddedCols(ffn) columns) for the tensor-core down product. */
export function swigluOp(gpu: Gpu, ffn: number, maxTokens: number, gateUp: GPUBuffer, out: GPUBuffer, step: GPUBuffer, x16?: GPUBuffer): Dispatch {
  need(gateUp, maxTokens * 2 * ffn, 'swiglu input');
  need(out, maxTokens * ffn, 'swiglu output');
  if (x16) {
    const cols = paddedCols(ffn);
    need(x16, (maxTokens * cols) / 2, 'swiglu f16 output');
    const fused = gpu.pipeline('swiglu_f16', { ffn, cols }, () => swigluF16Wgsl(ffn, cols));
    return {
      label: 'swiglu(f16 too)',
      pipeline: fused,
      bindGroup: gpu.bindGroup('swiglu_f16', fused, [gateUp, out, step, x16]),
      workgroups: (T: number) => grid(Math.ceil((T * cols) / 2 / 256)),
    };
  }
  const pipeline = gpu.pipeline('swiglu', { ffn }, () => swigluWgsl(ffn));
  return {
    label: 'swiglu',
    pipeline,
    bindGroup: gpu.bindGroup('swiglu', pipeline, [gateUp, out, step]),
    workgroups: (T: number) => grid(Math.ceil((T * ffn) / 256)),
  };
}

/** Argmax of logits row 0 into out[0]. */
export function argmaxOp(gpu: Gpu, vocab: number, logits: GPUBuffer, out: GPUBuffer): Dispatch {
  need(logits, vocab, 'argmax');
  const f = { subgroups: gpu.subgroups };
  const pipeline = gpu.pipeline('argmax', { vocab }, () => argmaxWgsl(vocab, f));
  return { label: 'argmax', pipeline, bindGroup: gpu.bindGroup('argmax', pipeline, [logits, out]), workgroups: () => [1, 1, 1] };
}

/** Temperature / top-k / min-p / top-p draw from logits row 0 into out[0]; parameters from the step. */
/** Masks one row of logits in place by a grammar's bitmask (kernels/token-mask.ts). */
export function tokenMaskOp(gpu: Gpu, vocab: number, logits: GPUBuffer, mask: GPUBuffer): Dispatch {
  need(logits, vocab, 'token_mask');
  const pipeline = gpu.pipeline('token_mask', { vocab }, () => tokenMaskWgsl(vocab, { subgroups: false }));
  return { label: 'token_mask', pipeline, bindGroup: gpu.bindGroup('token_mask', pipeline, [logits, mask]), workgroups: () => [Math.ceil(vocab / TOKEN_MASK_WG), 1, 1] };
}

/**
 * Token choice for each of the step's T rows of logits (workgroup i: row i, its sampling values in
 * params[8i + 2 ..], argmax at temperature 0) into out[i] (kernels/sample.ts, `rows`).
 */
export function chooseRowsOp(gpu: Gpu, vocab: number, maxRows: number, logits: GPUBuffer, out: GPUBuffer, params: GPUBuffer, parts: GPUBuffer): Dispatch[] {
  need(logits, maxRows * vocab, 'choose rows');
  need(params, maxRows * 8, 'choose rows parameters');
  need(parts, maxRows * ARGMAX_PARTS * 2, 'choose rows argmax parts');
  const f = { subgroups: gpu.subgroups };
  const first = gpu.pipeline('argmax_parts', { vocab }, () => argmaxPartsWgsl(vocab));
  const wg = sampleWorkgroupSize(gpu.device.limits);
  const pipeline = gpu.pipeline('sample', { vocab, rows: true, wg, ...f }, () => sampleWgsl(vocab, f, true, wg));
  return [
    { label: 'argmax_parts', pipeline: first, bindGroup: gpu.bindGroup('argmax_parts', first, [logits, parts]), workgroups: (T: number) => [ARGMAX_PARTS, T, 1] },
    { label: 'choose_rows', pipeline, bindGroup: gpu.bindGroup('sample', pipeline, [logits, out, params, parts]), workgroups: (T: number) => [T, 1, 1] },
  ];
}

/** The batched q4 kernel's work split (kernels/batched-matvec.ts BatchedMatvecShape). */
export interface BatchedMatvecSplit {
  /** Rows of x a pass over the weights. */
  nb: number;
  /** 'units': output rows a subgroup; 'rows': output rows a lane. */
  rps: number;
  /** 'rows' where the subgroups hold its sets of 8 lanes, else 'units'. */
  layout: 'units' | 'rows';
  /** 'rows': sets of 8 lanes on different rows a 32 lanes. */
  groups: number;
  /** 'rows': slices of the columns a workgroup (default 256 / (8 groups)) and units a lane loads at once (default 1). */
  slices?: number;
  unroll?: number;
}

export interface BatchedMatvecOptions extends BatchedMatvecSplit {
  activations: 'f32' | 'int8';
  /** x quantized by quantizeRowsOp ('int8'): (T, units, 2) vec4<u32> and (T, units) vec2<f32>. */
  xq?: GPUBuffer;
  xd?: GPUBuffer;
}

/**
 * y = W x for the step's T rows (a batched decode step), each q4 weight read once for `nb` rows:
 * kernels/batched-matvec.ts, one dispatch per row block of a matrix split across bindings. Null where
 * the kernel does not apply (not q4, no subgroups, groups or columns not whole units of 32).
 */
export function batchedMatvecOp(gpu: Gpu, m: GpuMatrix, io: MatmulIo, o: BatchedMatvecOptions): Dispatch[] | null {
  if (!gpu.subgroups || m.encoding !== 'q4' || gpu.device.limits.maxComputeInvocationsPerWorkgroup < BATCHED_WG) return null;
  if (m.rowBlocks) {
    const parts = m.rowBlocks.map((b) => batchedMatvecOp(gpu, b.matrix, { ...io, yOffset: io.yOffset + b.rowStart }, o));
    return parts.every((p) => p !== null) ? parts.flat() : null;
  }
  const q = m.shape;
  if (q.encoding !== 'q4' || q.wordsPerRow * 8 !== m.cols || !batchedMatvecApplies({ cols: m.cols, group: q.group, units: m.cols / 32 })) return null;
  if (io.yOffset + m.rows > io.yStride) throw new Error(`batched matvec: rows ${io.yOffset}..${io.yOffset + m.rows} exceed the output stride ${io.yStride}`);
  if (io.bias) need(io.bias, io.yOffset + m.rows, 'batched matvec bias');
  const shape: BatchedMatvecShape = {
    rows: m.rows, cols: m.cols, units: m.cols / 32, group: q.group, yStride: io.yStride, yOffset: io.yOffset, bias: io.bias !== null, residual: io.residual,
    activations: o.activations, nb: o.nb, rps: o.rps, groups: o.groups, slices: o.slices ?? BATCHED_WG / (8 * o.groups), unroll: o.unroll ?? 1,
    layout: 'units',
  };
  const rows: BatchedMatvecShape = { ...shape, layout: 'rows' };
  const fits = batchedRowsLayoutBytes(rows) <= gpu.device.limits.maxComputeWorkgroupStorageSize && batchedWorkgroupSize(rows) <= gpu.device.limits.maxComputeInvocationsPerWorkgroup;
  if (o.layout === 'rows' && batchedLayoutApplies(gpu.features) && fits) shape.layout = 'rows';
  const f = { packedDot: gpu.features.packed4x8IntegerDotProduct };
  const pipeline = gpu.pipeline('batched_matvec', { ...shape, ...f }, () => batchedMatvecWgsl(shape, f));
  const all: Record<string, GPUBuffer | null | undefined> = { Q: m.buffers[0], SM: m.buffers[1], X: io.x, XQ: o.xq, XD: o.xd, Y: io.y, STEP: io.step, BIAS: io.bias };
  const buffers = batchedBindings(shape).map((n) => {
    const b = all[n];
    if (!b) throw new Error(`batched matvec: no buffer for binding ${n}`);
    return b;
  });
  const n = batchedWorkgroups(shape);
  return [{ label: `batched_matvec_q4(${o.activations}, ${shape.layout})`, pipeline, bindGroup: gpu.bindGroup('batched_matvec', pipeline, buffers), workgroups: () => [n, 1, 1] }];
}

/** The split decode attention's merge of its chunks' records into att, a workgroup a (head, row). */
export function decodeCombineOp(gpu: Gpu, shape: SplitAttentionShape, part: GPUBuffer, att: GPUBuffer): Dispatch {
  const pipeline = gpu.pipeline('decode_attention_combine', { ...shape, slidingWindow: shape.slidingWindow ?? 0 }, () => decodeCombineWgsl(shape));
  return { label: 'attention_combine', pipeline, bindGroup: gpu.bindGroup('decode_attention_combine', pipeline, [part, att]), workgroups: (T: number) => [shape.numHeads, T, 1] };
}

/**
 * The step's T rows of x (cols floats each) as int8 blocks for batchedMatvecOp ('int8'); with
 * `gateUp`, x is first computed as SwiGLU of its rows (T, 2 cols) and stored (swiglu and quantize in one).
 */
export function quantizeRowsOp(gpu: Gpu, cols: number, maxRows: number, x: GPUBuffer, xq: GPUBuffer, xd: GPUBuffer, step: GPUBuffer, gateUp?: GPUBuffer, attention?: { records: GPUBuffer; shape: AttentionRecords }): Dispatch {
  if (cols % 32 !== 0) throw new Error(`quantize rows: ${cols} columns are not whole units of 32`);
  const units = cols / 32;
  need(x, maxRows * cols, 'quantize rows input');
  need(xq, maxRows * units * 8, 'quantize rows output');
  need(xd, maxRows * units * 2, 'quantize rows scales');
  if (gateUp) need(gateUp, maxRows * 2 * cols, 'swiglu quantize input');
  const f = { packedDot: gpu.features.packed4x8IntegerDotProduct };
  if (attention) need(attention.records, maxRows * attention.shape.numHeads * attention.shape.splits * (attention.shape.headDim + 2), 'attention records');
  const source = gateUp ? 'swiglu' : attention ? 'combine' : 'plain';
  const records = attention ? { numHeads: attention.shape.numHeads, headDim: attention.shape.headDim, splits: attention.shape.splits } : undefined;
  const pipeline = gpu.pipeline('quantize_rows', { units, source, ...records, ...f }, () => quantizeRowsWgsl(units, f, source, records));
  return {
    label: `${source === 'plain' ? '' : source === 'swiglu' ? 'swiglu_' : 'attention_combine_'}quantize_rows`, pipeline,
    bindGroup: gpu.bindGroup('quantize_rows', pipeline, [x, xq, xd, step, ...(gateUp ? [gateUp] : attention ? [attention.records] : [])]),
    workgroups: (T: number) => grid(Math.ceil((T * units) / 64)),
  };
}

/** RMSNorm of the step's T rows into xn and their int8 blocks for batchedMatvecOp in one dispatch (a workgroup a row). */
export function normQuantizeRowsOp(gpu: Gpu, hidden: number, eps: number, maxRows: number, x: GPUBuffer, w: GPUBuffer, xn: GPUBuffer, xq: GPUBuffer, xd: GPUBuffer, step: GPUBuffer): Dispatch {
  if (hidden % 32 !== 0) throw new Error(`norm quantize rows: ${hidden} columns are not whole units of 32`);
  const units = hidden / 32;
  need(w, hidden, 'norm quantize weight');
  need(x, maxRows * hidden, 'norm quantize input');
  need(xn, maxRows * hidden, 'norm quantize output');
  need(xq, maxRows * units * 8, 'norm quantize int8 output');
  need(xd, maxRows * units * 2, 'norm quantize scales');
  const f = { packedDot: gpu.features.packed4x8IntegerDotProduct, subgroups: gpu.subgroups };
  const pipeline = gpu.pipeline('norm_quantize_rows', { units, eps, ...f }, () => normQuantizeRowsWgsl(units, f32Literal(eps), f));
  return { label: 'rmsnorm_quantize_rows', pipeline, bindGroup: gpu.bindGroup('norm_quantize_rows', pipeline, [x, w, xn, xq, xd, step]), workgroups: grid };
}

export function sampleOp(gpu: Gpu, vocab: number, logits: GPUBuffer, out: GPUBuffer, step: GPUBuffer): Dispatch {
  need(logits, vocab, 'sample');
  const f = { subgroups: gpu.subgroups };
  const wg = sampleWorkgroupSize(gpu.device.limits);
  const pipeline = gpu.pipeline('sample', { vocab, wg, ...f }, () => sampleWgsl(vocab, f, false, wg));
  return { label: 'sample', pipeline, bindGroup: gpu.bindGroup('sample', pipeline, [logits, out, step]), workgroups: () => [1, 1, 1] };
}
