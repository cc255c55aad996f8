/** `pdvm perplexity <model> --text FILE`: the fixtures' perplexity protocol. */
import { readFile } from 'node:fs/promises';
import { Command } from 'commander';
import { InvalidInputError, PdvmError } from '../../errors.js';
import { perplexity, perplexityTokenStream } from '../../runtime/perplexity.js';
import { defaultWorkerCount, parallelPerplexity } from '../../runtime/parallel-perplexity.js';
import { action, backendOption, createEngineForCli, defaultContext, loadForCli, parseIntOption, prefillInt8Option, type PrefillInt8Choice } from '../common.js';
import { progressBar } from '../progress.js';

interface PerplexityFlags {
  text: string;
  ctx: number;
  limit?: number;
  json?: boolean;
  backend: 'cpu' | 'webgpu' | 'auto';
  threads?: number;
  prefillInt8?: PrefillInt8Choice;
}

export function perplexityCommand(): Command {
  return new Command('perplexity')
    .description('perplexity of a model on a text file (documents split on blank lines, BOS before each)')
    .argument('<model>', 'Hugging Face model folder or .upg file')
    .requiredOption('--text <file>', 'UTF-8 text file to score')
    .option('--ctx <n>', 'window length in tokens', parseIntOption('--ctx'), 256)
    .option('--limit <n>', 'use only the first N tokens of the token stream', parseIntOption('--limit'))
    .option('--json', 'print {"perplexity": x, "predicted_tokens": n}')
    .option('--threads <n>', 'CPU worker threads (default: one per core)', parseIntOption('--threads'))
    .addOption(backendOption())
    .addOption(prefillInt8Option())
    .action(action(async (modelPath: string, flags: PerplexityFlags) => {
      let text: string;
      try {
        text = await readFile(flags.text, 'utf8');
      } catch (e) {
        throw new PdvmError(`${flags.text}: cannot be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
      }
      const model = await loadForCli(modelPath);
      if (!model.tokenizer) throw new InvalidInputError(`${model.path} has no tokenizer.json; perplexity on text needs one`);
      let ids = perplexityTokenStream(model.tokenizer, text, model.config.bosTokenId);
      if (flags.limit !== undefined) {
        if (flags.limit < 2) throw new InvalidInputError(`--limit must be at least 2, got ${flags.limit}`);
        ids = ids.slice(0, flags.limit);
      }
      defaultContext(model, flags.ctx, '--ctx'); // windows of --ctx tokens: within the model's maximum and this machine's memory
      const engine = await createEngineForCli(model, flags.backend, flags.ctx + 1, 'unfused', 'f16', flags.prefillInt8); // scoring needs every logit
      const bar = progressBar('perplexity', 'tokens', flags.json === true && !process.stderr.isTTY);
      const progress = (done: number, total: number) => bar.update(done, total);
      const t0 = performance.now();
      // the CPU scores windows on every core: each worker loads its own copy of the model
      const workers = flags.threads ?? defaultWorkerCount();
      const r = engine.backend === 'cpu' && workers > 1
        ? await parallelPerplexity(model.path, ids, flags.ctx, workers, progress)
        : await perplexity(engine, ids, flags.ctx, progress);
      bar.stop();
      engine.dispose();
      const seconds = (performance.now() - t0) / 1000;
      if (flags.json) {
        process.stdout.write(JSON.stringify({ perplexity: r.perplexity, predicted_tokens: r.predictedTokens }) + '\n');
      } else {
        process.stdout.write(`perplexity ${r.perplexity.toFixed(4)} over ${r.predictedTokens} predicted tokens (ctx ${flags.ctx})\n`);
        process.stderr.write(`[${(r.predictedTokens / seconds).toFixed(0)} tokens/s on ${engine.backend}]\n`);
      }
    }));
}
