/**
 * The package's entry points: the browser entry bundles with esbuild for platform=browser without a
 * single Node built-in (nor the Node-only modules: local files, Dawn, the server), and the Node entry
 * resolves through package.json "exports" with the demo model reachable.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, mkdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { promisify } from 'node:util';
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

test("the browser entry bundles whole, dependencies included: no Node built-in but web-xgrammar's two Node-branch requires", async () => {
  // @mlc-ai/web-xgrammar's UMD bundle requires 'url' and 'module' inside `if (ENVIRONMENT_IS_NODE)`;
  // a browser build must stub those two (scripts/demo.ts does). Any other Node built-in is a failure.
  const builtins = new Set(builtinModules.flatMap((m) => [m, `node:${m}`]));
  const found: string[] = [];
  const result = await build({
    entryPoints: [join(ROOT, 'dist', 'src', 'browser.js')],
    bundle: true,
    platform: 'browser',
    format: 'esm',
    write: false,
    metafile: true,
    logLevel: 'silent',
    plugins: [
      {
        name: 'node-builtins',
        setup(b) {
          b.onResolve({ filter: /.*/ }, (args) => {
            if (!builtins.has(args.path)) return undefined;
            const allowed = /web-xgrammar/.test(args.importer) && (args.path === 'url' || args.path === 'module');
            if (!allowed) found.push(`${args.path} (imported by ${args.importer})`);
            return { path: args.path, namespace: 'stub' };
          });
          b.onLoad({ filter: /.*/, namespace: 'stub' }, () => ({ contents: 'export default {};', loader: 'js' }));
        },
      },
    ],
  });
  assert.deepEqual(found, [], 'Node built-ins in the browser bundle');
  assert.ok(Object.keys(result.metafile.inputs).some((f) => f.includes('web-xgrammar')), 'the bundle holds its dependencies');
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
  const errors = ['PdvmError', 'InvalidInputError', 'ModelFormatError', 'ChatTemplateError', 'UnsupportedArchitectureError', 'AbortError', 'ContextLengthError', 'QueueFullError', 'ModelDisposedError', 'GrammarError',
    'DownloadError', 'HttpStatusError', 'NetworkError', 'IncompleteDownloadError', 'StorageQuotaError', 'WebGpuUnavailableError', 'GpuOutOfMemoryError', 'GpuValidationError', 'DeviceLostError'];
  assert.deepEqual(errors.filter((e) => typeof (browser as Record<string, unknown>)[e] !== 'function'), [], 'typed errors missing from the exports');
});

/**
 * A consumer project whose node_modules/pdvm is this package (dist/ built), type-checked by the
 * project's TypeScript with --strict and without skipLibCheck, so every published .d.ts is checked.
 */
async function typeCheckConsumer(kind: 'node' | 'browser'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `pdvm-consumer-${kind}-`));
  try {
    await mkdir(join(dir, 'node_modules', '@types'), { recursive: true });
    await symlink(ROOT, join(dir, 'node_modules', 'pdvm'));
    for (const dep of ['@huggingface', '@mlc-ai', ...(kind === 'node' ? ['commander', 'cli-progress', 'prom-client', 'undici-types', '@types/node'] : [])]) {
      if (existsSync(join(ROOT, 'node_modules', dep))) await symlink(join(ROOT, 'node_modules', dep), join(dir, 'node_modules', dep));
    }
    await writeFile(join(dir, 'package.json'), JSON.stringify({ name: 'consumer', type: 'module', private: true }));
    const compilerOptions =
      kind === 'node'
        ? { strict: true, noEmit: true, module: 'nodenext', moduleResolution: 'nodenext', target: 'es2022', lib: ['es2022'], types: ['node'] }
        : { strict: true, noEmit: true, module: 'esnext', moduleResolution: 'bundler', customConditions: ['browser'], target: 'es2022', lib: ['es2022', 'dom'], types: [] };
    await writeFile(join(dir, 'tsconfig.json'), JSON.stringify({ compilerOptions, files: ['main.ts'] }));
    const main =
      kind === 'node'
        ? `import { loadModel, demoModel, startServer, PdvmError, HttpStatusError, type Model, type LoadModelOptions } from 'pdvm';
const options: LoadModelOptions = { backend: 'auto', headers: { Authorization: 'Bearer x' } };
const model: Model = await loadModel(demoModel(), options);
const r = await model.generate('The jury said', { maxTokens: 4, temperature: 0 });
const server = await startServer(model, { port: 0 });
console.log(r.text, server, PdvmError.name, HttpStatusError.name);\n`
        : `import { loadModel, demoModel, listCachedModels, deleteCachedModel, NetworkError, StorageQuotaError, type LoadProgress } from 'pdvm';
const file = new File([new Uint8Array(8)], 'm.upg');
const model = await loadModel(file, { backend: 'webgpu', signal: new AbortController().signal, onProgress: (p: LoadProgress) => console.log(p.phase, p.loadedBytes) });
for await (const c of model.generate('The jury said', { maxTokens: 4, stream: true })) console.log(c.text);
console.log(demoModel(), await listCachedModels(), await deleteCachedModel(), NetworkError.name, StorageQuotaError.name);\n`;
    await writeFile(join(dir, 'main.ts'), main);
    const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
    try {
      await promisify(execFile)(process.execPath, [tsc, '-p', dir], { cwd: dir });
      return '';
    } catch (e) {
      return String((e as { stdout?: string }).stdout || (e as Error).message);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('the published declarations type-check in a strict Node consumer and a strict browser consumer, without skipLibCheck', async () => {
  for (const kind of ['node', 'browser'] as const) {
    const errors = await typeCheckConsumer(kind);
    assert.equal(errors, '', `${kind} consumer: tsc --strict reports\n${errors.split('\n').slice(0, 20).join('\n')}`);
  }
});
