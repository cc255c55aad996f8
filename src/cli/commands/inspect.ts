/** `pdvm inspect <model>`: architecture, sizes, dtypes and per-tensor encodings. */
import { Command } from 'commander';
import { action, loadForCli } from '../common.js';
import { stat } from 'node:fs/promises';
import type { LoadedModel } from '../../model/load.js';
import { formatReport, upgReportRows } from '../../compress/report.js';

export function describeModel(model: LoadedModel): Record<string, unknown> {
  const c = model.config;
  const params = model.tensors.reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1), 0);
  const bytes = model.tensors.reduce((a, t) => a + t.bytes, 0);
  const dtypes: Record<string, number> = {};
  for (const t of model.tensors) dtypes[`${t.encoding === 'dense' ? t.dtype : t.encoding}`] = (dtypes[t.encoding === 'dense' ? t.dtype : t.encoding] ?? 0) + 1;
  return {
    path: model.path,
    architecture: c.architecture,
    parameters: params,
    bytes,
    context_length: c.maxPositionEmbeddings,
    layers: c.numLayers,
    hidden_size: c.hiddenSize,
    intermediate_size: c.intermediateSize,
    heads: c.numHeads,
    kv_heads: c.numKvHeads,
    head_dim: c.headDim,
    vocab_size: c.vocabSize,
    rope: { theta: c.ropeTheta, scaling: c.ropeScaling.type },
    sliding_window: c.slidingWindow,
    tied_embeddings: model.weights.lmHead === model.weights.embed,
    tensor_dtypes: dtypes,
    tokenizer: model.tokenizer !== null,
    chat_template: model.tokenizer?.hasChatTemplate ?? false,
  };
}

export function inspectCommand(): Command {
  return new Command('inspect')
    .description('show a model\'s architecture, parameter count, dtypes, size and context length')
    .argument('[model]', 'Hugging Face model folder or .upg file (default: the built-in demo model)')
    .option('--json', 'print JSON')
    .option('--tensors', 'list every tensor')
    .action(action(async (modelPath: string | undefined, flags: { json?: boolean; tensors?: boolean }) => {
      const model = await loadForCli(modelPath);
      const d = describeModel(model);
      if (flags.json) {
        process.stdout.write(JSON.stringify(flags.tensors ? { ...d, tensors: model.tensors } : d, null, 2) + '\n');
        return;
      }
      const mb = (n: number) => `${(n / 1e6).toFixed(2)} MB`;
      const lines = [
        `model         ${d.path}`,
        `architecture  ${d.architecture}`,
        `parameters    ${(Number(d.parameters) / 1e6).toFixed(2)} M`,
        `size          ${mb(Number(d.bytes))}`,
        `dtypes        ${Object.entries(dtypeCounts(d)).map(([k, v]) => `${k} x${v}`).join(', ')}`,
        `context       ${d.context_length}`,
        `layers        ${d.layers} (hidden ${d.hidden_size}, MLP ${d.intermediate_size}, ${d.heads} heads / ${d.kv_heads} KV heads of ${d.head_dim})`,
        `vocab         ${d.vocab_size}${d.tied_embeddings ? ' (lm_head tied to embeddings)' : ''}`,
        `rope          theta ${(d.rope as { theta: number }).theta}, ${(d.rope as { scaling: string }).scaling}${d.sliding_window ? `; sliding window ${d.sliding_window}` : ''}`,
        `tokenizer     ${d.tokenizer ? 'yes' : 'no'}${d.chat_template ? ', chat template' : ''}`,
      ];
      if (model.path.endsWith('.upg')) {
        // a UPG artifact: the compressor's per-tensor report (encoding, sparsity, bits/weight, error) and totals
        lines.push('', formatReport(upgReportRows(model), (await stat(model.path)).size));
      } else if (flags.tensors) {
        lines.push('', 'tensor'.padEnd(52) + 'encoding  dtype  shape            bytes');
        for (const t of model.tensors) lines.push(`${t.name.padEnd(52)}${t.encoding.padEnd(10)}${t.dtype.padEnd(7)}${`[${t.shape}]`.padEnd(17)}${t.bytes}`);
      }
      process.stdout.write(lines.join('\n') + '\n');
    }));
}

function dtypeCounts(d: Record<string, unknown>): Record<string, number> {
  return d.tensor_dtypes as Record<string, number>;
}
