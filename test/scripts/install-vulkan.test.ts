/**
 * scripts/install-vulkan.sh's set-up paths, without apt-get: as a user with sudo it runs itself again
 * through sudo; as a user without sudo it says to run it as root (exit 1); as root it needs no sudo
 * (the README's `bash scripts/install-vulkan.sh` then works in containers that have none).
 * The user is `nobody` through setpriv; a stand-in sudo records how it was called.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from '../helpers.js';

const asRoot = process.getuid?.() === 0;
const setpriv = ['/usr/bin/setpriv', '/bin/setpriv'].find(existsSync);
const skip = !asRoot || !setpriv ? 'needs root and setpriv to run the script as another user' : false;

function asNobody(dir: string, path: string): { status: number | null; stderr: string } {
  const r = spawnSync(setpriv!, ['--reuid=65534', '--regid=65534', '--clear-groups', 'env', '-i', `PATH=${path}`, 'PDVM_VULKAN_FORCE=1', 'bash', join(dir, 'install-vulkan.sh')], { encoding: 'utf8' });
  return { status: r.status, stderr: r.stderr };
}

test('install-vulkan.sh as a user: through sudo where there is one, else a one-line hint to run it as root', { skip }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'pdvm-vulkan-'));
  try {
    chmodSync(dir, 0o777);
    copyFileSync(join(ROOT, 'scripts', 'install-vulkan.sh'), join(dir, 'install-vulkan.sh'));
    chmodSync(join(dir, 'install-vulkan.sh'), 0o755);
    // a PATH with bash and id but no sudo
    const bare = join(dir, 'bare');
    spawnSync('mkdir', [bare]);
    for (const tool of ['bash', 'id']) {
      const found = spawnSync('bash', ['-c', `command -v ${tool}`], { encoding: 'utf8' }).stdout.trim();
      symlinkSync(found, join(bare, tool));
    }
    chmodSync(bare, 0o755);
    const none = asNobody(dir, bare);
    assert.equal(none.status, 1, none.stderr);
    assert.match(none.stderr, /needs root and there is no sudo here; run this script as root/);
    assert.equal(none.stderr.trim().split('\n').length, 1);

    // a stand-in sudo that records its arguments
    const withSudo = join(dir, 'withsudo');
    spawnSync('cp', ['-a', bare, withSudo]);
    writeFileSync(join(withSudo, 'sudo'), `#!${join(bare, 'bash')}\necho "$@" > ${join(dir, 'sudo-called')}\n`);
    chmodSync(join(withSudo, 'sudo'), 0o755);
    const viaSudo = asNobody(dir, withSudo);
    assert.equal(viaSudo.status, 0, viaSudo.stderr);
    assert.match(readFileSync(join(dir, 'sudo-called'), 'utf8'), /bash .*install-vulkan\.sh/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('install-vulkan.sh as root does not call sudo (the driver here is installed: it exits 0 at once)', { skip: !asRoot }, () => {
  const r = spawnSync('env', ['PATH=/usr/sbin:/usr/bin:/sbin:/bin', 'bash', join(ROOT, 'scripts', 'install-vulkan.sh')], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
});
