/** Typed errors of the WebGPU backend; each says what to do next. */
import { PdvmError } from '../../errors.js';

/** No WebGPU implementation or no adapter: the caller may fall back to the CPU. */
export class WebGpuUnavailableError extends PdvmError {}

/** The device was lost (driver reset, another process took the GPU, destroy()); the engine is unusable. */
export class DeviceLostError extends PdvmError {
  constructor(readonly reason: string, detail: string) {
    super(`the GPU device was lost (${reason}${detail ? `: ${detail}` : ''}); load the model again, or use backend: 'cpu'`);
  }
}

/** An allocation failed: the device cannot hold the model plus its KV cache. */
export class GpuOutOfMemoryError extends PdvmError {}

/** A GPU validation error: a bug in pdvm, reported with the failing operation. */
export class GpuValidationError extends PdvmError {}
