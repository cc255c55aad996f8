/**
 * Backend selection: `createEngine(model, { backend, contextLength })`.
 * (The WebGPU engine is added beside the CPU one in src/backends/webgpu/.)
 */
import { PdvmError } from '../errors.js';
import type { LoadedModel } from '../model/load.js';
import type { Engine } from '../runtime/engine.js';
import { CpuEngine } from './cpu/engine.js';

export interface EngineOptions {
  backend: 'cpu' | 'webgpu' | 'auto';
  contextLength: number;
}

/** Returns the engine and, when `auto` fell back, a one-line notice saying why. */
export async function createEngine(model: LoadedModel, options: EngineOptions): Promise<{ engine: Engine; notice?: string }> {
  if (options.backend === 'webgpu') throw new PdvmError('the WebGPU backend is not built yet; use --backend cpu');
  const engine = new CpuEngine(model.config, model.weights, options.contextLength);
  return options.backend === 'auto' ? { engine, notice: 'WebGPU backend not available yet; using the CPU' } : { engine };
}
