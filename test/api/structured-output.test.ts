/**
 * Structured output through the library's own API (loadModel's Model, the demo model on the CPU):
 * chat() and generate() take responseFormat (json_object, json_schema) and grammar (GBNF); output
 * that ends with 'stop' parses and validates (ajv). The schema is always enforced: without strict a
 * keyword the engine cannot enforce is left out and the rest still holds; strict refuses it. In a
 * batch (the scheduler's batched step, on the CPU and on WebGPU) each sequence has its own grammar:
 * concurrent requests with different grammars each keep to theirs, and an unconstrained request
 * among them gives the tokens it gives alone.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import AjvModule from 'ajv';
import { GrammarError, loadModel, type GenerationResult, type Model } from 'pdvm';
import { ROOT } from '../helpers.js';
import { SKIP_GPU } from '../backends/webgpu/gpu.js';

const Ajv = AjvModule.default;
const DEMO = join(ROOT, 'models', 'brown-llama-12m.upg');
let model: Model;

before(async () => {
  model = await loadModel(DEMO, { maxConcurrency: 4 });
});
after(async () => {
  await model.dispose();
});

const PERSON = {
  type: 'object',
  properties: { name: { type: 'string', pattern: '^[a-z]{1,8}$' }, age: { type: 'integer', minimum: 0, maximum: 99 } },
  required: ['name', 'age'],
  additionalProperties: false,
};

test('chat() and generate() take responseFormat and grammar; what ends with stop parses and validates', async () => {
  const validate = new Ajv().compile(PERSON);
  for (let seed = 0; seed < 3; seed++) {
    const r = await model.chat([{ role: 'user', content: 'Describe a person.' }], { responseFormat: { type: 'json_schema', schema: PERSON, strict: true }, temperature: 1, seed, maxTokens: 60 });
    assert.equal(r.finishReason, 'stop', r.text);
    assert.ok(validate(JSON.parse(r.text)), `${r.text}: ${JSON.stringify(validate.errors)}`);
  }
  const obj = await model.generate('The jury said', { responseFormat: { type: 'json_object' }, temperature: 0.7, seed: 2, maxTokens: 60 });
  if (obj.finishReason === 'stop') assert.equal(typeof JSON.parse(obj.text), 'object');
  else assert.equal(obj.finishReason, 'length');
  const yes = await model.generate('Was it?', { grammar: 'root ::= ("yes" | "no") ", " [a-z]+ "."', temperature: 1, seed: 3, maxTokens: 30 });
  assert.equal(yes.finishReason, 'stop');
  assert.match(yes.text, /^(yes|no), [a-z]+\.$/);
  // streamed: the chunks add up to the same valid text
  const stream = model.generate('The jury said', { responseFormat: { type: 'json_schema', schema: PERSON }, temperature: 1, seed: 4, maxTokens: 60, stream: true });
  let text = '';
  for await (const chunk of stream) text += chunk.text;
  const result = await stream.result;
  assert.equal(text, result.text);
  assert.ok(result.finishReason !== 'stop' || validate(JSON.parse(text)), text);
  console.log(`e.g. ${result.text}; ${yes.text}`);
});

test('the schema is always enforced; strict only refuses keywords the engine cannot enforce', async () => {
  // uniqueItems is beyond xgrammar: without strict it is left out, and the items, their count and the enum still hold
  const schema = { type: 'array', items: { enum: ['red', 'green', 'blue'] }, minItems: 2, maxItems: 3, uniqueItems: true };
  const { uniqueItems: _, ...enforced } = schema;
  const validate = new Ajv().compile(enforced);
  let stopped = 0;
  for (let seed = 0; seed < 4; seed++) {
    const r = await model.generate('Colors:', { responseFormat: { type: 'json_schema', schema }, temperature: 1, seed, maxTokens: 40 });
    if (r.finishReason !== 'stop') continue;
    stopped++;
    assert.ok(validate(JSON.parse(r.text)), `${r.text}: ${JSON.stringify(validate.errors)}`);
  }
  assert.ok(stopped >= 3, `${stopped} of 4 ended with stop`);
  await assert.rejects(
    model.generate('Colors:', { responseFormat: { type: 'json_schema', schema, strict: true }, maxTokens: 8 }),
    (e: Error) => e instanceof GrammarError && /strict is true but this engine cannot enforce #: "uniqueItems"/.test(e.message),
  );
});

/** Concurrent requests with different grammars (and one without) on `m`: each keeps to its own; returns the widest step. */
async function mixedBatch(m: Model): Promise<number> {
  const free = { temperature: 0, maxTokens: 24, ignoreEos: true };
  const alone = await m.generate('The jury said', free);
  const requests: { options: Parameters<Model['generate']>[1]; check: (r: GenerationResult) => void }[] = [
    { options: free, check: (r) => assert.deepEqual(r.tokenIds, alone.tokenIds, 'the unconstrained request differs from its run alone') },
    { options: { grammar: 'root ::= [0-9]{3} "-" [0-9]{4}', temperature: 1, seed: 1, maxTokens: 24 }, check: (r) => assert.match(r.text, /^[0-9]{3}-[0-9]{4}$/) },
    { options: { responseFormat: { type: 'json_schema', schema: PERSON }, temperature: 1, seed: 2, maxTokens: 40 }, check: (r) => assert.ok(r.finishReason !== 'stop' || new Ajv().validate(PERSON, JSON.parse(r.text)), r.text) },
    { options: { grammar: 'root ::= ("yes" | "no") "."', temperature: 1, seed: 3, maxTokens: 24 }, check: (r) => assert.match(r.text, /^(yes|no)\.$/) },
  ];
  let widest = 0;
  const results = await Promise.all(requests.map(async ({ options }) => {
    const stream = m.generate('The jury said', { ...options, stream: true });
    for await (const _ of stream) widest = Math.max(widest, m.schedulerStats.lastStepDecodeRows);
    return stream.result;
  }));
  results.forEach((r, i) => requests[i]!.check(r));
  console.log(`${m.backend}: widest batched step ${widest} decode rows; ${results.map((r) => JSON.stringify(r.text)).join(', ')}`);
  return widest;
}

test('in a batch each sequence has its own grammar; an unconstrained one gives its tokens alone', async () => {
  assert.ok((await mixedBatch(model)) >= 2, 'the requests never shared a step');
});

test('the same through the WebGPU batched step (constrained rows masked from their logits, the free row chosen on the GPU)', { skip: SKIP_GPU }, async () => {
  const gpuModel = await loadModel(DEMO, { backend: 'webgpu', batchedStep: true, maxConcurrency: 4 });
  try {
    assert.ok((await mixedBatch(gpuModel)) >= 2, 'the requests never shared a step');
  } finally {
    await gpuModel.dispose();
  }
});
