/**
 * The bench and scripts programs answer `--help` with their options and an unknown option with one
 * error line and that list (exit 2), not a stack trace (scripts/args.ts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { ROOT } from '../helpers.js';

const LOAD_TEST = join(ROOT, 'dist', 'scripts', 'load-test.js');

test('a script lists its options for --help and exits 0', () => {
  const r = spawnSync(process.execPath, [LOAD_TEST, '--help'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^usage: load-test\.js \[options\]/);
  assert.match(r.stdout, /--streams <value> \(default: 32\)/);
  assert.match(r.stdout, /--batched-step\n/);
});

test('a script answers an unknown option with one error line and its options, exit 2', () => {
  const r = spawnSync(process.execPath, [LOAD_TEST, '--bogus'], { encoding: 'utf8' });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /^error: Unknown option '--bogus'/);
  assert.match(r.stderr, /usage: load-test\.js/);
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
});
