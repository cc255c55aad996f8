/**
 * `compressModel`: a Hugging Face folder -> a UPG artifact, streaming. Tensors are read, pruned,
 * quantized and written one at a time in layer order, so peak memory is about one tensor (a few copies
 * of it in float32) plus, for Wanda, the activation norms; the artifact appears under its name only
 * when complete.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { InvalidInputError, PdvmError } from '../errors.js';
import { CheckpointTensors, exists, readJsonFile, readTokenizerFiles } from '../format/hf.js';
import { BitmapTensor, CsrTensor, DenseUpgTensor, NmTensor, Q4Tensor, Q8Tensor, type EncodedTensor } from '../format/upg/encodings/index.js';
import type { DenseDtype } from '../format/upg/encodings/dense.js';
import { denseBytes } from '../format/upg/encodings/dense.js';
import type { UpgModelFiles } from '../format/upg/metadata.js';
import { UpgWriter } from '../format/upg/writer.js';
import { architectures } from '../model/architectures/index.js';
import { parseConfig } from '../model/config.js';
import { TextTokenizer } from '../tokenizer/tokenizer.js';
import { activationNorms, calibrationTokens } from './calibrate.js';
import { planTensor, validateOptions, type CompressOptions, type TensorPlan } from './plan.js';
import { pruneNM, pruneUnstructured, pruningScores } from './prune.js';
import type { TensorReportRow } from './report.js';

export interface CompressProgress {
  phase: 'calibrate' | 'compress';
  done: number;
  total: number;
  tensor?: string;
}

export interface CompressRequest extends CompressOptions {
  input: string;
  output: string;
  /** Calibration text file (Wanda). */
  calib?: string;
  onProgress?: (p: CompressProgress) => void;
  signal?: AbortSignal;
}

export interface CompressResult {
  rows: TensorReportRow[];
  fileBytes: number;
  seconds: number;
}

/** The model files an artifact carries, read verbatim. */
async function modelFiles(dir: string, options: CompressOptions): Promise<UpgModelFiles> {
  const text = async (name: string) => ((await exists(join(dir, name))) ? readFile(join(dir, name), 'utf8') : undefined);
  const files: UpgModelFiles = { upg_config: (await text('config.json'))! };
  const optional: [keyof UpgModelFiles, string][] = [
    ['upg_generation_config', 'generation_config.json'],
    ['upg_tokenizer', 'tokenizer.json'],
    ['upg_tokenizer_config', 'tokenizer_config.json'],
  ];
  for (const [key, name] of optional) {
    const t = await text(name);
    if (t !== undefined) files[key] = t;
  }
  const tok = await readTokenizerFiles(dir);
  if (tok?.chatTemplate) files.upg_chat_template = tok.chatTemplate;
  const { method, sparsity, attnSparsity, mlpSparsity, pattern, bits, group, skip } = options;
  files.upg_source = JSON.stringify({ method, sparsity, attnSparsity, mlpSparsity, pattern, bits, group, skip });
  return files;
}

/** Prunes and encodes one matrix per its plan. */
export function encodeMatrix(w: Float32Array, rows: number, cols: number, plan: TensorPlan, norms: Float32Array | null): EncodedTensor {
  let pruned = w;
  if (plan.prune !== 'none') {
    const scores = pruningScores(w, rows, cols, norms);
    pruned = plan.prune === 'nm'
      ? pruneNM(w, scores, rows, cols, plan.params.n as number, plan.params.m as number)
      : pruneUnstructured(w, scores, rows, cols, plan.sparsity);
  }
  const p = plan.params;
  switch (plan.encoding) {
    case 'dense':
      return DenseUpgTensor.pack(rows, cols, pruned, p.dtype as DenseDtype);
    case 'q8':
      return Q8Tensor.pack(rows, cols, pruned);
    case 'q4':
      return Q4Tensor.pack(rows, cols, pruned, p.group as number);
    case 'bitmap':
      return BitmapTensor.pack(rows, cols, pruned, p.tile as number, p.bits as 4 | 8);
    case 'nm':
      return NmTensor.pack(rows, cols, pruned, p.n as number, p.m as number, p.bits as 4 | 8, (p.group as number) ?? 64);
    case 'csr':
      return CsrTensor.pack(rows, cols, pruned);
  }
}

/** Zero fraction and ||W' - W|| / ||W|| of the decoded tensor, a row at a time. */
function measure(t: EncodedTensor, w: Float32Array): { sparsity: number; relError: number } {
  const row = new Float32Array(t.cols);
  let zeros = 0, num = 0, den = 0;
  for (let r = 0; r < t.rows; r++) {
    t.decodeRow(r, row);
    for (let c = 0; c < t.cols; c++) {
      const v = row[c]!, ref = w[r * t.cols + c]!;
      if (v === 0) zeros++;
      num += (v - ref) ** 2;
      den += ref * ref;
    }
  }
  return { sparsity: zeros / (t.rows * t.cols), relError: Math.sqrt(num) / Math.sqrt(den || 1) };
}

export async function compressModel(req: CompressRequest): Promise<CompressResult> {
  validateOptions(req);
  const t0 = performance.now();
  const configPath = join(req.input, 'config.json');
  if (!(await exists(configPath))) throw new PdvmError(`${req.input}: has no config.json; pdvm compress takes a Hugging Face model folder`);
  const genPath = join(req.input, 'generation_config.json');
  const config = parseConfig(await readJsonFile(configPath), configPath, (await exists(genPath)) ? await readJsonFile(genPath) : {});
  const files = await modelFiles(req.input, req);
  const ckpt = await CheckpointTensors.open(req.input);
  let writer: UpgWriter | null = null;
  const checkAbort = () => {
    if (req.signal?.aborted) throw new PdvmError('compression interrupted; no output was written');
  };
  try {
    const arch = architectures[config.architecture];
    const has = (n: string) => ckpt.has(n);
    const specs = arch.tensorSpecs(config, has);
    for (const spec of specs) {
      if (!ckpt.has(spec.name)) throw new PdvmError(`${req.input}: is missing tensor ${spec.name}, which ${config.architecture} needs`);
    }

    let norms: Map<string, Float32Array> | null = null;
    if (req.method === 'wanda' && specs.some((s) => planTensor(s, 'BF16', req).prune !== 'none')) {
      if (!req.calib) throw new InvalidInputError('--method wanda needs calibration text: pass --calib FILE (e.g. a slice of the training text)');
      const tok = await readTokenizerFiles(req.input);
      if (!tok) throw new InvalidInputError(`${req.input} has no tokenizer.json, so --calib text cannot be tokenized`);
      let text: string;
      try {
        text = await readFile(req.calib, 'utf8');
      } catch (e) {
        throw new PdvmError(`${req.calib}: cannot be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
      }
      const ids = calibrationTokens(new TextTokenizer(tok), text, config.bosTokenId, req.calibTokens);
      if (ids.length < 2) throw new InvalidInputError(`${req.calib}: gives ${ids.length} calibration tokens; it needs text`);
      const ctx = Math.min(256, config.maxPositionEmbeddings);
      norms = await activationNorms(ckpt, config, ids, ctx, (done, total) => {
        req.onProgress?.({ phase: 'calibrate', done, total });
        checkAbort();
      });
    }
    checkAbort();

    writer = await UpgWriter.create(req.output, files, specs.length, Math.max(...specs.map((s) => s.name.length)));
    const totalBytes = specs.reduce((a, s) => a + ckpt.info(s.name).byteLength, 0);
    let doneBytes = 0;
    const rows: TensorReportRow[] = [];
    for (const spec of specs) {
      checkAbort();
      const info = ckpt.info(spec.name);
      const plan = planTensor(spec, info.dtype, req);
      const w = await ckpt.readF32(spec.name);
      const shape = spec.shape;
      let row: TensorReportRow;
      if (spec.kind === 'vector') {
        const bytes = denseBytes(w, plan.params.dtype as DenseDtype);
        await writer.writeTensor({ name: spec.name, shape, encoding: 'dense', params: plan.params }, [{ role: 'values', dtype: plan.params.dtype as DenseDtype, shape, bytes }]);
        row = { name: spec.name, encoding: 'dense', detail: String(plan.params.dtype), shape, bytes: bytes.length };
      } else {
        const [r, c] = shape as [number, number];
        const encoded = encodeMatrix(w, r, c, plan, norms?.get(spec.name) ?? null);
        const stats = measure(encoded, w);
        await writer.writeTensor(
          { name: spec.name, shape, encoding: encoded.encoding, params: encoded.params, stats: { sparsity: stats.sparsity, rel_error: stats.relError } },
          encoded.buffers(),
        );
        const detail = Object.entries(encoded.params).map(([k, v]) => `${k}=${v}`).join(',');
        row = { name: spec.name, encoding: encoded.encoding, detail, shape, bytes: encoded.byteLength, sparsity: stats.sparsity, relError: stats.relError };
      }
      rows.push(row);
      doneBytes += info.byteLength;
      req.onProgress?.({ phase: 'compress', done: doneBytes, total: totalBytes, tensor: spec.name });
    }
    checkAbort();
    const { bytes } = await writer.finish();
    return { rows, fileBytes: bytes, seconds: (performance.now() - t0) / 1000 };
  } catch (e) {
    await writer?.abort();
    throw e;
  } finally {
    await ckpt.close();
  }
}
