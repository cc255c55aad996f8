/**
 * Continuous batching on the CPU backend (demo model): the batched step's rows keep the arithmetic of
 * a one-token step whatever shares the batch, so 32 concurrent streams (greedy, seeded, penalties,
 * different prompts and lengths) each equal the same request run alone; long prompts are prefilled in
 * chunks between decode steps; aborted streams leak no KV cache; a reused prefix gives a fresh
 * prefill's tokens.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { loadModel, type GenerateOptions, type GenerationResult, type Model } from 'pdvm';
import { CpuEngine, type CpuSequence } from '../../src/backends/cpu/engine.js';
import type { Sequence } from '../../src/runtime/engine.js';
import { compare, ROOT, VALIDATION_TEXT } from '../helpers.js';

const DEMO = join(ROOT, 'models', 'brown-llama-12m.upg');

/** Counts the sequences the engine has made and not yet freed. */
function countSequences(model: Model): { live: () => number } {
  const engine = model.engine;
  const create = engine.createSequence.bind(engine);
  let live = 0;
  engine.createSequence = (): Sequence => {
    const seq = create();
    live++;
    const dispose = seq.dispose.bind(seq);
    let freed = false;
    seq.dispose = () => {
      if (!freed) live--;
      freed = true;
      dispose();
    };
    return seq;
  };
  return { live: () => live };
}

async function prompts(n: number): Promise<string[]> {
  const lines = (await readFile(VALIDATION_TEXT, 'utf8')).split('\n').filter((l) => l.split(' ').length > 12);
  // different lengths: 3 to 12 words
  return lines.slice(0, n).map((l, i) => l.split(' ').slice(0, 3 + (i % 10)).join(' '));
}

test('a batched step equals one-token forward steps row for row, whatever else is in the batch', async () => {
  const model = await loadModel(DEMO, { maxConcurrency: 1 });
  try {
    const engine = model.engine as CpuEngine;
    const prompt = model.promptIds('The jury said it did find that many of the');
    // reference: forward() one token at a time (each a one-row product)
    const ref = engine.createSequence();
    let want = new Float32Array(0);
    for (const id of prompt) want = (await engine.forward(ref, [id])).slice();
    // the same prompt as one chunk of a step beside three other sequences at other positions
    const others = [3, 17, 40].map((n) => {
      const s = engine.createSequence();
      engine.stepSync([{ seq: s, tokens: prompt.slice(0, 1).concat(Array.from({ length: n }, (_, i) => 100 + i)), logits: false }]);
      return s;
    });
    const seq: CpuSequence = engine.createSequence();
    const out = engine.stepSync([
      { seq: others[0]!, tokens: [5], logits: true },
      { seq, tokens: prompt, logits: true },
      { seq: others[1]!, tokens: [6, 7], logits: false },
      { seq: others[2]!, tokens: [8], logits: true },
    ]);
    assert.equal(out[2], null);
    const r = compare(out[1]!, want);
    console.log(`# step row vs one-token forward: worst |diff| ${r.worst} at [${r.worstAt}]`);
    assert.equal(r.worst, 0, `worst at [${r.worstAt}]: ${r.a} vs ${r.b}`);
    assert.equal(seq.length, prompt.length);
    assert.equal(others[1]!.length, 1 + 17 + 2);
  } finally {
    await model.dispose();
  }
});

test('32 concurrent streams (greedy, seeded, penalties; different prompts and lengths) each equal the request run alone, in batches of up to 32', async () => {
  const model = await loadModel(DEMO, { maxConcurrency: 32, prefixCacheBytes: 0 });
  try {
    const texts = await prompts(32);
    const longPrompt = (await readFile(VALIDATION_TEXT, 'utf8')).split(' ').slice(0, 120).join(' '); // > one prefill chunk
    texts[7] = longPrompt;
    const options = (i: number): GenerateOptions & { stream?: false } => ({
      maxTokens: 3 + (i % 7),
      ...(i % 4 === 1 ? { temperature: 0.8, seed: i } : i % 4 === 3 ? { temperature: 0, repetitionPenalty: 1.3 } : { temperature: 0 }),
    });
    const alone: GenerationResult[] = [];
    for (let i = 0; i < texts.length; i++) alone.push(await model.generate(texts[i]!, options(i)));
    let widest = 0;
    const watch = setInterval(() => (widest = Math.max(widest, model.schedulerStats.lastStepDecodeRows)), 1);
    const together = await Promise.all(texts.map((t, i) => model.generate(t, options(i))));
    clearInterval(watch);
    together.forEach((r, i) => assert.deepEqual(r.tokenIds, alone[i]!.tokenIds, `stream ${i} (${JSON.stringify(texts[i]!.slice(0, 30))}) differs from the request run alone`));
    console.log(`# widest decode batch seen: ${widest} rows`);
    assert.ok(widest >= 8, `the streams decoded in batches (widest ${widest})`);
  } finally {
    await model.dispose();
  }
});

test('a long prompt is prefilled in chunks between decode steps: a running stream keeps getting tokens', async () => {
  const model = await loadModel(DEMO, { maxConcurrency: 4, prefixCacheBytes: 0 });
  try {
    const long = model.promptIds((await readFile(VALIDATION_TEXT, 'utf8')).split(' ').slice(0, 250).join(' ')).slice(0, 250);
    const running = model.generate('The jury said', { maxTokens: 30, temperature: 0, ignoreEos: true, stream: true });
    const arrivals: number[] = [];
    const reading = (async () => {
      for await (const c of running) for (const _ of c.tokenIds) arrivals.push(performance.now());
    })();
    while (arrivals.length < 2) await new Promise((r) => setTimeout(r, 5));
    const submitted = performance.now();
    const longStream = model.generate(long, { maxTokens: 1, temperature: 0, stream: true });
    let firstLong = 0;
    for await (const c of longStream) if (c.tokenIds.length && !firstLong) firstLong = performance.now();
    await reading;
    const during = arrivals.filter((t) => t > submitted && t < firstLong).length;
    console.log(`# ${long.length}-token prompt prefilled in ${(firstLong - submitted).toFixed(0)} ms; the running stream got ${during} tokens meanwhile`);
    assert.ok(during >= 3, `the running stream got ${during} tokens during the long prefill (${Math.ceil(long.length / 64)} chunks)`);
  } finally {
    await model.dispose();
  }
});

test('the scheduler cuts a prompt into chunks at the same places alone and batched (an engine may prefill a chunk as a whole)', async () => {
  const model = await loadModel(DEMO, { maxConcurrency: 4, prefixCacheBytes: 0 });
  try {
    const words = (await readFile(VALIDATION_TEXT, 'utf8')).split(' ');
    const ids = [model.promptIds(words.slice(0, 200).join(' ')).slice(0, 150), model.promptIds(words.slice(300, 400).join(' ')).slice(0, 30), model.promptIds(words.slice(500, 600).join(' ')).slice(0, 45)];
    // each prompt's rows from an empty sequence to its first logits: the lengths of its chunks (the
    // prompts' lengths tell them apart)
    const engine = model.engine, step = engine.step!.bind(engine);
    const open = new Map<Sequence, number[]>(), cuts = new Map<number, number[]>();
    engine.step = (rows) => {
      for (const r of rows) {
        if (r.seq.length === 0) open.set(r.seq, []);
        const list = open.get(r.seq);
        if (!list) continue;
        list.push(r.tokens.length);
        if (!r.logits) continue;
        const total = list.reduce((a, b) => a + b, 0);
        cuts.set(ids.findIndex((p) => p.length === total), list);
        open.delete(r.seq);
      }
      return step(rows);
    };
    const options = { maxTokens: 2, temperature: 0, ignoreEos: true };
    for (const p of ids) await model.generate(p, options);
    const alone = ids.map((_, i) => cuts.get(i));
    cuts.clear();
    open.clear();
    await Promise.all(ids.map((p) => model.generate(p, options)));
    const batched = ids.map((_, i) => cuts.get(i));
    console.log(`# chunks alone ${JSON.stringify(alone)}, batched ${JSON.stringify(batched)}`);
    assert.deepEqual(alone, [[64, 64, 22], [30], [45]], 'alone: chunks of 64 from the prompt\'s start');
    assert.deepEqual(batched, alone, 'batched: the same chunks');
  } finally {
    await model.dispose();
  }
});

test('aborting streams mid-batch leaks no KV cache; the others equal their runs alone', async () => {
  const model = await loadModel(DEMO, { maxConcurrency: 8, prefixCacheBytes: 0 });
  const seqs = countSequences(model);
  try {
    const texts = await prompts(8);
    const alone: GenerationResult[] = [];
    for (const t of texts) alone.push(await model.generate(t, { maxTokens: 12, temperature: 0, ignoreEos: true }));
    const controllers = texts.map(() => new AbortController());
    const runs = texts.map(async (t, i) => {
      const stream = model.generate(t, { maxTokens: 12, temperature: 0, ignoreEos: true, stream: true, signal: controllers[i]!.signal });
      let n = 0;
      for await (const c of stream) {
        n += c.tokenIds.length;
        if (i % 2 === 1 && n >= 2) controllers[i]!.abort();
      }
      return stream.result;
    });
    const outcomes = await Promise.allSettled(runs);
    outcomes.forEach((o, i) => {
      if (i % 2 === 1) assert.equal(o.status === 'rejected' && (o.reason as Error).name, 'AbortError', `stream ${i} was aborted`);
      else assert.deepEqual(o.status === 'fulfilled' && o.value.tokenIds, alone[i]!.tokenIds, `stream ${i}`);
    });
    assert.equal(model.activity.active, 0);
    assert.equal(seqs.live(), 0, 'every sequence the engine made was freed');
  } finally {
    await model.dispose();
  }
});

test("prefix reuse: a prompt extending a kept cache prefills only the rest and gives a fresh prefill's tokens; kept caches stay within the budget", async () => {
  const slot = 6 * 2 * 1024 * 128 * 4; // one KV cache of the demo model at context 1024
  const model = await loadModel(DEMO, { maxConcurrency: 2, prefixCacheBytes: 2 * slot });
  const fresh = await loadModel(DEMO, { maxConcurrency: 2, prefixCacheBytes: 0 });
  const seqs = countSequences(model);
  try {
    const turn1 = [{ role: 'user' as const, content: 'Tell me about the jury and the election in Fulton County.' }];
    const first = await model.chat(turn1, { maxTokens: 12, temperature: 0 });
    assert.equal(first.cachedTokens, 0);
    const turn2 = [...turn1, { role: 'assistant' as const, content: first.text }, { role: 'user' as const, content: 'And then what happened?' }];
    const second = await model.chat(turn2, { maxTokens: 12, temperature: 0 });
    const reference = await fresh.chat(turn2, { maxTokens: 12, temperature: 0 });
    console.log(`# second turn: ${second.promptTokens} prompt tokens, ${second.cachedTokens} reused from the first turn's cache`);
    assert.ok(second.cachedTokens >= model.chatPromptIds(turn1).length, `reused ${second.cachedTokens} tokens`);
    assert.ok(second.cachedTokens < second.promptTokens);
    assert.equal(reference.cachedTokens, 0);
    assert.deepEqual(second.tokenIds, reference.tokenIds, 'tokens after a reused prefix equal a fresh prefill');
    // the same prompt again reuses all of it but its last token
    const again = await model.chat(turn2, { maxTokens: 12, temperature: 0 });
    assert.equal(again.cachedTokens, again.promptTokens - 1);
    assert.deepEqual(again.tokenIds, reference.tokenIds);
    // more finished generations than the budget holds: the least recently used go
    for (const t of await prompts(4)) await model.generate(`${t} and so on and so forth, said the jury of the county`, { maxTokens: 2, temperature: 0 });
    assert.equal(model.schedulerStats.keptCaches, 2);
    assert.equal(seqs.live(), 2, 'only the kept caches are alive');
  } finally {
    await model.dispose();
    await fresh.dispose();
  }
  assert.equal(seqs.live(), 0, 'dispose() frees the kept caches');
});

test('prefix reuse: a shared system prompt is copied out of the kept cache, so concurrent requests all reuse it and it stays kept', async () => {
  const model = await loadModel(DEMO, { maxConcurrency: 4 });
  const fresh = await loadModel(DEMO, { maxConcurrency: 4, prefixCacheBytes: 0 });
  try {
    const system = { role: 'system' as const, content: 'You answer questions about the Brown corpus, the jury, the county and the city, in short plain sentences.' };
    const chat = (q: string) => [system, { role: 'user' as const, content: q }];
    await model.chat(chat('Who was the foreman?'), { maxTokens: 4, temperature: 0 });
    const questions = ['What did the jury say?', 'Where is Fulton County?', 'When was the election?'];
    const results = await Promise.all(questions.map((q) => model.chat(chat(q), { maxTokens: 6, temperature: 0 })));
    const systemTokens = model.chatPromptIds([system]).length;
    for (const [i, r] of results.entries()) {
      const want = await fresh.chat(chat(questions[i]!), { maxTokens: 6, temperature: 0 });
      assert.ok(r.cachedTokens >= Math.min(16, systemTokens), `request ${i} reused ${r.cachedTokens} tokens`);
      assert.deepEqual(r.tokenIds, want.tokenIds, `request ${i}: a copied prefix gives a fresh prefill's tokens`);
    }
    console.log(`# shared system prompt: ${results.map((r) => `${r.cachedTokens}/${r.promptTokens}`).join(', ')} prompt tokens reused`);
    assert.equal(model.schedulerStats.keptCaches, 4, 'the first cache stayed kept beside the three new ones');
  } finally {
    await model.dispose();
    await fresh.dispose();
  }
});

test('an engine that chooses tokens on the device gets `choose` rows (greedy, seeded) and penalty rows keep their logits; greedy tokens equal the CPU sampler\'s', async () => {
  const model = await loadModel(DEMO, { maxConcurrency: 8, prefixCacheBytes: 0 });
  try {
    const cpu = model.engine as CpuEngine;
    const plain = await Promise.all([
      model.generate('The jury said', { maxTokens: 8, temperature: 0 }),
      model.generate('In the morning the', { maxTokens: 8, temperature: 0, repetitionPenalty: 1.3 }),
    ]);
    // a device stand-in: argmax on the host for rows that ask, as a GPU's argmax kernel would
    let chosen = 0, sampled = 0;
    const device = Object.assign(Object.create(Object.getPrototypeOf(cpu)) as CpuEngine, cpu, {
      stepChoosesTokens: true,
      async step(rows: Parameters<CpuEngine['stepSync']>[0]) {
        const out = cpu.stepSync(rows);
        return out.map((logits, i) => {
          const ask = rows[i]!.choose;
          if (!ask || !logits) return logits;
          if (ask.sampling.temperature > 0) {
            sampled++;
            assert.ok(ask.random >= 0 && ask.random < 1);
          }
          chosen++;
          let best = 0;
          for (let v = 1; v < logits.length; v++) if (logits[v]! > logits[best]!) best = v;
          return best;
        });
      },
    });
    const onDevice = new (model.constructor as new (...a: unknown[]) => typeof model)(model.loaded, device, { maxConcurrency: 8, prefixCacheBytes: 0 });
    try {
      const [greedy, penalised] = await Promise.all([
        onDevice.generate('The jury said', { maxTokens: 8, temperature: 0 }),
        onDevice.generate('In the morning the', { maxTokens: 8, temperature: 0, repetitionPenalty: 1.3 }),
        onDevice.generate('He had never', { maxTokens: 4, temperature: 0.7, seed: 3 }),
      ]);
      assert.deepEqual(greedy!.tokenIds, plain[0]!.tokenIds, 'greedy tokens chosen on the device equal the CPU sampler\'s');
      assert.deepEqual(penalised!.tokenIds, plain[1]!.tokenIds, 'a penalty row is sampled on the CPU from its logits');
      assert.equal(chosen, 8 + 4, 'the greedy and the seeded rows asked the device; the penalty row did not');
      assert.equal(sampled, 4, 'a draw for each seeded token');
    } finally {
      await onDevice.dispose();
    }
  } finally {
    await model.dispose();
  }
});

test('kept caches give way to running generations: where a new KV cache cannot be allocated, the least recently used kept one is reused', async () => {
  const model = await loadModel(DEMO, { maxConcurrency: 2 });
  try {
    const engine = model.engine;
    const create = engine.createSequence.bind(engine);
    let made = 0;
    // memory for three caches at most
    engine.createSequence = () => {
      if (made === 3) throw new RangeError('Array buffer allocation failed');
      made++;
      return create();
    };
    const texts = await prompts(4);
    for (const t of texts.slice(0, 3)) await model.generate(t, { maxTokens: 2, temperature: 0 });
    assert.equal(model.schedulerStats.keptCaches, 3);
    // two at once: both need a new cache; the two oldest kept ones give way
    const [a, b] = await Promise.all([
      model.generate(`${texts[3]} and`, { maxTokens: 3, temperature: 0 }),
      model.generate(`${texts[3]} or`, { maxTokens: 3, temperature: 0 }),
    ]);
    assert.equal(a.tokenIds.length + b.tokenIds.length > 0, true);
    assert.equal(made, 3, 'no cache beyond the three');
    assert.equal(model.schedulerStats.keptCaches, 3, 'the two new ones kept, one old one left');
  } finally {
    await model.dispose();
  }
});
