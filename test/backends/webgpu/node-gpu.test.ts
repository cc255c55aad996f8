/**
 * The `webgpu` package (Dawn) is optional: in a process where it cannot be found (a resolve hook
 * hides it), asking for the webgpu backend fails with WebGpuUnavailableError saying how to add it,
 * `auto` falls back to the CPU with that notice, and the CPU backend works.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { ROOT } from '../../helpers.js';

const HIDE_WEBGPU = `export async function resolve(specifier, context, next) {
  if (specifier === 'webgpu') throw Object.assign(new Error("Cannot find package 'webgpu'"), { code: 'ERR_MODULE_NOT_FOUND' });
  return next(specifier, context);
}`;

const SCRIPT = `
import { register } from 'node:module';
register('data:text/javascript,' + encodeURIComponent(${JSON.stringify(HIDE_WEBGPU)}));
const { loadModel, demoModel, WebGpuUnavailableError } = await import('pdvm');
const out = {};
try {
  await loadModel(demoModel(), { backend: 'webgpu' });
  out.webgpu = 'loaded';
} catch (e) {
  out.webgpu = { typed: e instanceof WebGpuUnavailableError, message: e.message };
}
const auto = await loadModel(demoModel(), { backend: 'auto' });
out.auto = { backend: auto.backend, notice: auto.backendNotice };
out.cpu = (await auto.generate('The jury said', { maxTokens: 4, temperature: 0 })).tokenIds.length;
await auto.dispose();
console.log(JSON.stringify(out));
`;

test('without the webgpu package: a typed error saying `npm install webgpu`; auto falls back to the CPU', async () => {
  const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', SCRIPT], { cwd: ROOT, env: { ...process.env, PDVM_SKIP_GPU_TESTS: '' } });
  const out = JSON.parse(stdout.trim().split('\n').pop()!);
  assert.equal(out.webgpu.typed, true, JSON.stringify(out.webgpu));
  assert.match(out.webgpu.message, /needs the optional "webgpu" package \(Dawn\), which is not installed: run `npm install webgpu`, or use the CPU backend/);
  assert.equal(out.auto.backend, 'cpu');
  assert.match(out.auto.notice, /using the CPU backend: .*npm install webgpu/);
  assert.equal(out.cpu, 4);
});
