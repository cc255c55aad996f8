/**
 * pdvm's browser entry (package.json "exports" condition "browser"): the library without Node modules,
 * no server and no Dawn. WebGPU comes from `navigator.gpu`; models load from URLs, Files, Blobs or
 * bytes, and downloads are kept in the origin's private storage. The Node entry (index.ts) re-exports
 * all of it. See docs/API.md.
 */
import { demoModelUrl } from './demo.js';

export { loadModel, Model, GenerationStream } from './api/model.js';
export type { Backend, ChatMessage, GenerateOptions, GenerationChunk, GenerationResult, LoadModelOptions, LoadProgress, Prompt, SamplingOptions } from './api/model.js';
export type { FinishReason } from './runtime/generate.js';
export type { ModelSource, FileInput } from './io/open.js';
export type { FetchFunction } from './io/http.js';
export { MemorySource, BlobSource, type ByteSource } from './io/source.js';
export { HttpSource } from './io/http.js';
export { listCachedModels, deleteCachedModel, type CachedModel } from './io/browser-cache.js';
export { ContextLengthError, ModelDisposedError, QueueFullError } from './api/errors.js';
export { AbortError, ChatTemplateError, InvalidInputError, ModelFormatError, PdvmError, UnsupportedArchitectureError } from './errors.js';
export { VerifyError, verifyUpg, type VerifyReport } from './format/upg/verify.js';
export { GrammarError } from './runtime/grammar/compiler.js';
export { DownloadError, HttpStatusError, IncompleteDownloadError, NetworkError, StorageQuotaError } from './io/errors.js';
export { DeviceLostError, GpuOutOfMemoryError, GpuValidationError, WebGpuUnavailableError } from './backends/webgpu/errors.js';
export { registerGpuProvider, type GpuProvider } from './backends/webgpu/provider.js';

/** The demo model shipped with the package (brown-llama-12m, 9 MB): its URL, beside the package's dist/. */
export function demoModel(): string {
  return demoModelUrl().href;
}
