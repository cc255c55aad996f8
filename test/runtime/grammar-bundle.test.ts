/**
 * xgrammar in a browser bundle: the grammar modules bundled by esbuild for the browser pull in no
 * Node built-in of ours (xgrammar's own `module`/`url` are only in its Node branch and are marked
 * external, as a bundler config must), and in Chromium (headless, when /usr/bin/chromium exists) the
 * bundle compiles a grammar and gives the mask the grammar allows.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { build } from 'esbuild';
import { ROOT } from '../helpers.js';

const CHROMIUM = '/usr/bin/chromium';

test('the grammar modules bundle for the browser and compile a grammar in Chromium', { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'pdvm-grammar-bundle-'));
  try {
    writeFileSync(join(dir, 'entry.ts'), `
      import { GrammarCompiler } from ${JSON.stringify(join(ROOT, 'src/runtime/grammar/compiler.ts'))};
      const vocab = { '{': 0, '}': 1, '"': 2, a: 3, b: 4, ':': 5, ' ': 6, ',': 7, '</s>': 8, ab: 9, '{"': 10 };
      const g = new GrammarCompiler({ model: { type: 'BPE', vocab }, added_tokens: [{ id: 8, content: '</s>', special: true }] }, 11);
      const f = await (await g.grammar('root ::= "ab" | "{}"')).newFilter([8]);
      document.title = 'mask ' + f.bitmask[0];
    `);
    const result = await build({ entryPoints: [join(dir, 'entry.ts')], bundle: true, platform: 'browser', format: 'esm', outfile: join(dir, 'bundle.js'), external: ['module', 'url'], metafile: true, logLevel: 'silent' });
    const ours = Object.keys(result.metafile.inputs).filter((p) => !p.includes('node_modules'));
    const nodeImports = Object.values(result.metafile.outputs).flatMap((o) => o.imports).filter((i) => i.external && !['module', 'url'].includes(i.path));
    assert.deepEqual(nodeImports, [], 'no Node built-ins beyond xgrammar\'s guarded ones');
    assert.ok(!ours.some((p) => p.includes('xgrammar-node')), `the Node loader stays out of the bundle: ${ours}`);
    if (!existsSync(CHROMIUM)) return void console.log('no chromium: the bundle was checked, not run');
    writeFileSync(join(dir, 'index.html'), '<!doctype html><title>loading</title><script type="module" src="bundle.js"></script>');
    const server = createServer((req, res) => {
      const file = join(dir, req.url === '/' ? 'index.html' : req.url!.slice(1));
      if (!existsSync(file)) return void res.writeHead(404).end();
      res.writeHead(200, { 'Content-Type': file.endsWith('.js') ? 'text/javascript' : 'text/html' }).end(readFileSync(file));
    }).listen(0, '127.0.0.1');
    await new Promise((r) => server.once('listening', r));
    const { chromium } = await import('playwright-core');
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
    try {
      const page = await browser.newPage();
      const errors: string[] = [];
      page.on('pageerror', (e) => errors.push(String(e)));
      await page.goto(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`);
      await page.waitForFunction(() => document.title.startsWith('mask'), null, { timeout: 60_000 }).catch(() => undefined);
      // "ab" or "{}": the first token may be '{' (0), 'a' (3) or 'ab' (9), not '{"' (10)
      assert.equal(await page.title(), `mask ${(1 << 0) | (1 << 3) | (1 << 9)}`, errors.join('\n'));
    } finally {
      await browser.close();
      server.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
