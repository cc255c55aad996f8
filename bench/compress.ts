/**
 * Compression throughput and peak memory on a synthetic two-layer model of Phi-4 width (hidden 5120,
 * MLP 17920, 40 heads / 10 KV heads, vocab 100352, bf16), written as a Hugging Face folder.
 *   npm run bench:compress [-- --layers 2 --vocab 100352 --keep]
 * Each configuration runs in its own child process, so its peak RSS is its own. Prints a table and one
 * JSON line per configuration. A program, not a test: figures go to docs/PERFORMANCE.md.
 */
import { fork } from 'node:child_process';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { scriptArgs } from '../scripts/args.js';
import { fileURLToPath } from 'node:url';
import { compressModel } from '../src/compress/compress.js';
import type { CompressOptions } from '../src/compress/plan.js';
import { writeSyntheticModel } from './synthetic-model.js';

const CONFIGS: [string, Partial<CompressOptions>][] = [
  ['q8', { bits: 8 }],
  ['q4 g64', { bits: 4, group: 64 }],
  ['magnitude 50% bitmap + q4', { sparsity: 0.5, bits: 4 }],
  ['magnitude 2:4 + q4', { pattern: '2:4', bits: 4 }],
  ['magnitude 90% csr', { pattern: 'csr', sparsity: 0.9, bits: 8 }],
];
const base: CompressOptions = { method: 'magnitude', sparsity: 0, pattern: 'unstructured', bits: 8, group: 64, skip: [], calibTokens: 1 };

interface ChildResult {
  seconds: number;
  maxRssBytes: number;
  outputBytes: number;
}

const { values } = scriptArgs({
  options: {
    child: { type: 'string' },
    input: { type: 'string' },
    output: { type: 'string' },
    layers: { type: 'string', default: '2' },
    vocab: { type: 'string', default: '100352' },
    keep: { type: 'boolean' },
  },
});

if (values.child !== undefined) {
  // child: one configuration, then report its own peak RSS
  const options = CONFIGS[Number(values.child)]![1];
  const result = await compressModel({ ...base, ...options, input: values.input!, output: values.output! });
  const out: ChildResult = { seconds: result.seconds, maxRssBytes: process.resourceUsage().maxRSS * 1024, outputBytes: result.fileBytes };
  process.send!(out);
} else {
  const dir = await mkdtemp(join(os.tmpdir(), 'pdvm-bench-compress-'));
  try {
    const input = join(dir, 'phi4-width');
    const shape = { architecture: 'Phi3ForCausalLM' as const, hidden: 5120, intermediate: 17920, layers: Number(values.layers), heads: 40, kvHeads: 10, vocab: Number(values.vocab) };
    process.stderr.write(`writing a synthetic ${shape.layers}-layer Phi-4-width model (vocab ${shape.vocab}) to ${input} ...\n`);
    const sourceBytes = await writeSyntheticModel(input, shape);
    const largest = 2 * shape.intermediate * shape.hidden * 2; // gate_up_proj, bf16
    const largestTensor = Math.max(largest, shape.vocab * shape.hidden * 2);
    process.stderr.write(`source ${(sourceBytes / 1e9).toFixed(2)} GB (bf16); largest tensor ${(largestTensor / 1e6).toFixed(0)} MB bf16\n`);

    const rows: string[] = [];
    for (let i = 0; i < CONFIGS.length; i++) {
      const output = join(dir, 'out.upg');
      const r = await new Promise<ChildResult>((resolve, reject) => {
        const child = fork(fileURLToPath(import.meta.url), ['--child', String(i), '--input', input, '--output', output]);
        child.on('message', (m) => resolve(m as ChildResult));
        child.on('exit', (code) => code !== 0 && reject(new Error(`configuration ${CONFIGS[i]![0]} exited with ${code}`)));
      });
      await stat(output);
      await rm(output);
      const mbps = sourceBytes / 1e6 / r.seconds;
      const line = `${CONFIGS[i]![0].padEnd(28)} ${r.seconds.toFixed(1).padStart(7)} s ${mbps.toFixed(1).padStart(8)} MB/s  peak RSS ${(r.maxRssBytes / 1e9).toFixed(2)} GB  output ${(r.outputBytes / 1e9).toFixed(2)} GB`;
      rows.push(line);
      process.stdout.write(line + '\n');
      process.stdout.write(JSON.stringify({ config: CONFIGS[i]![0], source_bytes: sourceBytes, seconds: r.seconds, mb_per_s: mbps, peak_rss_bytes: r.maxRssBytes, output_bytes: r.outputBytes, cpu: os.cpus()[0]?.model.trim(), cores: os.cpus().length, node: process.version }) + '\n');
    }
  } finally {
    if (!values.keep) await rm(dir, { recursive: true, force: true });
  }
}
