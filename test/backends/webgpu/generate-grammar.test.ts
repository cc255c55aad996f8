/**
 * Grammar-constrained generation on WebGPU (lavapipe here), on brown-llama-12m: the token mask
 * kernel against the CPU's maskLogits; under a grammar that allows exactly what the unconstrained
 * greedy run wrote, the fused path (mask uploaded each step, lag 1, forced tokens fed without a
 * choice) and the unfused path (forward + CPU sampler) give the unconstrained tokens; a seeded
 * JSON-schema run gives the same tokens on the fused path twice and output that validates; the
 * fused path draws one Random(seed) number per sampled (not forced) token, as the CPU path does.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import AjvModule from 'ajv';
import { WebGpuEngine } from '../../../src/backends/webgpu/engine.js';
import { tokenMaskOp } from '../../../src/backends/webgpu/ops.js';
import { loadModel } from '../../../src/model/load.js';
import type { Engine } from '../../../src/runtime/engine.js';
import { generateAll, type GenerationContext } from '../../../src/runtime/generate.js';
import { GrammarCompiler, type TokenizerJson, jumpTokenizer } from '../../../src/runtime/grammar/compiler.js';
import { maskLogits } from '../../../src/runtime/token-filter.js';
import { BROWN, rng } from '../../helpers.js';
import { charsGrammar } from '../../runtime/grammar-helpers.js';
import { read as readF32, run, SKIP_GPU, storage, testGpu } from './gpu.js';

const Ajv = AjvModule.default;
const CONTEXT = 96;

test('webgpu token mask kernel = the CPU maskLogits', { skip: SKIP_GPU }, async () => {
  const gpu = await testGpu();
  const r = rng(3);
  for (const vocab of [31, 4096, 4099]) {
    const logits = Float32Array.from({ length: vocab }, () => r() * 8 - 4);
    const mask = new Uint32Array(Math.ceil(vocab / 32)).map(() => (r() * 2 ** 32) >>> 0);
    const lb = storage(gpu, logits), mb = storage(gpu, mask);
    await run(gpu, [tokenMaskOp(gpu, vocab, lb, mb)], 1);
    const got = await readF32(gpu, lb, vocab);
    const want = Float32Array.from(logits);
    maskLogits(want, new Int32Array(mask.buffer));
    const bad = [...got.keys()].find((i) => (want[i] === -Infinity ? got[i]! > -3e38 : got[i] !== want[i]));
    assert.equal(bad, undefined, `vocab ${vocab}: token ${bad}: ${got[bad ?? 0]} vs ${want[bad ?? 0]}`);
  }
});

test('webgpu generate under a grammar: fused and unfused give the unconstrained tokens where the grammar allows them; seeded JSON is reproducible and valid', { skip: SKIP_GPU }, async () => {
  const model = await loadModel(BROWN);
  const gpu = await testGpu();
  const fused = await WebGpuEngine.create(model, { contextLength: CONTEXT, gpu });
  const unfused = await WebGpuEngine.create(model, { contextLength: CONTEXT, gpu, decode: 'unfused' });
  try {
    assert.equal(fused.decode, 'fused', fused.decodeNotice);
    const ctx = (engine: Engine): GenerationContext => ({ engine, tokenizer: model.tokenizer, eosTokenIds: model.config.eosTokenIds });
    const grammars = new GrammarCompiler(model.tokenizer!.files.tokenizerJson as TokenizerJson, model.config.vocabSize, jumpTokenizer(model.tokenizer!));
    const prompt = model.tokenizer!.encode('The jury said that', true);
    const seq = fused.createSequence(), useq = unfused.createSequence();

    const free = await generateAll(ctx(fused), seq, prompt, { temperature: 0, maxTokens: 16 });
    const constraint = await grammars.grammar(charsGrammar(free.text));
    for (const [name, engine, s] of [['fused', fused, seq], ['unfused', unfused, useq]] as const) {
      const got = await generateAll(ctx(engine), s, prompt, { temperature: 0, maxTokens: 16, constraint });
      assert.deepEqual(got.tokenIds, free.tokenIds, `${name}: [${got.tokenIds}] vs unconstrained [${free.tokenIds}]`);
      assert.equal(got.finishReason, free.finishReason, name);
    }
    // a forced literal: fed without choices, then EOS
    const literal = ' he was a good man.';
    const forced = await generateAll(ctx(fused), seq, prompt, { temperature: 1, seed: 2, maxTokens: 24, constraint: await grammars.grammar(`root ::= ${JSON.stringify(literal)}`) });
    assert.equal(forced.text, literal);
    assert.equal(forced.finishReason, 'stop');

    const schema = { type: 'object', properties: { name: { type: 'string', pattern: '^[a-z]{1,6}$' }, n: { type: 'integer', minimum: 0, maximum: 9 } }, required: ['name', 'n'], additionalProperties: false };
    const json = await grammars.responseFormat({ type: 'json_schema', schema });
    const validate = new Ajv().compile(schema);
    const options = { temperature: 1, seed: 11, maxTokens: 40, constraint: json };
    const a = await generateAll(ctx(fused), seq, prompt, options);
    const b = await generateAll(ctx(fused), seq, prompt, options);
    assert.deepEqual(a.tokenIds, b.tokenIds, 'seeded constrained sampling is reproducible');
    assert.equal(a.finishReason, 'stop', a.text);
    assert.ok(validate(JSON.parse(a.text)), `${a.text}: ${JSON.stringify(validate.errors)}`);
    const c = await generateAll(ctx(unfused), useq, prompt, options);
    assert.ok(c.finishReason !== 'stop' || validate(JSON.parse(c.text)), c.text);
    console.log(`fused ${JSON.stringify(a.text)}; unfused ${JSON.stringify(c.text)}`);
    seq.dispose();
    useq.dispose();
  } finally {
    fused.dispose();
    unfused.dispose();
  }
});
