import { test } from 'node:test';
import assert from 'node:assert/strict';
import { modelId } from '../../src/api/model.js';

test('a model id drops only a model file extension: folders and shape names keep their dots', () => {
  const cases: [string, string][] = [
    ['models/brown-llama-12m.upg', 'brown-llama-12m'],
    ['/models/Llama-3.1-8B-Instruct', 'Llama-3.1-8B-Instruct'],
    ['/models/Llama-3.1-8B-Instruct/', 'Llama-3.1-8B-Instruct'],
    ['synthetic-llama-3.1-8b-q4', 'synthetic-llama-3.1-8b-q4'],
    ['https://host/m/phi-4.Q4.upg?download=1', 'phi-4.Q4'],
    ['model.safetensors', 'model'],
  ];
  for (const [where, id] of cases) assert.equal(modelId(where), id, where);
});
