/**
 * The package's entry points: the browser entry bundles with esbuild for platform=browser without a
 * single Node built-in (nor the Node-only modules: local files, Dawn, the server), and the Node entry
 * resolves through package.json "exports" with the demo model reachable.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { builtinModules } from 'node:module';
import { join } from 'node:path';
import { build } from 'esbuild';
import { ROOT } from './helpers.js';

async function bundleBrowserEntry(external: string[] = []) {
  const result = await build({
    entryPoints: [join(ROOT, 'dist', 'src', 'browser.js')],
    bundle: true,
    platform: 'browser',
    format: 'esm',
    write: false,
    metafile: true,
    logLevel: 'silent',
    external,
  });
  const inputs = Object.keys(result.metafile.inputs);
  const builtins = new Set(builtinModules.flatMap((m) => [m, `node:${m}`]));
  const nodeImports = Object.values(result.metafile.inputs).flatMap((i) => i.imports.filter((im) => builtins.has(im.path) || im.path.startsWith('node:')).map((im) => im.path));
  assert.deepEqual(nodeImports, [], 'Node built-ins imported by the browser bundle');
  const nodeOnly = inputs.filter((f) => /node-files|node-gpu|xgrammar-node|src\/server\/|src\/cli\/|node_modules\/webgpu\//.test(f));
  assert.deepEqual(nodeOnly, [], 'Node-only modules in the browser bundle');
  assert.ok(inputs.some((f) => f.endsWith('dist/src/api/model.js')), 'the bundle holds the library');
  console.log(`browser bundle: ${inputs.length} modules, ${(result.outputFiles[0]!.contents.length / 1024).toFixed(0)} KiB`);
}

test("the browser entry bundles for platform=browser: pdvm's own modules import no Node built-in and no Node-only module", async () => {
  // web-xgrammar is left out here: the next test covers it
  await bundleBrowserEntry(['@mlc-ai/web-xgrammar']);
});

test('the browser entry bundles whole, dependencies included, for platform=browser', { todo: "@mlc-ai/web-xgrammar's UMD bundle requires 'url' and 'module' in its Node branch (grammar's area)" }, async () => {
  await bundleBrowserEntry();
});

test('"pdvm" resolves to the Node entry in Node; the demo model is reachable from it and as pdvm/models/...', async () => {
  const node = await import('pdvm');
  const browser = await import('pdvm/browser');
  assert.equal(node.loadModel, browser.loadModel);
  assert.equal(typeof (node as Record<string, unknown>).startServer, 'function');
  assert.equal((browser as Record<string, unknown>).startServer, undefined);
  assert.ok(existsSync(node.demoModel()), node.demoModel());
  assert.match(browser.demoModel(), /^file:.*\/models\/brown-llama-12m\.upg$/);
  assert.equal(import.meta.resolve('pdvm/models/brown-llama-12m.upg'), browser.demoModel());
});
