/**
 * Backend selection: `createEngine(model, { backend, contextLength })`.
 * 'auto' takes WebGPU when a hardware adapter exists (and can hold the model), else the CPU with a
 * one-line notice saying why, which the caller prints.
 */
import type { LoadedModel } from '../model/load.js';
import type { Engine } from '../runtime/engine.js';
import { CpuEngine } from './cpu/engine.js';
import { materializeWeights } from '../model/lazy.js';
import { WebGpuEngine, type WebGpuEngineOptions } from './webgpu/engine.js';
import { GpuOutOfMemoryError, WebGpuUnavailableError } from './webgpu/errors.js';
import { softwareAdapter } from './webgpu/device.js';

export interface EngineOptions {
  backend: 'cpu' | 'webgpu' | 'auto';
  contextLength: number;
  /**
   * WebGPU only: 'fused' (default) decodes generations through the fused path (tokens chosen on the
   * GPU, one submit per token), 'unfused' through forward() and CPU sampling. The CPU backend always
   * decodes through forward().
   */
  decode?: 'fused' | 'unfused';
  /** WebGPU only: the KV cache's storage, 'f16' (default) or 'f32' (docs/KV-CACHE.md). */
  kvCache?: 'f16' | 'f32';
  /** WebGPU only: tokens per prefill step, subgroup use, load progress... */
  webgpu?: Omit<WebGpuEngineOptions, 'contextLength'>;
}

/** Returns the engine and, when `auto` or the fused decode path fell back, a one-line notice saying why. */
export async function createEngine(model: Pick<LoadedModel, 'config' | 'weights'>, options: EngineOptions): Promise<{ engine: Engine; notice?: string }> {
  // the CPU multiplies from host memory: lazy weights (model/lazy.ts) are read in whole here
  const cpu = async () => new CpuEngine(model.config, await materializeWeights(model.weights), options.contextLength);
  if (options.backend === 'cpu') return { engine: await cpu() };
  if (options.backend === 'auto') {
    const software = await softwareAdapter();
    if (software) return { engine: await cpu(), notice: `using the CPU backend: the only WebGPU adapter is a software one (${software}), slower than the CPU; asking for backend: 'webgpu' uses it anyway` };
  }
  try {
    const engine = await WebGpuEngine.create(model, { decode: options.decode, kvCache: options.kvCache, ...options.webgpu, contextLength: options.contextLength });
    return engine.decodeNotice ? { engine, notice: engine.decodeNotice } : { engine };
  } catch (e) {
    if (options.backend === 'auto' && (e instanceof WebGpuUnavailableError || e instanceof GpuOutOfMemoryError)) {
      return { engine: await cpu(), notice: `using the CPU backend: ${e.message}` };
    }
    throw e;
  }
}

export { WebGpuEngine, type GpuSampling } from './webgpu/engine.js';
export { DeviceLostError, GpuOutOfMemoryError, WebGpuUnavailableError } from './webgpu/errors.js';
