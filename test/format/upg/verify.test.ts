/**
 * `pdvm verify` checks what loading checks, plus the checksums, and names the check that failed; the
 * version 2 header checksum catches every flipped bit in the header; version 1 files (the shipped demo
 * model) still load and verify, with a note that their metadata carries no checksum.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { compressModel } from '../../../src/compress/compress.js';
import { PdvmError } from '../../../src/errors.js';
import { MemorySource } from '../../../src/io/source.js';
import { UpgFile } from '../../../src/format/upg/reader.js';
import { sealHeader, UPG_VERSION } from '../../../src/format/upg/metadata.js';
import { VerifyError, verifyUpg } from '../../../src/format/upg/verify.js';
import { ARCH_MODELS, CLI, ROOT, rng } from '../../helpers.js';

const DEMO = join(ROOT, 'models', 'brown-llama-12m.upg');
let dir: string;
let good: Buffer;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pdvm-verify-'));
  const out = join(dir, 'llama.upg');
  await compressModel({ method: 'magnitude', sparsity: 0, pattern: 'unstructured', bits: 4, group: 64, skip: [], calibTokens: 64, input: ARCH_MODELS[0]!, output: out });
  good = await readFile(out);
});
after(() => rm(dir, { recursive: true, force: true }));

const verifyBytes = (bytes: Uint8Array, name = 'x.upg') => verifyUpg(async () => new MemorySource(name, bytes));

/** A copy with its metadata edited on purpose (the header checksum made to match again). */
function editMetadata(bytes: Buffer, edit: (meta: Record<string, string>) => void): Buffer {
  const length = Number(bytes.readBigUInt64LE(0));
  const json = JSON.parse(bytes.subarray(8, 8 + length).toString('utf8'));
  edit(json.__metadata__);
  const text = Buffer.from(JSON.stringify(json));
  assert.ok(text.length <= length, 'the edit must not grow the header');
  const out = Buffer.from(bytes);
  out.fill(0x20, 8, 8 + length);
  text.copy(out, 8);
  sealHeader(out.subarray(0, 8 + length));
  return out;
}

async function expectCheckFails(bytes: Buffer, check: string, message: RegExp): Promise<void> {
  await assert.rejects(verifyBytes(bytes), (e: unknown) => {
    assert.ok(e instanceof VerifyError, `VerifyError expected, got ${e}`);
    assert.equal(e.check, check, e.message);
    assert.match(e.message, message);
    return true;
  });
}

test(`a new artifact is version ${UPG_VERSION} with a header checksum, and passes every check`, async () => {
  const report = await verifyBytes(good);
  assert.equal(report.version, UPG_VERSION);
  assert.equal(report.metadataChecksummed, true);
  assert.deepEqual(report.checks, ['header', 'config', 'tensors', 'tokenizer', 'template', 'checksums']);
});

test('the shipped demo model (version 1) still loads and verifies, with a note that its metadata has no checksum', () => {
  const r = spawnSync(process.execPath, [CLI, 'verify', DEMO], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /UPG version 1; header, config, tensors, tokenizer, template, checksums checks pass/);
  assert.match(r.stdout, /note: a version 1 file carries no checksum of its metadata/);
});

test('each check names itself when it fails: config, tensors (config against tensors, a missing record), tokenizer, template, checksums', async () => {
  await expectCheckFails(editMetadata(good, (m) => (m.upg_config = m.upg_config!.replace('"intermediate_size": 256', '"intermediate_size": 200'))), 'tensors', /mlp\.gate_proj\.weight has shape \[256,128\] but .*\(upg_config\) implies \[200,128\]/);
  await expectCheckFails(editMetadata(good, (m) => (m.upg_config = '{"architectures": ["LlamaForCausalLM"]}')), 'config', /upg_config\): is missing the required key "hidden_size"/);
  await expectCheckFails(editMetadata(good, (m) => (m.upg_generation_config = '{"top_p": 7}')), 'config', /upg_generation_config\): "top_p" must be in \(0, 1\]/);
  await expectCheckFails(
    editMetadata(good, (m) => (m.upg_tensors = JSON.stringify(JSON.parse(m.upg_tensors!).filter((r: { name: string }) => r.name !== 'model.layers.1.mlp.up_proj.weight')))),
    'tensors',
    /missing tensor model\.layers\.1\.mlp\.up_proj\.weight/,
  );
  await expectCheckFails(editMetadata(good, (m) => (m.upg_tokenizer = '{"model": 5}')), 'tokenizer', /\(upg_tokenizer\): has no "model" object/);
  const tokenizer = JSON.stringify({ model: { type: 'BPE', vocab: { a: 0, b: 1, ab: 2 }, merges: ['a b'] }, added_tokens: [] });
  await expectCheckFails(editMetadata(good, (m) => {
    m.upg_tokenizer = tokenizer;
    m.upg_chat_template = '{% for %}';
  }), 'template', /\(upg_chat_template\): does not parse/);
  const flipped = Buffer.from(good);
  flipped[flipped.length - 300] ^= 0x01; // in lm_head's data, near the end
  await expectCheckFails(flipped, 'checksums', /fails its checksum/);
});

test('random bit flips in the header (length word, JSON, padding) are all caught: refused, never a crash or a pass', async () => {
  const length = Number(good.readBigUInt64LE(0));
  const random = rng(12);
  const caught: Record<string, number> = {};
  const flips = 200;
  for (let i = 0; i < flips; i++) {
    const bytes = Buffer.from(good);
    const at = Math.floor(random() * (8 + length));
    bytes[at] ^= 1 << Math.floor(random() * 8);
    try {
      await verifyBytes(bytes);
      assert.fail(`a flip at byte ${at} of the header passed verify`);
    } catch (e) {
      assert.ok(e instanceof PdvmError, `flip at ${at}: a typed error expected, got ${(e as Error).stack}`);
      const check = e instanceof VerifyError ? e.check : 'other';
      caught[check] = (caught[check] ?? 0) + 1;
    }
    // loading refuses it too
    await assert.rejects(UpgFile.open(new MemorySource('x.upg', bytes)), PdvmError);
  }
  console.log(`${flips} header bit flips: refused by check ${JSON.stringify(caught)}`);
});
