/**
 * Messages speak to the caller they reach. The engine writes them for the library, naming options as
 * a caller passes them to loadModel (`backend: 'cpu'`, `contextLength`, `decode: 'unfused'`); the CLI
 * rewrites those into its flags before printing, and a page into plain words.
 */
const CLI: [RegExp, string][] = [
  [/backend: '(cpu|webgpu|auto)'/g, '--backend $1'],
  [/decode: '(fused|unfused)'/g, '--decode $1'],
  [/\bcontextLength\b/g, '--context'],
  [/\bmaxConcurrency\b/g, '--max-concurrency'],
  [/\bprefixCacheBytes\b/g, '--prefix-cache-mb'],
];

const PLAIN: [RegExp, string][] = [
  [/backend: 'cpu'/g, 'the CPU backend'],
  [/backend: 'webgpu'/g, 'the WebGPU backend'],
  [/backend: 'auto'/g, 'automatic backend choice'],
  [/decode: '(fused|unfused)'/g, 'the $1 decode path'],
  [/\bcontextLength\b/g, 'context length'],
  [/\bmaxConcurrency\b/g, 'number of generations at once'],
  [/\bprefixCacheBytes\b/g, 'prefix cache budget'],
];

const rewrite = (message: string, table: [RegExp, string][]) => table.reduce((m, [from, to]) => m.replace(from, to), message);

/** A library message in the CLI's terms (flags). */
export function forCli(message: string): string {
  return rewrite(message, CLI);
}

/** A library message in plain words, for a page's reader. */
export function inPlainWords(message: string): string {
  return rewrite(message, PLAIN);
}
