/**
 * GPU test setup: one shared device per test file, or a clear failure when there is none
 * (set PDVM_SKIP_GPU_TESTS=1 to skip instead). Plus small helpers to upload arrays and run dispatches.
 */
import { Gpu, type GpuOptions } from '../../../src/backends/webgpu/device.js';
import { encodeDispatches, STEP_HEADER_WORDS, type Dispatch } from '../../../src/backends/webgpu/dispatch.js';

export const SKIP_GPU = process.env.PDVM_SKIP_GPU_TESTS === '1';

const devices = new Map<string, Promise<Gpu>>();

/** A device for these options, shared within the test file. */
export function testGpu(options: GpuOptions = {}): Promise<Gpu> {
  const key = JSON.stringify(options);
  let g = devices.get(key);
  if (!g) {
    g = Gpu.acquire(options).catch((e: Error) => {
      throw new Error(
        `no WebGPU device for the GPU tests: ${e.message}\n` +
          'Install Mesa lavapipe with `sudo scripts/install-vulkan.sh` (Debian bookworm), or set PDVM_SKIP_GPU_TESTS=1 to skip these tests.',
      );
    });
    devices.set(key, g);
  }
  return g;
}

/** Both reduction paths where the adapter has subgroups; only the plain one where it has not. */
export async function featureVariants(): Promise<{ name: string; options: GpuOptions }[]> {
  const plain = { name: 'no subgroups', options: { disableSubgroups: true } };
  const g = await testGpu();
  return g.subgroups ? [{ name: 'subgroups', options: {} }, plain] : [plain];
}

export function storage(gpu: Gpu, data: Float32Array | Uint32Array, label = 'test'): GPUBuffer {
  const b = gpu.createBuffer(label, data.byteLength, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST, true);
  new (data instanceof Float32Array ? Float32Array : Uint32Array)(b.getMappedRange(), 0, data.length).set(data as never);
  b.unmap();
  return b;
}

export function zeros(gpu: Gpu, floats: number, label = 'test'): GPUBuffer {
  return gpu.createBuffer(label, floats * 4, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST);
}

/** A step buffer: T, pos0, then the token ids. */
export function stepBuffer(gpu: Gpu, T: number, pos0: number, ids: number[] = [], header: Partial<Record<number, number>> = {}): GPUBuffer {
  const words = new Uint32Array(STEP_HEADER_WORDS + Math.max(T, ids.length));
  const floats = new Float32Array(words.buffer);
  words[0] = T;
  words[1] = pos0;
  for (const [k, v] of Object.entries(header)) {
    if (Number(k) === 3) words[3] = v!;
    else floats[Number(k)] = v!;
  }
  words.set(ids, STEP_HEADER_WORDS);
  return storage(gpu, words, 'step');
}

export async function run(gpu: Gpu, dispatches: Dispatch[], T: number): Promise<void> {
  const enc = gpu.device.createCommandEncoder();
  const pass = enc.beginComputePass();
  encodeDispatches(pass, dispatches, T);
  pass.end();
  gpu.device.queue.submit([enc.finish()]);
  await gpu.device.queue.onSubmittedWorkDone();
  gpu.check();
}

export async function read(gpu: Gpu, buffer: GPUBuffer, floats: number): Promise<Float32Array> {
  const staging = gpu.device.createBuffer({ size: floats * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = gpu.device.createCommandEncoder();
  enc.copyBufferToBuffer(buffer, 0, staging, 0, floats * 4);
  gpu.device.queue.submit([enc.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  const out = new Float32Array(staging.getMappedRange().slice(0));
  staging.unmap();
  staging.destroy();
  gpu.check();
  return out;
}

export async function readU32(gpu: Gpu, buffer: GPUBuffer, words: number): Promise<Uint32Array> {
  const f = await read(gpu, buffer, words);
  return new Uint32Array(f.buffer);
}

/**
 * The kernel with every subgroup-matrix type and builtin replaced by f32 arithmetic on the same
 * operands: the rest of a tensor-core kernel checked by Tint, or run, where no GPU has them.
 */
export function withScalarStandIns(code: string): string {
  return code
    .replace('enable chromium_experimental_subgroup_matrix;\n', '')
    .replace('requires subgroup_id;\n', '')
    .replace(', @builtin(subgroup_id) sg_id: u32, @builtin(subgroup_invocation_id) sg_lane: u32', '')
    .replace(/\bsg_id\b/g, '0u')
    .replace(/\bsg_lane\b/g, '0u')
    .replace(/subgroup_matrix_result<f32, 16, 16>\(\)/g, 'f32()')
    .replace(/subgroupMatrixLoad<subgroup_matrix_\w+<\w+, 16, 16>, (?:row|col)_major>\((&?\w+(?:\[[^\]]*\])?), ([^,]*), ([^,()]+)\)/g, 'f32((*$1)[$2]) + f32($3)')
    .replace(/subgroupMatrixMultiplyAccumulate\((\w+), (.*), (\w+)\)/g, '$3 + $1 * ($2)')
    .replace(/subgroupMatrixStore<(?:row|col)_major>\((&?\w+(?:\[[^\]]*\])?), (.*), (\w+), ([^,()]+)\)/g, '(*$1)[$2] = $3 + f32($4)');
}
