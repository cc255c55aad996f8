/** What a loader gives: the canonical weights plus everything generation needs; and the loaders' shared progress and abort check. */
import { AbortError } from '../errors.js';
import type { TextTokenizer } from '../tokenizer/tokenizer.js';
import type { ModelConfig } from './config.js';
import type { ModelWeights } from './weights.js';

export interface TensorSummary {
  name: string;
  encoding: string;
  dtype: string;
  shape: number[];
  bytes: number;
  /** UPG artifacts: fraction of zero weights and relative reconstruction error, as the compressor measured them. */
  sparsity?: number;
  relError?: number;
}

export interface LoadedModel {
  /** Where it came from: a path, a URL, a file name. */
  path: string;
  config: ModelConfig;
  weights: ModelWeights;
  tokenizer: TextTokenizer | null;
  /** Defaults from generation_config.json (temperature, top_p, ...), as written there. */
  generationConfig: Record<string, unknown>;
  tensors: TensorSummary[];
  /**
   * Present when the matrices are lazy (LoadOptions.lazy): closes the sources they read from. Call it
   * once the engine holds the weights (loadModel does).
   */
  close?: () => Promise<void>;
}

export interface LoadProgress {
  /** 'download': bytes of a file arriving (whole downloads, browser caching); 'tensors': tensors read. */
  phase: 'download' | 'tensors';
  loadedBytes: number;
  /** 0 when the server did not say how big the file is. */
  totalBytes: number;
  /** The tensor just read ('tensors'), or the URL downloading ('download'). */
  tensor: string;
}

export interface LoadOptions {
  onProgress?: (p: LoadProgress) => void;
  /** Cancels the load: it rejects with AbortError. */
  signal?: AbortSignal;
  /**
   * Leave the matrices in their source (model/lazy.ts) for an engine that streams them to its device;
   * the 'tensors' progress then comes as they are read. The loaded model's close() ends the reading.
   */
  lazy?: boolean;
}

/**
 * A loader's 'tensors' progress over `totalBytes` (never past it) and its abort check, which throws
 * AbortError naming `what` once options.signal is aborted.
 */
export function tensorLoading(options: LoadOptions, totalBytes: number, what: string): { progress: (tensor: string, bytes: number) => void; aborted: () => void } {
  let loadedBytes = 0;
  return {
    progress: (tensor, bytes) => {
      loadedBytes = Math.min(totalBytes, loadedBytes + bytes);
      options.onProgress?.({ phase: 'tensors', loadedBytes, totalBytes, tensor });
    },
    aborted: () => {
      if (options.signal?.aborted) throw new AbortError(`loading ${what} was aborted`);
    },
  };
}
