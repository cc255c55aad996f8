/**
 * The device's read bandwidth, measured in the same run as a benchmark: a buffer (1 GiB by default)
 * filled with non-zero words, read whole by a kernel of vec4<u32> loads (grid-stride, coalesced), the
 * XOR of what it read kept live by a store nobody reads. Each timing is `repeats` dispatches in one
 * submit; the result is the median over `runs` timings. Bytes / second counts reads only.
 */
import type { Gpu } from '../backends/webgpu/device.js';

const WG = 256;

/** Reads vec4s vec4<u32> with `threads` invocations (grid-stride, 4 loads in flight), XOR kept live by a store nobody reads. */
export function readKernel(vec4s: number, threads: number): string {
  return `
@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> sink: array<u32>;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  var acc = vec4<u32>(0u);
  // hot loop: 4 independent loads in flight per iteration
  var i = gid.x;
  for (; i + ${3 * threads}u < ${vec4s}u; i += ${4 * threads}u) {
    acc ^= src[i] ^ src[i + ${threads}u] ^ src[i + ${2 * threads}u] ^ src[i + ${3 * threads}u];
  }
  for (; i < ${vec4s}u; i += ${threads}u) { acc ^= src[i]; }
  let v = acc.x ^ acc.y ^ acc.z ^ acc.w;
  if (v == 0x9e3779b9u) { sink[gid.x] = v; }
}`;
}

/** Fills `words` u32 with a non-zero hash of the index. */
export function fillKernel(words: number): string {
  return `
@group(0) @binding(0) var<storage, read_write> dst: array<u32>;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  for (var i = gid.x; i < ${words}u; i += nwg.x * ${WG}u) { dst[i] = (i * 2654435761u) ^ 0x5bd1e995u; }
}`;
}

export interface BandwidthResult {
  bytes: number;
  medianGbps: number;
  samplesGbps: number[];
}

export async function measureReadBandwidth(gpu: Gpu, options: { bytes?: number; runs?: number; repeats?: number } = {}): Promise<BandwidthResult> {
  const bytes = Math.min(options.bytes ?? 1 << 30, gpu.maxBindingBytes) & ~15;
  const runs = options.runs ?? 7, repeats = options.repeats ?? 10;
  const vec4s = bytes / 16;
  const workgroups = Math.min(65535, Math.max(1, Math.ceil(vec4s / WG / 16)));
  const threads = workgroups * WG;
  const device = gpu.device;
  const src = gpu.createBuffer('bandwidth.src', bytes, GPUBufferUsage.STORAGE);
  const sink = gpu.createBuffer('bandwidth.sink', threads * 4, GPUBufferUsage.STORAGE);
  try {
    const fill = device.createComputePipeline({ layout: 'auto', compute: { module: device.createShaderModule({ code: fillKernel(bytes / 4) }), entryPoint: 'main' } });
    const read = device.createComputePipeline({ layout: 'auto', compute: { module: device.createShaderModule({ code: readKernel(vec4s, threads) }), entryPoint: 'main' } });
    const fillGroup = device.createBindGroup({ layout: fill.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: src } }] });
    const readGroup = device.createBindGroup({
      layout: read.getBindGroupLayout(0),
      entries: [{ binding: 0, resource: { buffer: src } }, { binding: 1, resource: { buffer: sink } }],
    });
    const submit = (pipeline: GPUComputePipeline, group: GPUBindGroup, n: number, wgs: number) => {
      const enc = device.createCommandEncoder();
      const pass = enc.beginComputePass();
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, group);
      for (let i = 0; i < n; i++) pass.dispatchWorkgroups(wgs);
      pass.end();
      device.queue.submit([enc.finish()]);
      return device.queue.onSubmittedWorkDone();
    };
    await submit(fill, fillGroup, 1, 4096);
    await submit(read, readGroup, 2, workgroups); // warm-up
    const samples: number[] = [];
    for (let r = 0; r < runs; r++) {
      const t0 = performance.now();
      await submit(read, readGroup, repeats, workgroups);
      const seconds = (performance.now() - t0) / 1000;
      samples.push((bytes * repeats) / seconds / 1e9);
    }
    gpu.check();
    const sorted = [...samples].sort((a, b) => a - b);
    return { bytes, medianGbps: sorted[Math.floor(sorted.length / 2)]!, samplesGbps: samples };
  } finally {
    src.destroy();
    sink.destroy();
  }
}
