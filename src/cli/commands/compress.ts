/**
 * `pdvm compress <hf-model-dir> -o out.upg`: prune and quantize a model into a UPG artifact, tensor by
 * tensor; a progress bar on a terminal, then the per-tensor report and totals.
 * `pdvm verify <file.upg>`: check every tensor's checksum without loading the model.
 */
import { Command, Option } from 'commander';
import { InvalidInputError } from '../../errors.js';
import { compressModel } from '../../compress/compress.js';
import type { Method, Pattern } from '../../compress/plan.js';
import { formatReport } from '../../compress/report.js';
import { FileSource } from '../../io/node-files.js';
import { stat } from 'node:fs/promises';
import { verifyUpg } from '../../format/upg/verify.js';
import { action, parseFloatOption, parseIntOption } from '../common.js';
import { progressBar } from '../progress.js';

interface CompressFlags {
  output: string;
  method?: Method;
  sparsity: number;
  attnSparsity?: number;
  mlpSparsity?: number;
  pattern: Pattern;
  bits: number;
  group: number;
  calib?: string;
  calibTokens: number;
  skip: string;
  quiet?: boolean;
}

export function compressCommand(): Command {
  return new Command('compress')
    .description('prune and quantize a Hugging Face model folder into a .upg artifact (see docs/upg-format.md)')
    .argument('<hf-model-dir>', 'Hugging Face model folder (config.json, *.safetensors, tokenizer)')
    .requiredOption('-o, --output <file>', 'the .upg artifact to write (written to a temporary file, renamed when complete)')
    .addOption(new Option('--method <name>', 'pruning score: |W| (magnitude) or |W| x activation norm (wanda; needs --calib) [default: wanda with --calib, else magnitude]').choices(['magnitude', 'wanda']))
    .option('--sparsity <s>', 'fraction of each attention/MLP row to zero (0 = no pruning)', parseFloatOption('--sparsity'), 0)
    .option('--attn-sparsity <s>', 'sparsity for attention projections (default: --sparsity)', parseFloatOption('--attn-sparsity'))
    .option('--mlp-sparsity <s>', 'sparsity for MLP projections (default: --sparsity)', parseFloatOption('--mlp-sparsity'))
    .addOption(new Option('--pattern <p>', 'sparsity layout: unstructured (bitmap), 2:4 / 4:8 (nm), csr (int8 MdCSR)').choices(['unstructured', '2:4', '4:8', 'csr']).default('unstructured'))
    .option('--bits <b>', 'bits per stored value: 8, 4, or 16 (dense bf16, no pruning)', parseIntOption('--bits'), 8)
    .option('--group <g>', 'inputs per q4 scale (and bitmap tile): 32, 64 or 128', parseIntOption('--group'), 64)
    .option('--calib <file>', 'calibration text for wanda (documents separated by blank lines)')
    .option('--calib-tokens <n>', 'calibration tokens to run through the model', parseIntOption('--calib-tokens'), 2048)
    .option('--skip <list>', 'comma-separated: keep embed and/or lm_head dense instead of q8', '')
    .option('-q, --quiet', 'no progress and no report')
    .action(action(async (input: string, flags: CompressFlags) => {
      if (![4, 8, 16].includes(flags.bits)) throw new InvalidInputError(`--bits must be 4, 8 or 16, got ${flags.bits}`);
      const controller = new AbortController();
      const stop = () => controller.abort();
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
      const calibrating = progressBar('calibrating', 'tokens', flags.quiet);
      const compressing = progressBar('compressing', 'B', flags.quiet);
      try {
        const result = await compressModel({
          input,
          output: flags.output,
          method: flags.method ?? (flags.calib ? 'wanda' : 'magnitude'),
          sparsity: flags.sparsity,
          attnSparsity: flags.attnSparsity,
          mlpSparsity: flags.mlpSparsity,
          pattern: flags.pattern,
          bits: flags.bits as 4 | 8 | 16,
          group: flags.group,
          calib: flags.calib,
          calibTokens: flags.calibTokens,
          skip: flags.skip.split(',').map((s) => s.trim()).filter(Boolean),
          signal: controller.signal,
          onProgress: (p) => (p.phase === 'calibrate' ? calibrating : compressing).update(p.done, p.total),
        });
        calibrating.stop();
        compressing.stop();
        if (!flags.quiet) {
          process.stdout.write(formatReport(result.rows, result.fileBytes) + '\n');
          process.stderr.write(`[wrote ${flags.output} in ${result.seconds.toFixed(1)} s]\n`);
        }
      } finally {
        calibrating.stop();
        compressing.stop();
        process.off('SIGINT', stop);
        process.off('SIGTERM', stop);
      }
    }));
}

export function verifyCommand(): Command {
  return new Command('verify')
    .description('check a .upg artifact as loading does (header, config against tensors, tokenizer, chat template) plus every checksum')
    .argument('<file>', '.upg artifact')
    .action(action(async (path: string) => {
      const st = await stat(path).catch(() => null);
      if (!st) throw new InvalidInputError(`${path}: no such file`);
      if (st.isDirectory()) {
        throw new InvalidInputError(`${path}: is a folder; pdvm verify checks a .upg artifact (for a Hugging Face folder, \`pdvm inspect ${path}\` runs every loading check)`);
      }
      const bar = progressBar('verifying', 'tensors');
      let report;
      try {
        report = await verifyUpg(() => FileSource.open(path), (_, done, total) => bar.update(done, total));
      } finally {
        bar.stop();
      }
      process.stdout.write(`${path}: UPG version ${report.version}; ${report.checks.join(', ')} checks pass; ${report.tensors} tensors, all checksums match\n`);
      if (!report.metadataChecksummed) {
        process.stdout.write(`${path}: note: a version ${report.version} file carries no checksum of its metadata (only of its tensors); recompress to get one\n`);
      }
    }));
}
