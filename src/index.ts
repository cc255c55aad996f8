/**
 * pdvm's Node entry: `import { loadModel } from 'pdvm'`. Everything of the browser entry, plus local
 * paths (io/node-files.ts), WebGPU through Dawn (the optional `webgpu` package, node-gpu.ts) and the
 * OpenAI-compatible server. See docs/API.md.
 */
import './io/node-files.js';
import './backends/webgpu/node-gpu.js';
import { fileURLToPath } from 'node:url';
import { demoModelUrl } from './demo.js';

export * from './browser.js';
export { startServer, type ServerOptions, type PdvmServer } from './server/server.js';

/** The demo model shipped with the package (brown-llama-12m, 9 MB): its local path. */
export function demoModel(): string {
  return fileURLToPath(demoModelUrl());
}
