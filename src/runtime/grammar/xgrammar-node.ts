/**
 * Node-only loader of @mlc-ai/web-xgrammar. Its lib/index.js is a UMD bundle (Emscripten, the
 * WebAssembly inlined as base64) in a package marked "type": "module", so Node's import() reads it as
 * an ES module and its Node branch fails on `require` / `__filename`. Evaluated here as the CommonJS
 * script it is, with a real require and __filename, it runs unchanged. Reached only through a
 * computed import() in xgrammar.ts, so browser bundles never see node: modules.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';

export function loadXgrammarModule(): unknown {
  const require = createRequire(import.meta.url);
  const file = require.resolve('@mlc-ai/web-xgrammar');
  const source = readFileSync(file, 'utf8');
  const module = { exports: {} as Record<string, unknown> };
  // eslint-disable-next-line @typescript-eslint/no-implied-eval
  new Function('exports', 'require', 'module', '__filename', '__dirname', source)(module.exports, createRequire(file), module, file, dirname(file));
  return module.exports;
}
