#!/usr/bin/env node
/** The `pdvm` command: one subcommand per file in ./commands. */
import { Command, CommanderError } from 'commander';
import { readFileSync } from 'node:fs';
import { generateCommand } from './commands/generate.js';
import { perplexityCommand } from './commands/perplexity.js';
import { inspectCommand } from './commands/inspect.js';
import { compressCommand, verifyCommand } from './commands/compress.js';
import { serveCommand } from './commands/serve.js';
import { benchCommand } from './commands/bench.js';
import { reportAndExit } from './common.js';
// Node's platform for the core: local files, and Dawn for --backend webgpu
import '../io/node-files.js';
import '../backends/webgpu/node-gpu.js';

// a bundle (esbuild, the device kit) has no package.json three folders up: fall back to "unknown"
const pkg = ((): { version: string } => {
  try {
    return JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };
  } catch {
    return { version: 'unknown' };
  }
})();

// stdout closed early (`pdvm generate ... | head -c 20`): the reader has what it wanted, so end quietly
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(0);
  throw e;
});

process.stderr.on('error', () => {}); // nowhere left to report to

const program = new Command('pdvm')
  .description('run sparse and quantized LLMs at the speed of GPU memory')
  .version(pkg.version)
  .showHelpAfterError('(run with --help for usage)')
  .exitOverride();

for (const cmd of [generateCommand(), perplexityCommand(), inspectCommand(), serveCommand(), compressCommand(), verifyCommand(), benchCommand()]) {
  program.addCommand(cmd.showHelpAfterError('(run with --help for usage)').exitOverride());
}

try {
  await program.parseAsync(process.argv);
} catch (e) {
  if (e instanceof CommanderError) process.exit(e.exitCode === 0 ? 0 : 1);
  reportAndExit(e);
}
