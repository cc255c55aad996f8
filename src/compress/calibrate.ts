/**
 * Wanda's calibration: the norm of each input channel's activations at every linear layer, collected by
 * running calibration text through the CPU engine with each weight wrapped in a recording proxy.
 * Weights are read from the checkpoint a block of rows at a time on every product (never held whole),
 * so calibration needs about one block of weights plus the activations, whatever the model size.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { CpuEngine } from '../backends/cpu/engine.js';
import type { CheckpointTensors } from '../format/hf.js';
import { toF32, type TensorInfo } from '../format/safetensors.js';
import { architectures } from '../model/architectures/index.js';
import type { ModelConfig } from '../model/config.js';
import { DenseTensor, type WeightTensor } from '../model/tensor.js';
import type { TextTokenizer } from '../tokenizer/tokenizer.js';

const BLOCK_BYTES = 8 << 20;

/** A checkpoint matrix read from its file on each use, a block of rows at a time. */
class FileBackedTensor implements WeightTensor {
  readonly encoding = 'dense';
  private readonly rowBytes: number;

  constructor(readonly rows: number, readonly cols: number, private readonly fd: number, private readonly info: TensorInfo) {
    this.rowBytes = info.byteLength / rows;
  }

  get byteLength(): number {
    return this.info.byteLength;
  }

  private readRows(begin: number, count: number): Float32Array {
    const raw = new Uint8Array(count * this.rowBytes);
    let done = 0;
    while (done < raw.length) {
      const n = readSync(this.fd, raw, done, raw.length - done, this.info.offset + begin * this.rowBytes + done);
      if (n === 0) throw new Error(`${this.info.name}: the checkpoint ends early`);
      done += n;
    }
    return toF32({ ...this.info, byteLength: raw.length }, raw);
  }

  matmul(x: Float32Array, T: number, y: Float32Array, yStride: number, yOffset: number): void {
    const block = Math.max(1, Math.floor(BLOCK_BYTES / this.rowBytes));
    for (let r = 0; r < this.rows; r += block) {
      const n = Math.min(block, this.rows - r);
      new DenseTensor(n, this.cols, this.readRows(r, n)).matmul(x, T, y, yStride, yOffset + r);
    }
  }

  readRow(r: number, out: Float32Array): void {
    out.set(this.readRows(r, 1));
  }
}

/** Passes products through and accumulates sum_t x[t, c]^2 for every input channel c. */
class RecordingTensor implements WeightTensor {
  readonly sumSquares: Float64Array;
  tokens = 0;
  constructor(readonly inner: WeightTensor) {
    this.sumSquares = new Float64Array(inner.cols);
  }
  get encoding() {
    return this.inner.encoding;
  }
  get rows() {
    return this.inner.rows;
  }
  get cols() {
    return this.inner.cols;
  }
  get byteLength() {
    return this.inner.byteLength;
  }
  matmul(x: Float32Array, T: number, y: Float32Array, yStride: number, yOffset: number): void {
    const cols = this.cols;
    for (let t = 0; t < T; t++) for (let c = 0; c < cols; c++) this.sumSquares[c] += x[t * cols + c]! ** 2;
    this.tokens += T;
    this.inner.matmul(x, T, y, yStride, yOffset);
  }
  readRow(r: number, out: Float32Array): void {
    this.inner.readRow(r, out);
  }
}

/** The calibration token stream: the perplexity protocol's (BOS + document) stream, cut at `limit` tokens. */
export function calibrationTokens(tokenizer: TextTokenizer, text: string, bosTokenId: number | null, limit: number): number[] {
  const ids: number[] = [];
  for (const doc of text.split('\n\n')) {
    if (ids.length >= limit) break;
    if (bosTokenId !== null) ids.push(bosTokenId);
    for (const id of tokenizer.encode(doc, false)) ids.push(id);
  }
  return ids.slice(0, limit);
}

/**
 * Activation norms ||X[:, c]|| per matrix (by checkpoint tensor name), from windows of `ctx` tokens.
 * `onProgress` gets tokens done and total.
 */
export async function activationNorms(
  ckpt: CheckpointTensors,
  config: ModelConfig,
  ids: number[],
  ctx: number,
  onProgress?: (done: number, total: number) => void,
): Promise<Map<string, Float32Array>> {
  const arch = architectures[config.architecture];
  const has = (n: string) => ckpt.has(n);
  const specs = arch.tensorSpecs(config, has);
  const fds = new Map<string, number>();
  const recorders = new Map<string, RecordingTensor>();
  const vectors = new Map<string, Float32Array>();
  try {
    for (const spec of specs) {
      if (spec.kind === 'vector') {
        vectors.set(spec.name, await ckpt.readF32(spec.name));
        continue;
      }
      const info = ckpt.info(spec.name);
      if (!fds.has(info.file)) fds.set(info.file, openSync(info.file, 'r'));
      recorders.set(spec.name, new RecordingTensor(new FileBackedTensor(spec.shape[0]!, spec.shape[1]!, fds.get(info.file)!, info)));
    }
    const weights = arch.assemble(config, (n) => recorders.get(n)!, (n) => vectors.get(n)!, has);
    const engine = new CpuEngine(config, weights, ctx);
    const seq = engine.createSequence();
    for (let s = 0; s < ids.length; s += ctx) {
      seq.reset();
      engine.forwardSync(seq, ids.slice(s, s + ctx));
      onProgress?.(Math.min(ids.length, s + ctx), ids.length);
      await new Promise((resolve) => setImmediate(resolve)); // let signals and progress through
    }
    const norms = new Map<string, Float32Array>();
    for (const [name, rec] of recorders) norms.set(name, Float32Array.from(rec.sumSquares, Math.sqrt));
    return norms;
  } finally {
    for (const fd of fds.values()) closeSync(fd);
  }
}
