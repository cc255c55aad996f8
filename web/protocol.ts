/** Messages between the demo page (main.ts) and its module Worker (worker.ts). */

export type ModelChoice = { kind: 'demo' } | { kind: 'url'; url: string } | { kind: 'file'; file: File };

export interface Sampling {
  temperature: number;
  topP: number;
  topK: number;
  maxTokens: number;
  seed: number | undefined;
}

export type ToWorker =
  | { type: 'load'; model: ModelChoice; backend: 'auto' | 'webgpu' | 'cpu'; decode: 'fused' | 'unfused'; activations: 'int8' | 'f32'; kvCache: 'f16' | 'f32'; cache: boolean }
  | { type: 'generate'; prompt: string; chat: { role: 'user' | 'assistant'; content: string }[] | null; sampling: Sampling }
  | { type: 'stop' };

export interface Ready {
  type: 'ready';
  name: string;
  backend: 'cpu' | 'webgpu';
  decode: 'fused' | 'unfused' | null;
  adapter: string;
  /** Why the backend or decode path differs from the one asked for (one line), if it does. */
  notice: string | null;
  hasChatTemplate: boolean;
  loadMs: number;
}

export interface Done {
  type: 'done';
  text: string;
  tokenIds: number[];
  finishReason: string;
  promptTokens: number;
  tokensPerSecond: number;
  /** From the request to the first generated token, ms. */
  firstTokenMs: number;
  stopped: boolean;
}

export type FromWorker =
  | { type: 'webgpu'; available: boolean; reason: string | null }
  | { type: 'progress'; phase: string; loadedBytes: number; totalBytes: number }
  | Ready
  | { type: 'chunk'; text: string; tokenIds: number[] }
  | Done
  | { type: 'error'; name: string; message: string };
