/**
 * Tool-call formats without a model: each family's template is recognised; calls written in each
 * family's documented format (and its variants: Llama's <|python_tag|>, Phi-4's functools[...]) are
 * parsed back with the text before them as content; what a streamed reply must hold back; calls
 * formatted for a template without tool support read back as the same calls; the grammar of each
 * family's calls (xgrammar's structural tag) accepts exactly the call runs each tool_choice,
 * parallel_tool_calls and max_tool_calls allow.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { contentEnd, formatToolCalls, parseToolCalls, templateRendersTools, toolCallTag, toolFamily } from '../../src/server/tools.js';
import { xgrammar } from '../../src/runtime/grammar/xgrammar.js';
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

test('the calls grammar of each family: one call, or with parallel calls several in the family\'s layout up to max_tool_calls; auto allows text first', async () => {
  const xg = await xgrammar();
  const tools = [{ name: 'get_weather' }, { name: 'get_time' }];
  const args = () => 'root ::= "{}"';
  const call = (name: string) => ({ name, arguments: '{}' });
  const runs = [[call('get_weather')], [call('get_weather'), call('get_time')], [call('get_time'), call('get_time'), call('get_weather')], [call('get_time'), call('get_time'), call('get_weather'), call('get_weather')]];
  const failures: string[] = [];
  let checked = 0;
  for (const family of ['llama3', 'hermes', 'mistral', 'phi4', 'phi4-functools', 'default'] as const) {
    for (const [choice, parallel, max] of [['required', false], ['required', true], ['required', true, 3], ['auto', false], ['auto', true], ['auto', true, 2]] as const) {
      const grammar = await xg.Grammar.fromStructuralTag(toolCallTag(family, tools, choice, parallel, args, max)!);
      const limit = parallel ? max ?? Infinity : 1;
      for (const calls of runs) {
        for (const before of ['', 'Let me see. ']) {
          const text = before + formatToolCalls(family, calls);
          const want = calls.length <= limit && (before === '' || choice === 'auto');
          if ((await xg.Testings.isGrammarAcceptString(grammar, text)) !== want) failures.push(`${family} ${choice} parallel=${parallel} max=${max}: ${want ? 'refuses' : 'accepts'} ${JSON.stringify(text)}`);
          checked++;
        }
      }
      if ((await xg.Testings.isGrammarAcceptString(grammar, 'Plain text.')) !== (choice === 'auto')) failures.push(`${family} ${choice}: plain text`);
      grammar.dispose();
    }
    // a named function: only its calls
    const named = await xg.Grammar.fromStructuralTag(toolCallTag(family, tools, { name: 'get_time' }, true, args, 2)!);
    if (!(await xg.Testings.isGrammarAcceptString(named, formatToolCalls(family, [call('get_time'), call('get_time')])))) failures.push(`${family} named: refuses two calls of it`);
    if (await xg.Testings.isGrammarAcceptString(named, formatToolCalls(family, [call('get_time'), call('get_weather')]))) failures.push(`${family} named: accepts another function`);
    named.dispose();
  }
  assert.deepEqual(failures, [], `${failures.length} of ${checked} strings judged wrongly`);
});
