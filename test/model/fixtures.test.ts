/** CPU model vs the Hugging Face references: logits for input_ids, and greedy decoding through the KV cache. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { basename } from 'node:path';
import { loadModel } from '../../src/model/load.js';
import { CpuEngine } from '../../src/backends/cpu/engine.js';
import { ALL_FIXTURE_MODELS, assertClose, readReference } from '../helpers.js';

for (const dir of ALL_FIXTURE_MODELS) {
  test(`cpu: ${basename(dir)} logits and greedy continuations match transformers`, async () => {
    const model = await loadModel(dir);
    const ref = await readReference(dir);
    const engine = new CpuEngine(model.config, model.weights, 256);
    const seq = engine.createSequence();
    const logits = await engine.forward(seq, ref.inputIds, true);
    assertClose(logits, ref.logits, 1e-4, `${basename(dir)} logits`);

    for (const { prompt, greedy } of ref.prompts) {
      seq.reset();
      let out = await engine.forward(seq, prompt);
      const got: number[] = [];
      for (let i = 0; i < greedy.length; i++) {
        let best = 0;
        for (let v = 1; v < out.length; v++) if (out[v]! > out[best]!) best = v;
        got.push(best);
        if (i + 1 < greedy.length) out = await engine.forward(seq, [best]);
      }
      assert.deepEqual(got, greedy, `${basename(dir)} greedy from [${prompt}]`);
    }
  });
}
