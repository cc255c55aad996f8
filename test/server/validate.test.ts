/** Request validation without a model: every bad field is a 400 naming it; good requests map to camelCase options. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ApiError } from '../../src/server/errors.js';
import { checkModel, generateOptions, parseChatCompletionRequest, parseCompletionRequest, templateMessages } from '../../src/server/validate.js';

const chat = (extra: Record<string, unknown>) => ({ model: 'm', messages: [{ role: 'user', content: 'hi' }], ...extra });

function expectError(fn: () => unknown, status: number, param: string | null, message: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof ApiError, `ApiError expected, got ${e}`);
    assert.equal(e.status, status, e.message);
    assert.equal(e.param, param, e.message);
    assert.match(e.message, message);
    assert.deepEqual(Object.keys(e.body.error), ['message', 'type', 'param', 'code']);
    return true;
  });
}

test('a full chat request maps to the library options, camelCase', () => {
  const req = parseChatCompletionRequest(chat({
    max_tokens: 7, temperature: 0.5, top_p: 0.9, top_k: 20, min_p: 0.1, seed: 42, stop: 'x', n: 1,
    presence_penalty: 0.5, frequency_penalty: -0.5, repetition_penalty: 1.1, stream: true, stream_options: { include_usage: true },
  }));
  assert.equal(req.max_tokens, 7);
  assert.equal(req.stream_options?.include_usage, true);
  assert.deepEqual(generateOptions(req), {
    temperature: 0.5, topP: 0.9, topK: 20, minP: 0.1, seed: 42, presencePenalty: 0.5, frequencyPenalty: -0.5, repetitionPenalty: 1.1, stop: ['x'],
  });
  // null means absent, as OpenAI's clients send it
  assert.deepEqual(generateOptions(parseChatCompletionRequest(chat({ temperature: null, stop: null }))), {});
});

test('messages: text parts are joined, developer reads as system, assistant content may be null', () => {
  const req = parseChatCompletionRequest(chat({
    messages: [
      { role: 'developer', content: 'be brief' },
      { role: 'user', content: [{ type: 'text', text: 'a' }, { type: 'text', text: 'b' }] },
      { role: 'assistant', content: null },
    ],
  }));
  assert.deepEqual(templateMessages(req.messages), [
    { role: 'system', content: 'be brief' },
    { role: 'user', content: 'ab' },
    { role: 'assistant', content: '' },
  ]);
});

test('wrong types and values are 400s naming the field', () => {
  expectError(() => parseChatCompletionRequest([]), 400, null, /JSON object/);
  expectError(() => parseChatCompletionRequest({ messages: [] }), 400, 'model', /^model is required/);
  expectError(() => parseChatCompletionRequest(chat({ model: 3 })), 400, 'model', /model must be .* got number 3/);
  expectError(() => parseChatCompletionRequest(chat({ messages: 'hi' })), 400, 'messages', /must be a list of \{role, content\}, got the string "hi"/);
  expectError(() => parseChatCompletionRequest(chat({ messages: [] })), 400, 'messages', /messages is an empty list; send at least one message/);
  expectError(() => parseChatCompletionRequest({ model: 'm' }), 400, 'messages', /^messages is required/);
  expectError(() => parseCompletionRequest({ prompt: 'x' }), 400, 'model', /^model is required/);
  for (const e of [() => parseChatCompletionRequest({ messages: [] }), () => parseChatCompletionRequest(chat({ messages: [] }))]) {
    assert.throws(e, (err: Error) => !/undefined|an array/.test(err.message));
  }
  expectError(() => parseChatCompletionRequest(chat({ messages: [{ role: 'wizard', content: 'x' }] })), 400, 'messages[0].role', /role/);
  expectError(() => parseChatCompletionRequest(chat({ messages: [{ role: 'user', content: 5 }] })), 400, 'messages[0].content', /content/);
  expectError(() => parseChatCompletionRequest(chat({ messages: [{ role: 'user', content: [{ type: 'image_url' }] }] })), 400, 'messages[0].content', /text/);
  expectError(() => parseChatCompletionRequest(chat({ temperature: 'hot' })), 400, 'temperature', /number/);
  expectError(() => parseChatCompletionRequest(chat({ temperature: 3 })), 400, 'temperature', /\[0, 2\]/);
  expectError(() => parseChatCompletionRequest(chat({ top_p: 0 })), 400, 'top_p', /\(0, 1\]/);
  expectError(() => parseChatCompletionRequest(chat({ top_k: 2.5 })), 400, 'top_k', /whole/);
  expectError(() => parseChatCompletionRequest(chat({ max_tokens: 0 })), 400, 'max_tokens', /max_tokens/);
  expectError(() => parseChatCompletionRequest(chat({ max_completion_tokens: '9' })), 400, 'max_completion_tokens', /number/);
  expectError(() => parseChatCompletionRequest(chat({ seed: 1.5 })), 400, 'seed', /whole/);
  expectError(() => parseChatCompletionRequest(chat({ n: 2 })), 400, 'n', /n must be 1/);
  expectError(() => parseChatCompletionRequest(chat({ stop: [1] })), 400, 'stop', /strings/);
  expectError(() => parseChatCompletionRequest(chat({ stream: 'yes' })), 400, 'stream', /true or false/);
  expectError(() => parseChatCompletionRequest(chat({ stream_options: { include_usage: 1 } })), 400, 'include_usage', /true or false/);
  expectError(() => parseChatCompletionRequest(chat({ repetition_penalty: 0 })), 400, 'repetition_penalty', /repetition_penalty/);
  expectError(() => parseChatCompletionRequest(chat({ presence_penalty: 5 })), 400, 'presence_penalty', /\[-2, 2\]/);
});

test('features this server lacks are refused, not ignored', () => {
  expectError(() => parseChatCompletionRequest(chat({ logprobs: true })), 400, 'logprobs', /not supported/);
  expectError(() => parseChatCompletionRequest(chat({ tools: [{ type: 'function' }] })), 400, 'tools[0]', /must be \{"type": "function"/);
  expectError(() => parseChatCompletionRequest(chat({ tools: [{ type: 'function', function: { name: 'a b' } }] })), 400, 'tools[0].function.name', /letters, digits/);
  expectError(() => parseChatCompletionRequest(chat({ tool_choice: 'required' })), 400, 'tool_choice', /needs tools/);
  expectError(() => parseChatCompletionRequest(chat({ tools: [{ type: 'function', function: { name: 'f' } }], tool_choice: { type: 'function', function: { name: 'g' } } })), 400, 'tool_choice', /not among tools/);
  expectError(() => parseChatCompletionRequest(chat({ max_tool_calls: 2 })), 400, 'max_tool_calls', /needs tools/);
  expectError(() => parseChatCompletionRequest(chat({ tools: [{ type: 'function', function: { name: 'f' } }], max_tool_calls: 0 })), 400, 'max_tool_calls', /\[1, 32\]/);
  expectError(() => parseChatCompletionRequest(chat({ tools: [{ type: 'function', function: { name: 'f' } }], max_tool_calls: 1.5 })), 400, 'max_tool_calls', /whole number/);
  assert.equal(parseChatCompletionRequest(chat({ tools: [{ type: 'function', function: { name: 'f' } }], max_tool_calls: 3 })).max_tool_calls, 3);
  expectError(() => parseChatCompletionRequest(chat({ response_format: { type: 'xml' } })), 400, 'response_format', /json_schema/);
  expectError(() => parseChatCompletionRequest(chat({ response_format: { type: 'json_schema', json_schema: { name: 'x', schema: [] } } })), 400, 'response_format.json_schema.schema', /JSON Schema object/);
  expectError(() => parseChatCompletionRequest(chat({ messages: [{ role: 'tool', content: 'x' }] })), 400, 'messages[0].tool_call_id', /id of the call/);
  expectError(() => parseChatCompletionRequest(chat({ messages: [{ role: 'assistant', content: null, tool_calls: [{ id: 'c', type: 'function', function: { name: 'f', arguments: '{' } }] }] })), 400, 'messages[0].tool_calls[0].function.arguments', /JSON text/);
  assert.equal(parseChatCompletionRequest(chat({ response_format: { type: 'json_object' } })).response_format?.type, 'json_object');
  expectError(() => parseCompletionRequest({ model: 'm', prompt: 'x', echo: true }), 400, 'echo', /not supported/);
  // the harmless spellings of "off" pass
  parseChatCompletionRequest(chat({ logprobs: false, tools: [], response_format: { type: 'text' } }));
});

test('completion prompts: text, token ids, a one-prompt list; several prompts are refused', () => {
  assert.equal(parseCompletionRequest({ model: 'm', prompt: 'abc' }).prompt, 'abc');
  assert.deepEqual(parseCompletionRequest({ model: 'm', prompt: [1, 2, 3] }).prompt, [1, 2, 3]);
  assert.equal(parseCompletionRequest({ model: 'm', prompt: ['abc'] }).prompt, 'abc');
  assert.deepEqual(parseCompletionRequest({ model: 'm', prompt: [[4, 5]] }).prompt, [4, 5]);
  expectError(() => parseCompletionRequest({ model: 'm', prompt: ['a', 'b'] }), 400, 'prompt', /one prompt per request/);
  expectError(() => parseCompletionRequest({ model: 'm' }), 400, 'prompt', /prompt must be/);
  expectError(() => parseCompletionRequest({ model: 'm', prompt: [1, -2] }), 400, 'prompt', /token ids/);
  expectError(() => parseCompletionRequest({ model: 'm', prompt: { text: 'x' } }), 400, 'prompt', /prompt must be/);
});

test('an unknown model is a 404 naming the served one', () => {
  checkModel('brown', 'brown');
  expectError(() => checkModel('gpt-4o', 'brown'), 404, 'model', /"gpt-4o" does not exist.*"brown"/);
});
