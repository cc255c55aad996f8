/**
 * `npx pdvm serve` then `kill -TERM <npx pid>`: npm exits on SIGTERM without passing the signal to the
 * server it started. pdvm, started by npm exec (npm_command=exec), notices its parent is gone and stops
 * as on SIGTERM. npm itself is stood in for by a parent process that spawns the CLI the same way and
 * exits on SIGTERM without forwarding it (running npx here would install into the npx cache and build).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { CLI } from '../helpers.js';

test('serve under npm exec stops when the npx process is killed with SIGTERM', async () => {
  const parentScript = `
    const { spawn } = require('node:child_process');
    const child = spawn(process.execPath, ${JSON.stringify([CLI, 'serve', '--port', '0'])}, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, npm_command: 'exec' } });
    child.stderr.on('data', (d) => process.stderr.write(d));
    process.stdout.write(String(child.pid) + '\\n');
    process.on('SIGTERM', () => process.exit(143)); // like npm: exits, passes nothing on
  `;
  const npm = spawn(process.execPath, ['-e', parentScript], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  npm.stderr.setEncoding('utf8');
  npm.stderr.on('data', (d: string) => (err += d));
  const serverPid = await new Promise<number>((resolve) => npm.stdout.once('data', (d) => resolve(Number(String(d).trim()))));
  const t0 = Date.now();
  while (!/serving .* on http/.test(err)) {
    if (Date.now() - t0 > 60_000) assert.fail(`the server never started:\n${err}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  npm.kill('SIGTERM');
  const alive = () => {
    try {
      process.kill(serverPid, 0);
      return true;
    } catch {
      return false;
    }
  };
  const t1 = Date.now();
  while (alive()) {
    if (Date.now() - t1 > 15_000) {
      process.kill(serverPid, 'SIGKILL');
      assert.fail(`the server outlived its npx parent:\n${err}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
});
