/**
 * Lazy access to xgrammar (@mlc-ai/web-xgrammar, the WebAssembly build WebLLM uses): loaded on the
 * first constrained generation, never by a plain one. In Node through xgrammar-node.ts (a computed
 * specifier, so bundlers leave it out of browser bundles); in a browser by a plain dynamic import.
 *
 * xgrammar reports a bad grammar or schema by printing "[FATAL] file:line: message" through the
 * console.error it captured when its module started, then aborting the call. We start the module
 * with console.error routed through `report`, so the message can be caught and given to the caller;
 * calls are serialised so each message reaches the call that caused it.
 */
import type * as Xgrammar from '@mlc-ai/web-xgrammar';

export type XgrammarModule = typeof Xgrammar;

let loading: Promise<XgrammarModule> | null = null;
let capture: string[] | null = null;
let queue: Promise<unknown> = Promise.resolve();

const isNode = typeof process !== 'undefined' && typeof process.versions?.node === 'string';

async function importXgrammar(): Promise<XgrammarModule> {
  if (isNode) {
    const nodeLoader = './xgrammar-node.js';
    const { loadXgrammarModule } = (await import(/* @vite-ignore */ nodeLoader)) as { loadXgrammarModule: () => XgrammarModule };
    return loadXgrammarModule();
  }
  const m = (await import('@mlc-ai/web-xgrammar')) as XgrammarModule & { default?: XgrammarModule };
  if (m.Grammar) return m;
  if (m.default?.Grammar) return m.default;
  // a bundler that keeps the package an ES module (it is marked "type": "module") runs the UMD's
  // global branch: the library is then globalThis.xgrammar
  const global = (globalThis as { xgrammar?: XgrammarModule }).xgrammar;
  if (global?.Grammar) return global;
  throw new Error('@mlc-ai/web-xgrammar loaded but exposes no Grammar; check how the bundler handles its UMD build');
}

/** The xgrammar module, started (its WebAssembly instantiated) on the first call. */
export function xgrammar(): Promise<XgrammarModule> {
  loading ??= (async () => {
    const xg = await importXgrammar();
    const original = console.error;
    const report = (...args: unknown[]) => {
      if (capture) capture.push(args.map(String).join(' '));
      else original.apply(console, args);
    };
    // the module binds console.error when it starts, on its first call
    console.error = report;
    try {
      (await xg.Grammar.fromEBNF('root ::= "a"')).dispose();
    } finally {
      if (console.error === report) console.error = original;
    }
    return xg;
  })();
  loading.catch(() => (loading = null));
  return loading;
}

/** xgrammar's own message for a call it aborted, without its source location. */
function fatalMessage(lines: string[], error: unknown): string {
  const fatal = lines.find((l) => l.includes('[FATAL]')) ?? lines.find((l) => !/^Aborted\(/.test(l));
  if (fatal) return fatal.replace(/^.*\[FATAL\]\s*\S+?:\d+:\s*/, '').replace(/^Check failed: \(.*?\) is false:\s*/, '').trim();
  return error instanceof Error ? error.message : String(error);
}

/**
 * Runs one xgrammar call with its error messages captured; a failure rejects with
 * `wrap(message)`. Calls run one at a time.
 */
export function xgrammarCall<T>(call: (xg: XgrammarModule) => Promise<T> | T, wrap: (message: string) => Error): Promise<T> {
  const run = async () => {
    const xg = await xgrammar();
    const lines: string[] = [];
    capture = lines;
    try {
      return await call(xg);
    } catch (e) {
      throw wrap(fatalMessage(lines, e));
    } finally {
      capture = null;
    }
  };
  const result = queue.then(run, run);
  queue = result.catch(() => undefined);
  return result;
}
