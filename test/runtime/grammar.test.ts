/**
 * Grammar-constrained generation on the CPU: the bitmask helpers against a plain loop; the CPU
 * sampler with a mask that allows everything against the sampler without one (same tokens, draw for
 * draw), and with a random mask (only allowed tokens, greedy = argmax over them); generate() under a
 * grammar that allows exactly what the unconstrained greedy run wrote gives the same tokens (fewer
 * forward calls through forced tokens); JSON schemas at temperature 1 give output that parses and
 * validates (ajv) whenever it ends with 'stop'; empty, unsatisfiable and uncompilable grammars fail
 * at once with GrammarError.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import AjvModule from 'ajv';
const Ajv = AjvModule.default;
import { CpuEngine } from '../../src/backends/cpu/engine.js';
import { loadModel, type LoadedModel } from '../../src/model/load.js';
import type { Engine } from '../../src/runtime/engine.js';
import { generateAll, type GenerationContext } from '../../src/runtime/generate.js';
import { GrammarCompiler, GrammarError, type TokenizerJson, jumpTokenizer } from '../../src/runtime/grammar/compiler.js';
import { unenforcedKeywords } from '../../src/runtime/grammar/schema.js';
import { argmax, resolveSampling, Sampler } from '../../src/runtime/sampling.js';
import { countAllowed, isAllowed, maskLogits } from '../../src/runtime/token-filter.js';
import { BROWN, rng } from '../helpers.js';
import { charsGrammar } from './grammar-helpers.js';

let loaded: LoadedModel | undefined;
async function setup(): Promise<{ ctx: GenerationContext; grammars: GrammarCompiler; forwards: () => number }> {
  loaded ??= await loadModel(BROWN);
  const cpu = new CpuEngine(loaded.config, loaded.weights, 128);
  let forwards = 0;
  const engine: Engine = {
    backend: 'cpu',
    config: cpu.config,
    contextLength: cpu.contextLength,
    createSequence: () => cpu.createSequence(),
    forward: (seq, tokens, all) => (forwards++, cpu.forward(seq, tokens, all)),
    dispose: () => cpu.dispose(),
  };
  const grammars = new GrammarCompiler(loaded.tokenizer!.files.tokenizerJson as TokenizerJson, loaded.config.vocabSize, jumpTokenizer(loaded.tokenizer!));
  return { ctx: { engine, tokenizer: loaded.tokenizer, eosTokenIds: loaded.config.eosTokenIds }, grammars, forwards: () => forwards };
}

function randomMask(vocab: number, density: number, random: () => number): Int32Array {
  const mask = new Int32Array(Math.ceil(vocab / 32));
  for (let i = 0; i < vocab; i++) if (random() < density) mask[i >>> 5]! |= 1 << (i & 31);
  return mask;
}

test('bitmask helpers match a plain loop', () => {
  const random = rng(1);
  for (const [vocab, density] of [[4096, 0.5], [1000, 0.01], [77, 0.9], [64, 1]] as const) {
    const mask = randomMask(vocab, density, random);
    const allowed = [...Array(vocab).keys()].filter((i) => isAllowed(mask, i));
    assert.deepEqual(countAllowed(mask, vocab), { count: allowed.length, first: allowed[0] ?? -1 }, `vocab ${vocab}`);
    const logits = Float32Array.from({ length: vocab }, () => random());
    maskLogits(logits, mask);
    const bad = [...logits.keys()].find((i) => (logits[i] === -Infinity) === isAllowed(mask, i));
    assert.equal(bad, undefined, `vocab ${vocab}: logit ${bad} masked wrongly`);
  }
});

test('the CPU sampler: an all-allowing mask changes nothing; a mask keeps every choice inside it', () => {
  const vocab = 4096, random = rng(2);
  const all = new Int32Array(vocab / 32).fill(-1);
  for (const o of [{ temperature: 0 }, { temperature: 1, topK: 0, topP: 1, minP: 0 }, { temperature: 0.8, topK: 40, topP: 0.95, minP: 0.05 }, { temperature: 1.5, topK: 0, topP: 0.9, minP: 0 }]) {
    const a = new Sampler(resolveSampling({ ...o, seed: 7 }), vocab), b = new Sampler(resolveSampling({ ...o, seed: 7 }), vocab);
    const masked = new Sampler(resolveSampling({ ...o, seed: 9 }), vocab);
    for (let step = 0; step < 200; step++) {
      const logits = Float32Array.from({ length: vocab }, () => 4 * random());
      assert.equal(a.sample(logits, all), b.sample(logits), `${JSON.stringify(o)} step ${step}`);
      const mask = randomMask(vocab, step % 2 ? 0.002 : 0.3, random);
      if (countAllowed(mask, vocab).count === 0) mask[0] = 1;
      const id = masked.sample(logits, mask);
      assert.ok(isAllowed(mask, id), `${JSON.stringify(o)} step ${step}: chose ${id}, not allowed`);
      if (o.temperature === 0) {
        const x = Float32Array.from(logits);
        maskLogits(x, mask);
        assert.equal(id, argmax(x));
      }
    }
  }
});

/** A GBNF literal for text. */
const literal = (s: string) => JSON.stringify(s);

test('generate under a grammar that allows what the model picks gives the unconstrained tokens; a forced string jumps forward', async () => {
  const { ctx, grammars, forwards } = await setup();
  const tokenizer = ctx.tokenizer!;
  const prompt = tokenizer.encode('The jury said', true);
  const seq = ctx.engine.createSequence();
  for (const options of [{ temperature: 0 }, { temperature: 1, topK: 0, topP: 1, minP: 0, seed: 5 }]) {
    const free = await generateAll(ctx, seq, prompt, { ...options, maxTokens: 16 });
    const constraint = await grammars.grammar(charsGrammar(free.text));
    const got = await generateAll(ctx, seq, prompt, { ...options, maxTokens: 16, constraint });
    console.log(`${JSON.stringify(options)}: unconstrained ${JSON.stringify(free.text)} [${free.tokenIds}]; constrained [${got.tokenIds}]`);
    if (options.temperature === 0) assert.deepEqual(got.tokenIds, free.tokenIds);
    else for (const id of got.tokenIds) assert.ok([...tokenizer.decode([id])].every((c) => free.text.includes(c)), `token ${id} outside the grammar`);
    assert.equal(got.finishReason, free.finishReason);
  }
  // a literal: jump-forward feeds the tokenizer's tokens for it, several per forward call, then EOS
  const literal = ' he was a good man, and he said so.';
  const before = forwards();
  const forced = await generateAll(ctx, seq, prompt, { temperature: 1, seed: 1, maxTokens: 40, constraint: await grammars.grammar(`root ::= ${JSON.stringify(literal)}`) });
  assert.equal(forced.text, literal);
  assert.deepEqual(forced.tokenIds, tokenizer.encode(literal, false));
  assert.equal(forced.finishReason, 'stop');
  assert.equal(forwards() - before, 1, 'the whole literal is forced: one forward call (the prompt)');
  seq.dispose();
});

test('JSON schema at temperature 1: every output ending with stop parses and validates; length is reported as such', async () => {
  const { ctx, grammars } = await setup();
  const schema = {
    type: 'object',
    properties: { name: { type: 'string', maxLength: 10 }, age: { type: 'integer', minimum: 0, maximum: 99 }, tags: { type: 'array', items: { enum: ['a', 'b'] }, maxItems: 2 }, ok: { type: 'boolean' } },
    required: ['name', 'age', 'tags', 'ok'],
    additionalProperties: false,
  };
  const validate = new Ajv().compile(schema);
  const constraint = await grammars.responseFormat({ type: 'json_schema', schema, strict: true });
  const prompt = ctx.tokenizer!.encode('The jury said', true);
  const seq = ctx.engine.createSequence();
  let stopped = 0;
  for (let seed = 0; seed < 6; seed++) {
    const r = await generateAll(ctx, seq, prompt, { temperature: 1, seed, maxTokens: 48, constraint });
    if (r.finishReason === 'length') continue;
    stopped++;
    const value = JSON.parse(r.text);
    assert.ok(validate(value), `seed ${seed}: ${r.text}: ${JSON.stringify(validate.errors)}`);
  }
  assert.ok(stopped >= 4, `${stopped} of 6 ended with stop`);
  const short = await generateAll(ctx, seq, prompt, { temperature: 1, seed: 1, maxTokens: 3, constraint });
  assert.equal(short.finishReason, 'length');
  seq.dispose();
});

test('empty, unsatisfiable and uncompilable grammars and schemas fail at once with GrammarError', async () => {
  const { ctx, grammars } = await setup();
  const seq = ctx.engine.createSequence();
  const prompt = [1, 2, 3];
  await assert.rejects(grammars.grammar('  '), (e: Error) => e instanceof GrammarError && /empty/.test(e.message));
  await assert.rejects(grammars.grammar('root ::= '), (e: Error) => e instanceof GrammarError && /EBNF parser error at line 1/.test(e.message));
  await assert.rejects(grammars.responseFormat({ type: 'json_schema', schema: { type: 'integer', minimum: 5, maximum: 2 } }), /minimum greater than maximum/);
  await assert.rejects(grammars.responseFormat({ type: 'json_schema', schema: { $ref: '#/$defs/missing' } }), /Cannot find field/);
  await assert.rejects(grammars.responseFormat({ type: 'json_schema', strict: true, schema: { type: 'array', uniqueItems: true } }), /strict is true but this engine cannot enforce #: "uniqueItems"/);
  for (const text of ['root ::= root "a"', 'root ::= a\na ::= a']) {
    const constraint = await grammars.grammar(text);
    await assert.rejects(generateAll(ctx, seq, prompt, { maxTokens: 5, constraint }), (e: Error) => e instanceof GrammarError && /allows no first token/.test(e.message), text);
  }
  seq.dispose();
});

test('strict: the keywords xgrammar leaves unenforced are found wherever they are', () => {
  assert.deepEqual(unenforcedKeywords({ type: 'object', properties: { a: { type: 'string', format: 'email' }, b: { type: 'array', items: { not: { const: 1 } }, uniqueItems: true } }, $defs: { c: { format: 'iri' } } }), [
    '#/properties/b/items: "not"',
    '#/properties/b: "uniqueItems"',
    '#/$defs/c: "format": "iri"',
  ]);
  assert.deepEqual(unenforcedKeywords({ type: 'object', properties: { a: { type: 'integer', minimum: 1, maximum: 3 }, s: { type: 'string', pattern: '^a+$', maxLength: 4 } }, required: ['a'] }), []);
});
