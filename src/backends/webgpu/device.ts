/**
 * Device acquisition for Node (Dawn through the `webgpu` package, loaded dynamically) and browsers
 * (`navigator.gpu`), plus what every kernel needs from the device: the features in use, the limits,
 * a pipeline cache, allocation with out-of-memory checks, and device-loss tracking.
 * Nothing here imports a Node module.
 */
import { DeviceLostError, GpuOutOfMemoryError, GpuValidationError, WebGpuUnavailableError } from './errors.js';

export interface GpuOptions {
  /** Ignore the `subgroups` feature even where present (tests run both paths). */
  disableSubgroups?: boolean;
  /** Split tensors at this many bytes instead of the device's maxStorageBufferBindingSize (tests). */
  maxBindingBytes?: number;
  powerPreference?: GPUPowerPreference;
}

function isNode(): boolean {
  const p = (globalThis as { process?: { versions?: { node?: string } } }).process;
  return typeof p?.versions?.node === 'string';
}

/** `navigator.gpu` in a browser or worker, Dawn's entry point in Node, or null. */
async function gpuEntryPoint(): Promise<GPU | null> {
  const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
  if (nav?.gpu) return nav.gpu;
  if (isNode()) {
    const { nodeGpuEntryPoint } = await import('./node-gpu.js');
    return nodeGpuEntryPoint();
  }
  return null;
}

/** Why WebGPU cannot be used here, as one line; null when an adapter exists. */
export async function probeWebGpu(): Promise<string | null> {
  try {
    const gpu = await gpuEntryPoint();
    if (!gpu) return 'this runtime has no WebGPU (no navigator.gpu)';
    const adapter = await gpu.requestAdapter();
    if (!adapter) return 'no WebGPU adapter was found (on a machine without a GPU, run scripts/install-vulkan.sh to install Mesa lavapipe)';
    return null;
  } catch (e) {
    return `WebGPU failed to start: ${(e as Error).message}`;
  }
}

/**
 * The adapter's description when the only WebGPU adapter is a software one (Mesa lavapipe/llvmpipe,
 * SwiftShader): WebGPU works there, but the CPU backend is faster. Null for hardware or no adapter.
 */
export async function softwareAdapter(): Promise<string | null> {
  try {
    const gpu = await gpuEntryPoint();
    const adapter = await gpu?.requestAdapter({ powerPreference: 'high-performance' });
    if (!adapter) return null;
    const info = adapter.info as GPUAdapterInfo & { isFallbackAdapter?: boolean };
    const software = info.isFallbackAdapter === true || info.architecture === 'software' || /llvmpipe|lavapipe|swiftshader/i.test(`${info.device} ${info.description}`);
    return software ? info.description || info.device || 'a software adapter' : null;
  } catch {
    return null;
  }
}

/** A device plus what the backend derives from it. One per engine. */
export class Gpu {
  /** Set once the device is lost; every later call throws. */
  private lost: GPUDeviceLostInfo | null = null;
  private firstError: GPUError | null = null;
  private readonly pipelines = new Map<string, GPUComputePipeline>();
  private readonly modules = new Map<string, GPUShaderModule>();
  /** Largest byte size a storage binding may have (tensors above it are split). */
  readonly maxBindingBytes: number;

  private constructor(
    readonly device: GPUDevice,
    readonly adapterDescription: string,
    /** Kernels use subgroup reductions. */
    readonly subgroups: boolean,
    options: GpuOptions,
  ) {
    const limit = device.limits.maxStorageBufferBindingSize;
    this.maxBindingBytes = Math.min(limit, options.maxBindingBytes ?? limit) & ~15;
    void device.lost.then((info) => {
      this.lost = info;
    });
    device.addEventListener('uncapturederror', (ev) => {
      this.firstError ??= (ev as GPUUncapturedErrorEvent).error;
    });
  }

  static async acquire(options: GpuOptions = {}): Promise<Gpu> {
    const gpu = await gpuEntryPoint();
    if (!gpu) throw new WebGpuUnavailableError('this runtime has no WebGPU (no navigator.gpu); use --backend cpu');
    const adapter = await gpu.requestAdapter({ powerPreference: options.powerPreference ?? 'high-performance' });
    if (!adapter) {
      throw new WebGpuUnavailableError(
        'no WebGPU adapter was found; on a machine without a GPU run scripts/install-vulkan.sh (Mesa lavapipe), or use --backend cpu',
      );
    }
    const subgroups = adapter.features.has('subgroups') && !options.disableSubgroups;
    const a = adapter.limits;
    const device = await adapter.requestDevice({
      requiredFeatures: subgroups ? ['subgroups' as GPUFeatureName] : [],
      requiredLimits: {
        maxStorageBufferBindingSize: a.maxStorageBufferBindingSize,
        maxBufferSize: a.maxBufferSize,
        maxStorageBuffersPerShaderStage: a.maxStorageBuffersPerShaderStage,
        maxComputeWorkgroupStorageSize: a.maxComputeWorkgroupStorageSize,
        maxComputeInvocationsPerWorkgroup: a.maxComputeInvocationsPerWorkgroup,
        maxComputeWorkgroupSizeX: a.maxComputeWorkgroupSizeX,
      },
    });
    const info = adapter.info;
    const description = [info.vendor, info.architecture, info.device, info.description].filter((s) => s).join(' ') || 'unknown adapter';
    return new Gpu(device, description, subgroups, options);
  }

  /** Throws if the device was lost or a GPU error was raised since the last check. */
  check(): void {
    if (this.lost) throw new DeviceLostError(this.lost.reason, this.lost.message);
    if (this.firstError) {
      const e = this.firstError;
      this.firstError = null;
      if (e instanceof GPUOutOfMemoryError) throw new GpuOutOfMemoryError(`the GPU ran out of memory: ${e.message}`);
      throw new GpuValidationError(`GPU error (a bug in pdvm; please report it): ${e.message}`);
    }
  }

  /**
   * Runs allocations and turns an out-of-memory or validation error among them into a typed error.
   * `what` names the allocation for the message ("model weights (1.2 GB) and KV cache (...)").
   */
  async allocating<R>(what: string, hint: string, fn: () => R): Promise<R> {
    this.check();
    this.device.pushErrorScope('validation');
    this.device.pushErrorScope('out-of-memory');
    let result: R;
    try {
      result = fn();
    } finally {
      const oom = await this.device.popErrorScope();
      const invalid = await this.device.popErrorScope();
      if (oom) throw new GpuOutOfMemoryError(`the GPU cannot hold ${what}: ${oom.message}. ${hint}`);
      if (invalid) throw new GpuValidationError(`allocating ${what} failed: ${invalid.message}. ${hint}`);
    }
    return result;
  }

  createBuffer(label: string, size: number, usage: GPUBufferUsageFlags, mappedAtCreation = false): GPUBuffer {
    const bytes = Math.max(16, Math.ceil(size / 16) * 16);
    if (bytes > this.device.limits.maxBufferSize) {
      throw new GpuOutOfMemoryError(`${label} needs ${bytes} bytes, over this device's maxBufferSize ${this.device.limits.maxBufferSize}`);
    }
    return this.device.createBuffer({ label, size: bytes, usage, mappedAtCreation });
  }

  /**
   * A compute pipeline, cached under `name|sorted defines`: kernels are specialised by a small closed
   * set of defines (shapes, dtype, features) that `source` turns into WGSL.
   */
  pipeline(name: string, defines: Record<string, string | number | boolean>, source: () => string): GPUComputePipeline {
    const key = `${name}|main|${Object.keys(defines).sort().map((k) => `${k}=${defines[k]}`).join(',')}`;
    let p = this.pipelines.get(key);
    if (!p) {
      const code = source();
      let module = this.modules.get(code);
      if (!module) {
        module = this.device.createShaderModule({ label: key, code });
        this.modules.set(code, module);
      }
      p = this.device.createComputePipeline({ label: key, layout: 'auto', compute: { module, entryPoint: 'main' } });
      this.pipelines.set(key, p);
    }
    return p;
  }

  bindGroup(label: string, pipeline: GPUComputePipeline, buffers: GPUBuffer[]): GPUBindGroup {
    return this.device.createBindGroup({
      label,
      layout: pipeline.getBindGroupLayout(0),
      entries: buffers.map((buffer, binding) => ({ binding, resource: { buffer } })),
    });
  }

  get pipelineCount(): number {
    return this.pipelines.size;
  }

  destroy(): void {
    this.device.destroy();
  }
}
