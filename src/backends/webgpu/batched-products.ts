/**
 * The batched step's products on the tensor cores (kernels/batched-tensor-core.ts): the dispatches
 * (f16 rows of x, then the q4 products), the stage split chosen per matrix shape and the device's
 * limits, and the self-test that must pass before the engine uses them.
 */
import type { Gpu } from './device.js';
import type { Dispatch } from './dispatch.js';
import type { MatmulIo } from './ops.js';
import type { GpuMatrix } from './weights.js';
import {
  batchedTensorCoreApplies, batchedTensorCoreBindings, batchedTensorCoreBytes, batchedTensorCoreWgsl, TC_ROWS, TC_TOKENS, x16Cols, x16RowsWgsl,
  type BatchedTensorCoreShape,
} from './kernels/batched-tensor-core.js';
import { f32Literal, grid } from './kernels/prelude.js';
import { selfTestKit } from './self-test.js';

/** How the stages of a product are split: KS columns a stage; NSG subgroups a workgroup until the dispatch has about `warps` subgroups. */
export interface TensorCoreSplit {
  ks: number;
  warps: number;
  /** Stages loaded ahead (1 or 2). */
  depth?: number;
  /** Timing only (BatchedTensorCoreShape.lab): wrong results. */
  lab?: 'no-dequant' | 'no-x-loads';
}

function env(name: string): string | undefined {
  return (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env?.[name];
}

/** The default split (PDVM_TC_KS, PDVM_TC_WARPS in the environment for measuring others). */
export function defaultTensorCoreSplit(): TensorCoreSplit {
  return { ks: Number(env('PDVM_TC_KS') ?? 64), warps: Number(env('PDVM_TC_WARPS') ?? 2048), depth: Number(env('PDVM_TC_DEPTH') ?? 1) };
}

/** Why the tensor-core products cannot run on this device, or null when they can (before the self-test). */
export function tensorCoreProductsUnavailable(gpu: Gpu): string | null {
  const f = gpu.features;
  if (!f.subgroupMatrixF16 || !f.subgroupMatrixIndexing) return 'no self-tested f16 subgroup matrices';
  if (!f.shaderF16) return 'no shader-f16';
  if (!(f.subgroupMinSize > 0 && f.subgroupMinSize === f.subgroupMaxSize)) return 'the subgroup size is not fixed';
  if (f.subgroupMaxSize % 4 !== 0 || f.subgroupMaxSize > 128) return `subgroup size ${f.subgroupMaxSize}`;
  return null;
}

/** Subgroups a workgroup and columns a stage for a matrix, within the device's workgroup memory and invocations. */
export function tensorCoreStages(gpu: Gpu, rows: number, cols: number, split: TensorCoreSplit): { ks: number; nsg: number } {
  const limits = gpu.device.limits, sg = gpu.features.subgroupMaxSize;
  const fits = (ks: number, nsg: number) => batchedTensorCoreBytes({ ks, nsg }) <= limits.maxComputeWorkgroupStorageSize && nsg * sg <= limits.maxComputeInvocationsPerWorkgroup;
  // a load instruction's lanes take whole units of whole rows (sg a multiple of 4 KS / 32)
  let ks = Math.min(256, split.ks);
  while (ks > 32 && (!fits(ks, 1) || sg % ((4 * ks) / 32) !== 0)) ks /= 2;
  const blocks = Math.ceil(rows / TC_ROWS), stages = Math.ceil(cols / ks);
  let nsg = 1;
  while (nsg < 8 && blocks * nsg < split.warps && stages >= 2 * nsg && fits(ks, 2 * nsg)) nsg *= 2;
  return { ks, nsg };
}

/**
 * y = W x for the step's rows through the tensor-core kernel, x read from `x16` (written by the
 * x16 dispatch before it); null where the kernel does not take this matrix (not q4, or not whole units).
 */
export function batchedTensorCoreOp(gpu: Gpu, m: GpuMatrix, io: MatmulIo, o: { x16: GPUBuffer; split: TensorCoreSplit }): Dispatch[] | null {
  if (m.encoding !== 'q4' || tensorCoreProductsUnavailable(gpu)) return null;
  if (m.rowBlocks) {
    const parts = m.rowBlocks.map((b) => batchedTensorCoreOp(gpu, b.matrix, { ...io, yOffset: io.yOffset + b.rowStart }, o));
    return parts.every((p) => p !== null) ? parts.flat() : null;
  }
  const q = m.shape;
  if (q.encoding !== 'q4' || q.wordsPerRow * 8 !== m.cols || !batchedTensorCoreApplies({ cols: m.cols, group: q.group, units: m.cols / 32 })) return null;
  if (io.yOffset + m.rows > io.yStride) throw new Error(`batched tensor-core product: rows ${io.yOffset}..${io.yOffset + m.rows} exceed the output stride ${io.yStride}`);
  const { ks, nsg } = tensorCoreStages(gpu, m.rows, m.cols, o.split);
  const depth = o.split.depth === 2 ? 2 : 1;
  const shape: BatchedTensorCoreShape = { rows: m.rows, cols: m.cols, units: m.cols / 32, group: q.group, yStride: io.yStride, yOffset: io.yOffset, bias: io.bias !== null, residual: io.residual, ks, nsg, depth, ...(o.split.lab ? { lab: o.split.lab } : {}) };
  const f = gpu.features;
  const pipeline = gpu.pipeline('batched_tensor_core', { ...shape, sg: f.subgroupMaxSize, indexing: f.subgroupMatrixIndexing!, syntax: f.subgroupMatrixSyntax }, () =>
    batchedTensorCoreWgsl(shape, f.subgroupMaxSize, f.subgroupMatrixIndexing!, f.subgroupMatrixSyntax));
  const all: Record<string, GPUBuffer | null> = { Q: m.buffers[0]!, SM: m.buffers[1]!, X16: o.x16, Y: io.y, STEP: io.step, BIAS: io.bias };
  const buffers = batchedTensorCoreBindings(shape).map((n) => all[n]!);
  const n = Math.ceil(m.rows / TC_ROWS);
  return [{ label: `batched_tensor_core_q4(ks ${ks}, nsg ${nsg}, depth ${depth}${shape.lab ? `, ${shape.lab}` : ''})`, pipeline, bindGroup: gpu.bindGroup('batched_tensor_core', pipeline, buffers), workgroups: () => grid(n) }];
}

/** Bytes of the x16 rows for up to maxRows rows of at most `cols` columns (whole passes of 32 rows). */
export function x16Bytes(maxRows: number, cols: number): number {
  return Math.ceil(maxRows / TC_TOKENS) * TC_TOKENS * x16Cols(cols) * 2;
}

/** The step's rows of x (cols f32 each) as the products' f16 rows. */
export function x16Op(gpu: Gpu, cols: number, x: GPUBuffer, x16: GPUBuffer, step: GPUBuffer): Dispatch {
  const pipeline = gpu.pipeline('x16_rows', { cols, source: 'plain' }, () => x16RowsWgsl(cols, 'plain', { subgroups: false }));
  const words = x16Cols(cols) / 8;
  return { label: 'x16_rows', pipeline, bindGroup: gpu.bindGroup('x16_rows', pipeline, [x, x16, step]), workgroups: (T) => grid(Math.ceil((T * words) / 64)) };
}

/** SwiGLU of the step's gate_up rows into `act` and the products' f16 rows in one dispatch. */
export function swigluX16Op(gpu: Gpu, cols: number, gateUp: GPUBuffer, act: GPUBuffer, x16: GPUBuffer, step: GPUBuffer): Dispatch {
  const pipeline = gpu.pipeline('x16_rows', { cols, source: 'swiglu' }, () => x16RowsWgsl(cols, 'swiglu', { subgroups: false }));
  const words = x16Cols(cols) / 8;
  return { label: 'swiglu_x16_rows', pipeline, bindGroup: gpu.bindGroup('swiglu_x16_rows', pipeline, [act, x16, step, gateUp]), workgroups: (T) => grid(Math.ceil((T * words) / 64)) };
}

/** RMSNorm of the step's rows into xn and the products' f16 rows in one dispatch (a workgroup a row). */
export function normX16Op(gpu: Gpu, hidden: number, eps: number, x: GPUBuffer, w: GPUBuffer, xn: GPUBuffer, x16: GPUBuffer, step: GPUBuffer): Dispatch {
  const f = { subgroups: gpu.subgroups };
  const pipeline = gpu.pipeline('x16_rows', { cols: hidden, source: 'norm', eps, ...f }, () => x16RowsWgsl(hidden, 'norm', f, f32Literal(eps)));
  return { label: 'rmsnorm_x16_rows', pipeline, bindGroup: gpu.bindGroup('rmsnorm_x16_rows', pipeline, [x, w, xn, x16, step]), workgroups: grid };
}

/**
 * The tensor-core products on a small q4 product whose answer is exact (nibble - 2 weights, small
 * integer x, bias and residual): 48 rows (a partial block), 192 columns (stages past the last
 * column), 37 tokens (two passes, partial token tiles), in each of several stage splits that fit
 * the device; compiled, run and compared element by element. 'passed' or why not.
 */
export async function selfTestBatchedTensorCore(gpu: Gpu): Promise<string> {
  const why = tensorCoreProductsUnavailable(gpu);
  if (why) return `not run: ${why}`;
  const device = gpu.device, f = gpu.features;
  const T = 37, rows = 48, cols = 192, group = 64, units = cols / 32, groups = cols / group;
  const q = new Uint32Array(rows * units * 4), sm = new Uint32Array(rows * groups), x = new Float32Array(T * cols);
  const bias = new Float32Array(rows + 3), y0 = new Float32Array(T * (rows + 3));
  for (let i = 0; i < q.length; i++) q[i] = (Math.imul(i + 1, 2654435761) >>> 0) ^ (i * 40503);
  sm.fill(0x3c00 | (0xc000 << 16)); // scale 1, min -2 (f16)
  for (let i = 0; i < x.length; i++) x[i] = ((i * 5) % 7) - 3;
  for (let i = 0; i < bias.length; i++) bias[i] = (i % 5) - 2;
  for (let i = 0; i < y0.length; i++) y0[i] = (i % 3) - 1;
  const yStride = rows + 3, yOffset = 2;
  const want = Float32Array.from(y0);
  for (let t = 0; t < T; t++) for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let c = 0; c < cols; c++) {
      const word = q[(r * units + (c >> 5)) * 4 + ((c & 31) >> 3)]!;
      s += (((word >>> (4 * (c & 7))) & 15) - 2) * x[t * cols + c]!;
    }
    const o = t * yStride + yOffset + r;
    want[o] = s + bias[yOffset + r]! + y0[o]!;
  }
  const { storage, compile, bind, submitAndRead, destroy } = selfTestKit(device);
  device.pushErrorScope('validation');
  try {
    const qb = storage(q), smb = storage(sm), xb = storage(x), biasb = storage(bias), step = storage(new Uint32Array([T, 0, 0, 0]));
    const x16 = storage(x16Bytes(T, cols));
    const convert = await compile('self-test x16 rows', x16RowsWgsl(cols, 'plain', { subgroups: false }));
    const limits = device.limits;
    const splits = [{ ks: 64, nsg: 1 }, { ks: 64, nsg: 2, depth: 2 }, { ks: 128, nsg: 1, depth: 2 }, { ks: 64, nsg: 4 }, { ks: 32, nsg: 8, depth: 2 }, { ks: 64, nsg: 8 }]
      .filter((s) => batchedTensorCoreBytes(s) <= limits.maxComputeWorkgroupStorageSize && s.nsg * f.subgroupMaxSize <= limits.maxComputeInvocationsPerWorkgroup && f.subgroupMaxSize % ((4 * s.ks) / 32) === 0);
    for (const split of splits) {
      const shape: BatchedTensorCoreShape = { rows, cols, units, group, yStride, yOffset, bias: true, residual: true, ...split };
      const pipeline = await compile(`self-test batched tensor core ks ${split.ks} nsg ${split.nsg}`, batchedTensorCoreWgsl(shape, f.subgroupMaxSize, f.subgroupMatrixIndexing!, f.subgroupMatrixSyntax));
      const y = storage(y0, GPUBufferUsage.COPY_SRC);
      const enc = device.createCommandEncoder();
      const pass = enc.beginComputePass();
      pass.setPipeline(convert);
      pass.setBindGroup(0, bind(convert, [xb, x16, step]));
      pass.dispatchWorkgroups(Math.ceil((T * x16Cols(cols)) / 8 / 64));
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, bind(pipeline, [qb, smb, x16, y, step, biasb]));
      pass.dispatchWorkgroups(Math.ceil(rows / TC_ROWS));
      pass.end();
      const got = await submitAndRead(enc, y, y0.byteLength);
      for (let i = 0; i < want.length; i++) {
        if (got[i] !== want[i]) return `failed: element ${i} is ${got[i]}, the known answer ${want[i]} (ks ${split.ks}, nsg ${split.nsg})`;
      }
    }
    return splits.length ? 'passed' : 'not run: no stage split fits the device';
  } catch (e) {
    return `failed: ${(e as Error).message.slice(0, 300)}`;
  } finally {
    const err = await device.popErrorScope().catch(() => null);
    destroy();
    if (err) return `failed: ${err.message.slice(0, 300)}`;
  }
}
