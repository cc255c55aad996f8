/**
 * `compressModel`: a Hugging Face folder -> a UPG artifact, streaming. Tensors are read, pruned,
 * quantized and written one at a time in layer order, and each matrix a block of rows at a time (pruning
 * and every encoding work within rows), so peak memory is one encoded matrix plus a float32 block, and,
 * for Wanda, the activation norms. The artifact appears under its name only when complete.
 */
import { readFile, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { InvalidInputError, ModelFormatError, PdvmError } from '../errors.js';
import { checkTensorsAgainstConfig, checkpointLookup } from '../model/check.js';
import { CheckpointTensors, readTokenizerFiles } from '../format/hf.js';
import { BitmapTensor, CsrTensor, DenseUpgTensor, NmTensor, Q4Tensor, Q8Tensor, concatRowBlocks, type EncodedTensor } from '../format/upg/encodings/index.js';
import { toF32 } from '../format/safetensors.js';
import { exists, FileSource, readJsonFile } from '../io/node-files.js';
import type { DenseDtype } from '../format/upg/encodings/dense.js';
import { denseBytes } from '../format/upg/encodings/dense.js';
import type { UpgModelFiles } from '../format/upg/metadata.js';
import { UpgWriter } from '../format/upg/writer.js';
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
  /** Weights per row block (default 4 Mi: 16 MB of float32); tests make it small to exercise the joins. */
  blockWeights?: number;
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
  if (tok) {
    // what the artifact carries must load: refuse a tokenizer or chat template that generate would refuse
    const problem = new TextTokenizer(tok).chatTemplateProblem();
    if (problem) throw problem;
  }
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

/** Zero count and squared error / squared norm of the decoded tensor against the source, a row at a time. */
interface ErrorSums {
  zeros: number;
  errorSquares: number;
  sourceSquares: number;
}

function accumulateError(t: EncodedTensor, w: Float32Array, sums: ErrorSums): void {
  const row = new Float32Array(t.cols);
  for (let r = 0; r < t.rows; r++) {
    t.decodeRow(r, row);
    for (let c = 0; c < t.cols; c++) {
      const v = row[c]!, ref = w[r * t.cols + c]!;
      if (v === 0) sums.zeros++;
      sums.errorSquares += (v - ref) ** 2;
      sums.sourceSquares += ref * ref;
    }
  }
}

/** Float32 weights a block of rows at a time, read straight from the checkpoint's files. */
class RowReader {
  private readonly sources = new Map<string, FileSource>();
  constructor(private readonly ckpt: CheckpointTensors) {}

  async read(name: string, firstRow: number, rowCount: number, rows: number): Promise<Float32Array> {
    const info = this.ckpt.info(name);
    let source = this.sources.get(info.file);
    if (!source) this.sources.set(info.file, (source = await FileSource.open(info.file)));
    const rowBytes = info.byteLength / rows;
    const raw = await source.read(info.offset + firstRow * rowBytes, rowCount * rowBytes);
    return toF32({ ...info, byteLength: raw.length }, raw);
  }

  async close(): Promise<void> {
    await Promise.all([...this.sources.values()].map((s) => s.close()));
  }
}

/** Weights per row block: every pruning pattern and encoding works within rows, so big matrices go a block at a time. */
const BLOCK_WEIGHTS = 1 << 22;

/** Encodes one matrix block by block; peak memory is one float32 block plus the encoded matrix. */
async function encodeStreamed(reader: RowReader, name: string, rows: number, cols: number, plan: TensorPlan, norms: Float32Array | null, blockWeights: number) {
  const blockRows = Math.max(1, Math.floor(blockWeights / cols));
  const parts: EncodedTensor[] = [];
  const sums: ErrorSums = { zeros: 0, errorSquares: 0, sourceSquares: 0 };
  for (let r = 0; r < rows; r += blockRows) {
    const n = Math.min(blockRows, rows - r);
    const w = await reader.read(name, r, n, rows);
    const part = encodeMatrix(w, n, cols, plan, norms);
    accumulateError(part, w, sums);
    parts.push(part);
  }
  return {
    encoded: concatRowBlocks(parts),
    sparsity: sums.zeros / (rows * cols),
    relError: Math.sqrt(sums.errorSquares) / Math.sqrt(sums.sourceSquares || 1),
  };
}

/**
 * The output path, checked before any work: a .upg name (loading goes by the extension) in a folder
 * that exists, not a folder itself, and not one of the input's own files.
 */
async function checkOutput(input: string, output: string): Promise<void> {
  if (!output.endsWith('.upg')) throw new InvalidInputError(`-o ${output}: the artifact's name must end in .upg (pdvm loads artifacts by that extension)`);
  const st = await stat(output).catch(() => null);
  if (st?.isDirectory()) throw new InvalidInputError(`-o ${output}: is a folder; give the artifact's file name, such as ${join(output, basename(resolve(input)) + '.upg')}`);
  const folder = dirname(resolve(output));
  const dirStat = await stat(folder).catch(() => null);
  if (!dirStat) throw new InvalidInputError(`-o ${output}: the folder ${folder} does not exist; create it first (mkdir -p ${folder})`);
  if (!dirStat.isDirectory()) throw new InvalidInputError(`-o ${output}: ${folder} is not a folder`);
}

export async function compressModel(req: CompressRequest): Promise<CompressResult> {
  validateOptions(req);
  await checkOutput(req.input, req.output);
  const t0 = performance.now();
  const configPath = join(req.input, 'config.json');
  if (!(await exists(configPath))) throw new PdvmError(`${req.input}: has no config.json; pdvm compress takes a Hugging Face model folder`);
  const genPath = join(req.input, 'generation_config.json');
  const config = parseConfig(await readJsonFile(configPath), configPath, (await exists(genPath)) ? await readJsonFile(genPath) : {});
  const files = await modelFiles(req.input, req);
  const ckpt = await CheckpointTensors.open(req.input);
  const reader = new RowReader(ckpt);
  let writer: UpgWriter | null = null;
  const checkAbort = () => {
    if (req.signal?.aborted) throw new PdvmError('compression interrupted; no output was written');
  };
  try {
    // the same checks as loading, so compress refuses what generate would (shapes against the config, sizes first)
    const specs = checkTensorsAgainstConfig(config, checkpointLookup(ckpt));
    for (const spec of specs) {
      const info = ckpt.info(spec.name);
      if (!['F32', 'F16', 'BF16'].includes(info.dtype)) {
        throw new ModelFormatError(info.file, `tensor ${spec.name} has dtype ${info.dtype}; expected F32, F16 or BF16`);
      }
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
      const shape = spec.shape;
      let row: TensorReportRow;
      if (spec.kind === 'vector') {
        const w = await ckpt.readF32(spec.name);
        const bytes = denseBytes(w, plan.params.dtype as DenseDtype);
        await writer.writeTensor({ name: spec.name, shape, encoding: 'dense', params: plan.params }, [{ role: 'values', dtype: plan.params.dtype as DenseDtype, shape, bytes }]);
        row = { name: spec.name, encoding: 'dense', detail: String(plan.params.dtype), shape, bytes: bytes.length };
      } else {
        const [r, c] = shape as [number, number];
        const { encoded, ...stats } = await encodeStreamed(reader, spec.name, r, c, plan, norms?.get(spec.name) ?? null, req.blockWeights ?? BLOCK_WEIGHTS);
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
    await reader.close();
    await ckpt.close();
  }
}
