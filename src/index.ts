/**
 * pdvm as a library: `import { loadModel } from 'pdvm'`. See docs/API.md.
 */
export { loadModel, Model, GenerationStream } from './api/model.js';
export type { Backend, ChatMessage, GenerateOptions, GenerationChunk, GenerationResult, LoadModelOptions, LoadProgress, Prompt, SamplingOptions } from './api/model.js';
export type { FinishReason } from './runtime/generate.js';
export { ContextLengthError, ModelDisposedError, QueueFullError } from './api/errors.js';
export { AbortError, InvalidInputError, ModelFormatError, PdvmError, UnsupportedArchitectureError } from './errors.js';
export { DeviceLostError, GpuOutOfMemoryError, WebGpuUnavailableError } from './backends/index.js';
export { startServer, type ServerOptions, type PdvmServer } from './server/server.js';
