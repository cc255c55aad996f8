/**
 * UPG artifacts end to end on the tiny architecture fixtures: what the loader returns is exactly what the
 * compressor encoded, the engine's logits from the encodings equal those of the unpacked dense weights,
 * the layout rules hold (alignment, order), and each kind of bad file is refused with a clear message.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { compressModel, encodeMatrix } from '../../../src/compress/compress.js';
import { planTensor, type CompressOptions } from '../../../src/compress/plan.js';
import { CpuEngine } from '../../../src/backends/cpu/engine.js';
import { CheckpointTensors } from '../../../src/format/hf.js';
import type { EncodedTensor } from '../../../src/format/upg/encodings/index.js';
import { loadModel } from '../../../src/model/load.js';
import { sealHeader } from '../../../src/format/upg/metadata.js';
import { DenseTensor, type WeightTensor } from '../../../src/model/tensor.js';
import type { ModelWeights } from '../../../src/model/weights.js';
import { architectures } from '../../../src/model/architectures/index.js';
import { ARCH_MODELS, CLI, MODELS, assertClose } from '../../helpers.js';

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pdvm-upg-'));
});
after(() => rm(dir, { recursive: true, force: true }));

const base: CompressOptions = { method: 'magnitude', sparsity: 0, pattern: 'unstructured', bits: 8, group: 64, skip: [], calibTokens: 64 };
const VARIANTS: [string, Partial<CompressOptions>][] = [
  ['q8', {}],
  ['q4-g32', { bits: 4, group: 32 }],
  ['bitmap-60-q4', { sparsity: 0.6, bits: 4, group: 64 }],
  ['bitmap-attn30-mlp70-q8', { attnSparsity: 0.3, mlpSparsity: 0.7, bits: 8, group: 128 }],
  ['nm-2:4-q4', { pattern: '2:4', bits: 4, group: 32 }],
  ['nm-4:8-q8', { pattern: '4:8', bits: 8 }],
  ['csr-90', { pattern: 'csr', sparsity: 0.9, bits: 8 }],
  ['dense-bf16-skip', { bits: 16, skip: ['embed', 'lm_head'] }],
];

function denseCopy(w: ModelWeights): ModelWeights {
  const d = (t: WeightTensor) => new DenseTensor(t.rows, t.cols, (t as EncodedTensor).unpack());
  const embed = d(w.embed);
  return {
    embed,
    finalNorm: w.finalNorm,
    lmHead: w.lmHead === w.embed ? embed : d(w.lmHead),
    layers: w.layers.map((l) => ({ ...l, qkv: l.qkv.map(d), o: d(l.o), gateUp: l.gateUp.map(d), down: d(l.down) })),
  };
}

for (const modelDir of ARCH_MODELS) {
  for (const [variant, options] of VARIANTS) {
    test(`${basename(modelDir)} ${variant}: loads exactly what was encoded; logits match the unpacked weights`, async () => {
      const output = join(dir, `${basename(modelDir)}-${variant}.upg`);
      const opts = { ...base, ...options };
      // small row blocks (about 7 rows of 128) so big matrices are packed in pieces and joined
      await compressModel({ ...opts, input: modelDir, output, blockWeights: 900 });
      const model = await loadModel(output);
      const bytes = await readFile(output);
      assert.equal(bytes.length % 256, 0, 'the file ends on a 256-byte boundary');

      // every tensor as encoded from the checkpoint, and vectors as stored there
      const ckpt = await CheckpointTensors.open(modelDir);
      try {
        const specs = architectures[model.config.architecture].tensorSpecs(model.config, (n) => ckpt.has(n));
        const byName = new Map<string, WeightTensor>();
        const w = model.weights;
        byName.set('model.embed_tokens.weight', w.embed);
        if (w.lmHead !== w.embed) byName.set('lm_head.weight', w.lmHead);
        for (const spec of specs) {
          if (spec.kind !== 'matrix' || !byName.has(spec.name)) continue;
          const src = await ckpt.readF32(spec.name);
          const want = encodeMatrix(src, spec.shape[0]!, spec.shape[1]!, planTensor(spec, ckpt.info(spec.name).dtype, opts), null).unpack();
          assert.deepEqual((byName.get(spec.name) as EncodedTensor).unpack(), want, `${spec.name}`);
        }
        assert.deepEqual(w.finalNorm, await ckpt.readF32('model.norm.weight'));
        assert.equal(model.tensors.length, specs.length);
      } finally {
        await ckpt.close();
      }

      const ids = Array.from({ length: 12 }, (_, i) => (i * 37 + 5) % model.config.vocabSize);
      const fromEncodings = new CpuEngine(model.config, model.weights, 32);
      const fromDense = new CpuEngine(model.config, denseCopy(model.weights), 32);
      const a = await fromEncodings.forward(fromEncodings.createSequence(), ids, true);
      const b = await fromDense.forward(fromDense.createSequence(), ids, true);
      assertClose(a, b, 1e-5, `${basename(modelDir)} ${variant} logits`);
    });
  }
}

// ---- bad input ----

const LLAMA = join(MODELS, 'arch', 'llama');
let good: Buffer;
let goodPath: string;

async function artifact(): Promise<Buffer> {
  if (!good) {
    goodPath = join(dir, 'good.upg');
    await compressModel({ ...base, bits: 4, input: LLAMA, output: goodPath });
    good = await readFile(goodPath);
  }
  return good;
}

function header(bytes: Buffer): { json: Record<string, any>; length: number } {
  const length = Number(bytes.readBigUInt64LE(0));
  return { json: JSON.parse(bytes.subarray(8, 8 + length).toString('utf8')), length };
}

/** A copy with its header JSON edited; the header keeps its size (padded with spaces). */
function withHeader(bytes: Buffer, edit: (h: Record<string, any>) => void): Buffer {
  const { json, length } = header(bytes);
  edit(json);
  const text = Buffer.from(JSON.stringify(json));
  assert.ok(text.length <= length, 'the edit must not grow the header');
  const out = Buffer.from(bytes);
  out.fill(0x20, 8, 8 + length);
  text.copy(out, 8);
  // an edit on purpose (a writer's bug, not corruption): the header checksum is made to match again
  sealHeader(out.subarray(0, 8 + length));
  return out;
}

function editRecords(edit: (records: any[]) => void) {
  return (h: Record<string, any>) => {
    const records = JSON.parse(h.__metadata__.upg_tensors);
    edit(records);
    h.__metadata__.upg_tensors = JSON.stringify(records);
  };
}

async function loadFails(bytes: Buffer, name: string, pattern: RegExp): Promise<void> {
  const path = join(dir, name);
  await writeFile(path, bytes);
  await assert.rejects(loadModel(path), (e: Error) => {
    assert.match(e.message, pattern);
    return true;
  });
}

test('layout: every buffer starts at a multiple of 256 bytes, tensors in layer order', async () => {
  const bytes = await artifact();
  const { json, length } = header(bytes);
  assert.equal((8 + length) % 256, 0);
  const names = Object.keys(json).filter((k) => k !== '__metadata__');
  for (const n of names) assert.equal(json[n].data_offsets[0] % 256, 0, `${n} offset`);
  const records = JSON.parse(json.__metadata__.upg_tensors).map((r: { name: string }) => r.name);
  const layerOf = (n: string) => (n.startsWith('model.embed') ? -1 : n.startsWith('model.layers.') ? Number(n.split('.')[2]) : 1e9);
  const layers = records.map(layerOf);
  assert.deepEqual(layers, [...layers].sort((a: number, b: number) => a - b));
  assert.equal(json.__metadata__.format, 'upg');
});

test('a truncated artifact is refused as truncated', async () => {
  const bytes = await artifact();
  await loadFails(bytes.subarray(0, Math.floor(bytes.length * 0.6)), 'truncated.upg', /truncated/);
});

test('a flipped byte in a tensor fails its checksum, naming the tensor (load and pdvm verify)', async () => {
  const bytes = Buffer.from(await artifact());
  const { json, length } = header(bytes);
  const target = 'model.layers.1.mlp.up_proj.weight';
  const [begin, end] = json[`${target}:qweight`].data_offsets;
  bytes[8 + length + Math.floor((begin + end) / 2)] ^= 0x10;
  await loadFails(bytes, 'flipped.upg', new RegExp(`tensor ${target.replace(/\./g, '\\.')} fails its checksum`));
  const r = spawnSync(process.execPath, [CLI, 'verify', join(dir, 'flipped.upg')], { encoding: 'utf8' });
  assert.equal(r.status, 1);
  assert.match(r.stderr, new RegExp(`${target.replace(/\./g, '\\.')} fails its checksum`));
  const ok = spawnSync(process.execPath, [CLI, 'verify', goodPath], { encoding: 'utf8' });
  assert.equal(ok.status, 0, ok.stderr);
});

test('an unknown format version is refused with a hint', async () => {
  const bytes = withHeader(await artifact(), (h) => {
    h.__metadata__.upg_version = '99';
  });
  await loadFails(bytes, 'version.upg', /UPG format version "99"; this pdvm reads versions 1 and 2: upgrade pdvm/);
});

test('a missing tensor is named', async () => {
  const bytes = withHeader(await artifact(), editRecords((records) => {
    const i = records.findIndex((r) => r.name === 'model.layers.0.self_attn.o_proj.weight');
    records.splice(i, 1);
  }));
  await loadFails(bytes, 'missing.upg', /missing tensor model\.layers\.0\.self_attn\.o_proj\.weight/);
});

test('an encoding the reader does not know is refused', async () => {
  const bytes = withHeader(await artifact(), editRecords((records) => {
    records.find((r) => r.name === 'model.layers.2.mlp.down_proj.weight').encoding = 'q3';
  }));
  await loadFails(bytes, 'encoding.upg', /model\.layers\.2\.mlp\.down_proj\.weight: uses encoding "q3", which this reader does not know/);
});

test('parameters that do not match the stored buffers are refused', async () => {
  const bytes = withHeader(await artifact(), editRecords((records) => {
    records.find((r) => r.name === 'model.layers.0.mlp.gate_proj.weight').params.group = 32;
  }));
  await loadFails(bytes, 'params.upg', /gate_proj\.weight: buffer \w+ is .* but encoding q4 .* implies/);
});

test('a plain safetensors file is not mistaken for UPG', async () => {
  await loadFails(await readFile(join(LLAMA, 'model.safetensors')), 'plain.upg', /not a UPG artifact/);
});
