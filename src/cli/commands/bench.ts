/**
 * `pdvm bench`: decode/prefill speed of a synthetic model of a named shape on the GPU, fused and
 * unfused, as a share of the read bandwidth measured in the same run. Prints a summary on stderr and
 * the figures on stdout (with --json, one JSON object: the first path's figures, and with --path both
 * the other path's under `compared_with`).
 */
import { Command, Option } from 'commander';
import { writeFile } from 'node:fs/promises';
import { Gpu } from '../../backends/webgpu/device.js';
import { promptAttentionDescription } from '../../backends/webgpu/ops.js';
import { runPrefillBench } from '../../bench/prefill.js';
import { runBench, type BenchOptions } from '../../bench/run.js';
import { BENCH_SHAPES } from '../../bench/synthetic.js';
import type { DecodeAttentionKind } from '../../backends/webgpu/fused/decoder.js';
import { InvalidArgumentError } from 'commander';

const ATTENTION_KINDS: readonly DecodeAttentionKind[] = ['split', 'split-gqa', 'split-heads', 'single'];

function parseUnrolls(value: string): number[] {
  return value.split(',').map((v) => {
    const t = v.trim();
    if (t === 'default') return 0;
    const n = Number(t);
    if (!Number.isInteger(n) || n < 0 || n > 16) throw new InvalidArgumentError(`--unroll: '${t}' is not 'default' or a whole number 0-16`);
    return n;
  });
}

function parseAttentionKinds(value: string): DecodeAttentionKind[] {
  const kinds = value.split(',').map((k) => k.trim());
  for (const k of kinds) {
    if (!(ATTENTION_KINDS as readonly string[]).includes(k)) throw new InvalidArgumentError(`'${k}' is not a decode attention kind; one of ${ATTENTION_KINDS.join(', ')} (or several, comma-separated)`);
  }
  return kinds as DecodeAttentionKind[];
}
import { action, parseFloatOption, parseIntOption, prefillInt8Of, prefillInt8Option, type PrefillInt8Choice } from '../common.js';

/** A comma-separated list of values, each checked by `one`. */
function listOf<T>(flag: string, one: (t: string) => T | undefined, what: string): (value: string) => T[] {
  return (value) => value.split(',').map((v) => {
    const x = one(v.trim());
    if (x === undefined) throw new InvalidArgumentError(`${flag}: '${v.trim()}' is not ${what}`);
    return x;
  });
}
const wholeNumber = (t: string) => (/^\d+$/.test(t) ? Number(t) : undefined);

/** The CLI's flags: the bench's options, with one --path instead of a list and the probe in MiB. */
type BenchFlags = Omit<BenchOptions, 'paths' | 'probeBytes' | 'log' | 'profile' | 'kvCaches' | 'temperatures'> & {
  temperature?: number[];
  kvCache: 'f16' | 'f32' | 'both';
  path: 'fused' | 'unfused' | 'both';
  probeMib: number;
  profile: boolean;
  subgroups: boolean;
  f16: boolean;
  subgroupMatrix: boolean;
  dawnToggles: boolean;
  prefillInt8?: PrefillInt8Choice;
  json: boolean;
  out?: string;
  prefill?: number;
  prefillChunk?: number;
  runs: number;
};

export function benchCommand(): Command {
  return new Command('bench')
    .description('benchmark decoding on the GPU with a synthetic model of a named shape (random weights, no download)')
    .addOption(new Option('--shape <name>', 'model shape').choices(Object.keys(BENCH_SHAPES)).default('llama-3.2-1b'))
    .addOption(new Option('--encoding <name>', 'weight encoding: q4, q8 (int8, a scale per row), bitmap (sparse, q4 values) or bf16').choices(['q4', 'q8', 'bitmap', 'bf16']).default('q4'))
    .option('--group <n>', 'q4 group size', parseIntOption('--group'), 64)
    .option('--tile <n>', 'bitmap tile (columns)', parseIntOption('--tile'), 64)
    .option('--density <x>', 'bitmap: share of weights kept', parseFloatOption('--density'), 0.5)
    .addOption(new Option('--bitmap <layout>', 'bitmap on the GPU: expand (rewritten as q4 with the tile as group, as generate runs it) or walk (the mask bits walked)').choices(['expand', 'walk']).default('expand'))
    .option('--context <n>', 'tokens in the KV cache before decoding (prompt length)', parseIntOption('--context'), 512)
    .option('--tokens <n>', 'tokens to decode', parseIntOption('--tokens'), 128)
    .addOption(new Option('--path <which>', 'decode path').choices(['fused', 'unfused', 'both']).default('fused'))
    .option('--seed <n>', 'seed of the random weights', parseIntOption('--seed'), 1)
    .option('--lag <n>', 'steps the CPU runs ahead of the ids it has read', parseIntOption('--lag'), 8)
    .option('--workgroups <n>', 'workgroups per matvec dispatch', parseIntOption('--workgroups'))
    .option('--norm-workgroups <n>', "workgroups per matvec that normalises x first (and per int8 matvec); a comma-separated list runs each over the same weights ('default' or 0: the decoder's)", listOf('--norm-workgroups', (t) => (t === 'default' ? 0 : wholeNumber(t)), "'default' or a whole number"))
    .option('--int8-prologue <kinds>', "the int8 kernels' norm prologue: octets (x * norm weight quantized by octets of lanes, the scale applied to the sums) or units (one invocation a unit); a comma-separated list runs each", listOf('--int8-prologue', (t) => (t === 'octets' || t === 'units' ? t : undefined), 'octets or units'))
    .option('--interleave <list>', 'subgroup matvecs: row groups dealt across workgroups first (on) or a workgroup\'s workers on consecutive groups (off); a comma-separated list runs each', listOf('--interleave', (t) => (t === 'on' ? true : t === 'off' ? false : undefined), 'on or off'))
    .option('--argmax <list>', "the greedy token: fused (lm_head's workgroups write partial maxima, the next step's embedding reduces them) or dispatch (an argmax dispatch after lm_head); a comma-separated list runs each", listOf('--argmax', (t) => (t === 'fused' || t === 'dispatch' ? t : undefined), 'fused or dispatch'))
    .option('--global-grid <list>', "grid of the int8 kernels with a global x (o_proj, down_proj): default (the norm kernels' 264 workgroups) or one-round (a row group a subgroup worker); a comma-separated list runs each", listOf('--global-grid', (t) => (t === 'default' || t === 'one-round' ? t : undefined), 'default or one-round'))
    .option('--act <list>', "SwiGLU's output between the int8 gate/up and down_proj: f32 or f16; a comma-separated list runs each", listOf('--act', (t) => (t === 'f32' || t === 'f16' ? t : undefined), 'f32 or f16'))
    .option('--temperature <list>', 'sampling temperature of the decode: 0 greedy (argmax), above 0 sampled on the GPU with top-k 40, top-p 0.95, min-p 0.05; a comma-separated list runs each', listOf('--temperature', (t) => (Number.isFinite(Number(t)) && Number(t) >= 0 ? Number(t) : undefined), 'a number >= 0'))
    .option('--repeat <n>', 'runs of the whole list of variants (ABAB: the spread within a process)', parseIntOption('--repeat'), 1)
    .option('--worker-workgroup <n>', 'invocations a workgroup of the matvecs that normalise x first (256, 512 or 1024)', parseIntOption('--worker-workgroup'))
    .option('--skip-prefill', 'take the context as already in the KV cache (zeros) instead of prefilling it a step each: decode and attention figures at long contexts without the prefill time (prefill tok/s then 0)')
    .option('--unroll <n>', "units each lane loads per pass (subgroup matvecs); a comma-separated list runs each over the same weights ('default' or 0: the decoder's choice a matrix)", parseUnrolls)
    .option('--attention-workgroup <n>', 'invocations of the decode attention workgroup (256 or 1024)', parseIntOption('--attention-workgroup'))
    .option('--attention <kinds>', 'decode attention, a kind or a comma-separated list run over the same weights: split (chunks of at most 64 keys, a workgroup per KV head and chunk, every load issued first, then a merge; the default), split-gqa (the earlier grouped kernel: a lane a key row), split-heads (a workgroup per query head and chunk), single (a workgroup a head)', parseAttentionKinds, ['split'] as DecodeAttentionKind[])
    .addOption(new Option('--activations <kind>', 'x of the q4 matrix-vector products: int8 (blocks of 32, dot4I8Packed) or f32').choices(['int8', 'f32']).default('int8'))
    .addOption(new Option('--kv-cache <dtype>', 'KV cache storage: f16 (as generate runs it), f32, or both (each over the same weights)').choices(['f16', 'f32', 'both']).default('f16'))
    .option('--attention-splits <n>', 'chunks of keys of the split decode attention (default: at most 64 keys each; split-gqa/split-heads: about 64 each, at most 32)', parseIntOption('--attention-splits'))
    .option('--probe-mib <n>', 'read-bandwidth probe buffer (MiB)', parseIntOption('--probe-mib'), 1024)
    .option('--check <n>', 'first compare fused and unfused logits over n tokens and their greedy continuations (0: skip)', parseIntOption('--check'), 0)
    .option('--profile', 'log the time of each dispatch of a step (layer 0, lm_head, argmax)')
    .option('--no-subgroups', 'do not use subgroup operations')
    .option('--no-f16', 'do not use shader-f16 (nor the f16 subgroup matrices)')
    .option('--no-subgroup-matrix', 'do not use subgroup matrices (the prefill\'s f16 tensor-core kernel) although offered; also PDVM_SUBGROUP_MATRIX=0')
    .option('--no-dawn-toggles', 'Node: do not ask Dawn for allow_unsafe_apis / vulkan_enable_f16_on_nvidia (also PDVM_DAWN_TOGGLES=0)')
    .addOption(prefillInt8Option())
    .option('--prefill <n>', 'instead: prefill an n-token prompt through the engine\'s prefill path (like llama-bench ppN) and report prompt_tokens_per_second', parseIntOption('--prefill'))
    .option('--prefill-chunk <n>', 'with --prefill: tokens per prefill step (default the engine\'s, 512)', parseIntOption('--prefill-chunk'))
    .option('--runs <n>', 'with --prefill: timed runs, the median reported', parseIntOption('--runs'), 3)
    .option('--json', 'print the figures as one JSON object (with --path both, the unfused run under compared_with)')
    .option('--out <file>', 'also write the results (JSON array) to this file')
    .action(
      action(async (f: BenchFlags) => {
        if (!(f.density > 0 && f.density <= 1)) throw new Error('--density must be in (0, 1]');
        if (f.context < 2 || f.tokens < 2) throw new Error('--context and --tokens must be at least 2');
        const gpu = await Gpu.acquire({ disableSubgroups: !f.subgroups, disableShaderF16: !f.f16, ...(f.subgroupMatrix ? {} : { subgroupMatrix: false }), ...(f.dawnToggles ? {} : { dawnToggles: false }), ...(f.prefillInt8 ? { prefillInt8: prefillInt8Of(f.prefillInt8) } : {}) });
        try {
          if (f.prefill !== undefined) {
            const r = await runPrefillBench(gpu, {
              shape: f.shape, encoding: f.encoding, group: f.group, tile: f.tile, density: f.density, seed: f.seed, prompt: f.prefill, chunk: f.prefillChunk, runs: f.runs, profile: f.profile,
              log: (line) => process.stderr.write(`${line}\n`),
            });
            if (f.json) process.stdout.write(`${JSON.stringify(r)}\n`);
            else process.stdout.write(`${r.shape} ${r.encoding} pp${r.prompt_tokens}: ${r.prompt_tokens_per_second.toFixed(1)} tok/s (${r.prompt_ms.toFixed(1)} ms), ${r.prefill_kernel}, ${r.prefill_chunk} tokens a step${r.prefill_kernel !== 'f32' ? `, prompt attention: ${promptAttentionDescription(gpu)}` : ''}\n`);
            if (f.out) await writeFile(f.out, `${JSON.stringify(r, null, 2)}\n`);
            return;
          }
          const results = await runBench(gpu, {
            shape: f.shape, encoding: f.encoding, group: f.group, tile: f.tile, density: f.density, bitmap: f.bitmap, context: f.context,
            tokens: f.tokens, paths: f.path === 'both' ? ['fused', 'unfused'] : [f.path], seed: f.seed, lag: f.lag,
            workgroups: f.workgroups, normWorkgroups: f.normWorkgroups, int8Prologue: f.int8Prologue, interleave: f.interleave, argmax: f.argmax, globalGrid: f.globalGrid, act: f.act, temperatures: f.temperature, repeat: f.repeat, unroll: f.unroll, attentionWorkgroup: f.attentionWorkgroup, attention: f.attention, attentionSplits: f.attentionSplits, workerWorkgroup: f.workerWorkgroup, activations: f.activations, kvCaches: f.kvCache === 'both' ? ['f16', 'f32'] : [f.kvCache], check: f.check, skipPrefill: f.skipPrefill, profile: f.profile, probeBytes: f.probeMib * 2 ** 20, log: (line) => process.stderr.write(`${line}\n`),
          });
          if (f.json) process.stdout.write(`${JSON.stringify(results.length > 1 ? { ...results[0], compared_with: results.slice(1) } : results[0])}\n`);
          else {
            for (const r of results) {
              process.stdout.write(
                `${r.shape} ${r.encoding} ctx ${r.context} ${r.path}: ${r.decode_tokens_per_second.toFixed(1)} tok/s ` +
                  `(${r.decode_ms_per_token.toFixed(3)} ms), ${r.achieved_gbps.toFixed(0)}/${r.measured_read_gbps.toFixed(0)} GB/s = ` +
                  `${(r.bandwidth_fraction * 100).toFixed(1)}%, prefill ${r.prefill_tokens_per_second.toFixed(1)} tok/s, ` +
                  `${r.dispatches_per_token} dispatches/token, peak GPU ${(r.peak_gpu_bytes / 1e9).toFixed(2)} GB\n`,
              );
            }
          }
          if (f.out) await writeFile(f.out, `${JSON.stringify(results, null, 2)}\n`);
        } finally {
          gpu.destroy();
        }
      }),
    );
}
