/**
 * Command-line arguments of the bench and scripts programs: node:util's parseArgs, plus `--help` (the
 * options with their defaults) and a one-line error with that list for an unknown or malformed option,
 * instead of a stack trace.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { basename } from 'node:path';

type Options = NonNullable<ParseArgsConfig['options']>;

function usage(options: Options, positionals: boolean): string {
  const lines = Object.entries(options).map(([name, o]) => {
    const value = o.type === 'string' ? ` <${o.multiple ? 'value, repeatable' : 'value'}>` : '';
    const dflt = o.default !== undefined ? ` (default: ${Array.isArray(o.default) ? o.default.join(', ') : String(o.default)})` : '';
    return `  --${name}${value}${dflt}`;
  });
  return `usage: ${basename(process.argv[1] ?? 'script')} [options]${positionals ? ' [args...]' : ''}\n${lines.join('\n')}\n  --help`;
}

export function scriptArgs<T extends ParseArgsConfig>(config: T): ReturnType<typeof parseArgs<T>> {
  const options = config.options ?? {};
  const argv = config.args ?? process.argv.slice(2);
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(usage(options, config.allowPositionals === true) + '\n');
    process.exit(0);
  }
  try {
    return parseArgs(config);
  } catch (e) {
    process.stderr.write(`error: ${(e as Error).message}\n${usage(options, config.allowPositionals === true)}\n`);
    process.exit(2);
  }
}
