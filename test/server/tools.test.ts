/**
 * Tool-call formats without a model: each family's template is recognised; calls written in each
 * family's documented format (and its variants: Llama's <|python_tag|>, Phi-4's functools[...]) are
 * parsed back with the text before them as content; what a streamed reply must hold back; calls
 * formatted for a template without tool support read back as the same calls.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { contentEnd, formatToolCalls, parseToolCalls, templateRendersTools, toolFamily } from '../../src/server/tools.js';
import { HERMES, LLAMA3, MISTRAL, PHI4 } from './tool-templates.js';

const WEATHER = { name: 'get_weather', arguments: '{"city":"Oslo"}' };
const TIME = { name: 'get_time', arguments: '{"zone":"utc"}' };

test('families are recognised from their templates; a template without tools gets the default format', () => {
  assert.equal(toolFamily(LLAMA3), 'llama3');
  assert.equal(toolFamily(HERMES), 'hermes');
  assert.equal(toolFamily(MISTRAL), 'mistral');
  assert.equal(toolFamily(PHI4), 'phi4');
  assert.equal(toolFamily('{% if tools %}functools[...]{% endif %}'), 'phi4-functools');
  const demo = "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}";
  assert.equal(templateRendersTools(demo), false);
  assert.equal(toolFamily(demo), 'default');
  assert.equal(toolFamily(null), 'default');
});

test('each family\'s documented call format parses back into calls, with the text before as content', () => {
  const cases: [Parameters<typeof parseToolCalls>[0], string, string][] = [
    ['llama3', '{"name": "get_weather", "parameters": {"city": "Oslo"}}', ''],
    ['llama3', '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo"}}; {"name": "get_time", "parameters": {"zone": "utc"}}', ''],
    ['hermes', 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "utc"}}\n</tool_call>', 'Let me look.'],
    ['mistral', '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo"}}, {"name": "get_time", "arguments": {"zone": "utc"}}]', ''],
    ['phi4', '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Oslo"}}, {"name": "get_time", "arguments": {"zone": "utc"}}]<|/tool_call|>', ''],
    ['phi4', 'functools[{"name": "get_weather", "arguments": {"city": "Oslo"}}]', ''],
    ['phi4-functools', 'Sure. functools[{"name": "get_weather", "arguments": {"city": "Oslo"}}, {"name": "get_time", "arguments": {"zone": "utc"}}]', 'Sure.'],
    ['default', '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>', ''],
  ];
  for (const [family, text, content] of cases) {
    const parsed = parseToolCalls(family, text);
    const want = text.includes('get_time') ? [WEATHER, TIME] : [WEATHER];
    assert.deepEqual(parsed.calls, want, `${family}: ${text}`);
    assert.equal(parsed.content, content, `${family}: content`);
  }
  // no call, a broken call, a call cut off: all text
  for (const text of ['Plain words.', '<tool_call>\n{"name": "get_weather", "argu', '<tool_call>{"nom": 1}</tool_call>']) {
    assert.deepEqual(parseToolCalls('hermes', text), { content: text, calls: [] }, text);
  }
});

test('formatting calls and parsing them back is the identity; streaming holds back a marker and what may start one', () => {
  for (const family of ['llama3', 'hermes', 'mistral', 'phi4', 'phi4-functools', 'default'] as const) {
    assert.deepEqual(parseToolCalls(family, formatToolCalls(family, [WEATHER, TIME])).calls, [WEATHER, TIME], family);
  }
  assert.equal(contentEnd('hermes', 'Hello <tool_call>\n{'), 6);
  assert.equal(contentEnd('hermes', 'Hello <tool'), 6);
  assert.equal(contentEnd('hermes', 'Hello there'), 11);
  assert.equal(contentEnd('mistral', 'ok [TOOL_'), 3);
  assert.equal(contentEnd('llama3', '{"name": "f"'), 0);
});
