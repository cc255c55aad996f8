/**
 * OpenAI tool calling over chat templates: which tool-call format a model's template speaks, the
 * grammar (an xgrammar structural tag) that makes the model write calls in it with arguments valid
 * against each function's parameters schema, and the parser that reads the calls back out of the text.
 *
 * Formats recognised, from the template's text (each family's documented format):
 *   llama3   Llama 3.1: {"name": "f", "parameters": {...}} (optionally after <|python_tag|>); several joined by "; "
 *   hermes   Qwen2 / Hermes: <tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>, one block per call
 *   mistral  Mistral: [TOOL_CALLS][{"name": "f", "arguments": {...}}, ...]
 *   phi4     Phi-4-mini: <|tool_call|>[{"name": "f", "arguments": {...}}, ...]<|/tool_call|>
 *            (templates that prompt for functools[...] get that form instead; both are read)
 *   default  a template that does not render tools: the tools go into a system message (defaultToolPrompt)
 *            and calls are written in the hermes form.
 */
import type { StructuralTag, StructuralTagFormat, TagFormat } from '@mlc-ai/web-xgrammar';
import type { JsonSchema } from '../runtime/grammar/compiler.js';
import type { ChatMessage } from '../tokenizer/tokenizer.js';

export interface FunctionTool {
  name: string;
  description?: string;
  parameters?: JsonSchema;
  strict?: boolean;
}

/** 'auto': text or calls; 'none': text only; 'required': at least one call; { name }: a call of that function. */
export type ToolChoice = 'auto' | 'none' | 'required' | { name: string };

export type ToolFamily = 'llama3' | 'hermes' | 'mistral' | 'phi4' | 'phi4-functools' | 'default';

export interface ParsedCall {
  name: string;
  /** The arguments as JSON text (OpenAI's `function.arguments`). */
  arguments: string;
}

interface Layout {
  /** Around the whole list of calls ('' where each call stands alone). */
  listOpen: string;
  listClose: string;
  /** Around each call. */
  itemOpen: string;
  itemClose: string;
  separator: string;
  /** The key of the arguments object. */
  argumentsKey: 'arguments' | 'parameters';
  /** Text that starts a call in free output (the auto mode's trigger). */
  trigger: string;
}

const LAYOUTS: Record<ToolFamily, Layout> = {
  llama3: { listOpen: '', listClose: '', itemOpen: '', itemClose: '', separator: '; ', argumentsKey: 'parameters', trigger: '{"name": ' },
  hermes: { listOpen: '', listClose: '', itemOpen: '<tool_call>\n', itemClose: '\n</tool_call>', separator: '\n', argumentsKey: 'arguments', trigger: '<tool_call>' },
  default: { listOpen: '', listClose: '', itemOpen: '<tool_call>\n', itemClose: '\n</tool_call>', separator: '\n', argumentsKey: 'arguments', trigger: '<tool_call>' },
  mistral: { listOpen: '[TOOL_CALLS][', listClose: ']', itemOpen: '', itemClose: '', separator: ', ', argumentsKey: 'arguments', trigger: '[TOOL_CALLS]' },
  phi4: { listOpen: '<|tool_call|>[', listClose: ']<|/tool_call|>', itemOpen: '', itemClose: '', separator: ', ', argumentsKey: 'arguments', trigger: '<|tool_call|>' },
  'phi4-functools': { listOpen: 'functools[', listClose: ']', itemOpen: '', itemClose: '', separator: ', ', argumentsKey: 'arguments', trigger: 'functools[' },
};

/** Whether a chat template renders `tools` itself (else the default format's system message carries them). */
export function templateRendersTools(template: string | null): boolean {
  return template !== null && /\btools\b/.test(template);
}

/** The tool-call format of a chat template, by the markers its family's documented format uses. */
export function toolFamily(template: string | null): ToolFamily {
  if (!templateRendersTools(template)) return 'default';
  const t = template!;
  if (t.includes('functools')) return 'phi4-functools';
  if (t.includes('<|tool_call|>') || t.includes('<|tool|>')) return 'phi4';
  if (t.includes('[TOOL_CALLS]') || t.includes('[AVAILABLE_TOOLS]')) return 'mistral';
  if (t.includes('<tool_call>')) return 'hermes';
  if (t.includes('<|python_tag|>') || t.includes('<|start_header_id|>') || t.includes('"parameters"')) return 'llama3';
  return 'hermes';
}

/**
 * The grammar for the calls: null for 'none' (no constraint). A reply's calls are one block in the
 * family's layout (Mistral's and Phi-4's lists hold every call; Hermes writes a <tool_call> block
 * each): one call unless `parallel`, else one or more separated as the family separates them, at most
 * `maxCalls` (undefined: no limit). 'required' and a named function make the whole reply that block;
 * 'auto' lets the model write text first, and once it writes the family's trigger the rest of the
 * reply is the block (OpenAI's reply is content, then tool_calls: text between calls has no place).
 */
export function toolCallTag(
  family: ToolFamily,
  tools: FunctionTool[],
  choice: ToolChoice,
  parallel: boolean,
  /** The grammar of a function's arguments (GBNF of its parameters schema, compact JSON). */
  argumentsGrammar: (tool: FunctionTool) => string,
  maxCalls?: number,
): StructuralTag | null {
  if (choice === 'none') return null;
  const l = LAYOUTS[family];
  const chosen = typeof choice === 'object' ? tools.filter((t) => t.name === choice.name) : tools;
  // The block opens with `open` (the list's opening, or the trigger where calls are not in a list)
  // and ends with `close` (the last call's closing and the list's). The first call begins with the
  // rest of a call's opening, every later one with `separator`, which closes the call before it.
  // (xgrammar 0.1.27 takes tags_with_separator only last in a sequence or in a tag with an end, and
  // no empty strings: hence a call's closing brace is written by what follows it.)
  const head = `${l.listOpen}${l.itemOpen}{"name": `;
  const open = l.listOpen || l.trigger;
  if (!head.startsWith(open)) throw new Error(`tool format ${family}: a call's opening ${JSON.stringify(head)} does not start with ${JSON.stringify(open)}`);
  const rest = head.slice(open.length);
  const separator = `}${l.itemClose}${l.separator}${`${l.itemOpen}{"name": `.slice(0, `${l.itemOpen}{"name": `.length - rest.length)}`;
  const close = `}${l.itemClose}${l.listClose}`;
  const tags = chosen.map((t): TagFormat => ({
    type: 'tag',
    begin: `${rest}${JSON.stringify(t.name)}, "${l.argumentsKey}": `,
    content: { type: 'grammar', grammar: argumentsGrammar(t) },
    end: '',
  }));
  const one: StructuralTagFormat = tags.length === 1 ? tags[0]! : { type: 'or', elements: tags };
  const limit = parallel ? maxCalls ?? Infinity : 1;
  let calls: StructuralTagFormat;
  if (limit === 1) calls = one;
  else if (limit === Infinity) calls = { type: 'tags_with_separator', tags, separator, at_least_one: true };
  else {
    // a call, then up to limit - 1 more, each after the separator
    const nothing: StructuralTagFormat = { type: 'grammar', grammar: 'root ::= ""' };
    let more: StructuralTagFormat = { type: 'sequence', elements: [{ type: 'const_string', value: separator }, one] };
    for (let k = 2; k < limit; k++) more = { type: 'sequence', elements: [{ type: 'const_string', value: separator }, one, { type: 'or', elements: [nothing, more] }] };
    calls = { type: 'sequence', elements: [one, { type: 'or', elements: [nothing, more] }] };
  }
  const block: TagFormat = { type: 'tag', begin: open, content: calls, end: close };
  if (choice !== 'auto') return { type: 'structural_tag', format: block };
  return { type: 'structural_tag', format: { type: 'triggered_tags', triggers: [l.trigger], tags: [block], at_least_one: false, stop_after_first: true } };
}

/** End of the JSON value starting at text[start] ('{' or '['), or -1 where it does not close. */
function jsonEnd(text: string, start: number): number {
  let depth = 0, inString = false;
  for (let i = start; i < text.length; i++) {
    const c = text[i]!;
    if (inString) {
      if (c === '\\') i++;
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === '{' || c === '[') depth++;
    else if (c === '}' || c === ']') {
      depth--;
      if (depth === 0) return i + 1;
    }
  }
  return -1;
}

function callOf(value: unknown): ParsedCall | null {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return null;
  const v = value as Record<string, unknown>;
  // some families nest the call as {"type": "function", "function": {...}}
  if (typeof v.function === 'object' && v.function !== null) return callOf(v.function);
  if (typeof v.name !== 'string') return null;
  const args = v.arguments ?? v.parameters ?? {};
  return { name: v.name, arguments: typeof args === 'string' ? args : JSON.stringify(args) };
}

/** The calls found at each marker in text, and the text before the first one (the reply's content). */
export function parseToolCalls(family: ToolFamily, text: string): { content: string; calls: ParsedCall[] } {
  const markers =
    family === 'llama3' ? ['<|python_tag|>', '{"name"']
    : family === 'mistral' ? ['[TOOL_CALLS]']
    : family === 'phi4' || family === 'phi4-functools' ? ['<|tool_call|>', 'functools']
    : ['<tool_call>'];
  const calls: ParsedCall[] = [];
  let first = -1;
  let at = 0;
  while (at < text.length) {
    let found = -1, marker = '';
    for (const m of markers) {
      const i = text.indexOf(m, at);
      if (i >= 0 && (found < 0 || i < found)) (found = i), (marker = m);
    }
    if (found < 0) break;
    const open = marker.startsWith('{') ? found : found + marker.length;
    const start = text.slice(open).search(/[[{]/);
    if (start < 0 || text.slice(open, open + start).trim() !== '') {
      at = found + marker.length;
      continue;
    }
    const end = jsonEnd(text, open + start);
    if (end < 0) break;
    let value: unknown;
    try {
      value = JSON.parse(text.slice(open + start, end));
    } catch {
      at = found + marker.length;
      continue;
    }
    const found_ = (Array.isArray(value) ? value : [value]).map(callOf);
    if (found_.length === 0 || found_.some((c) => c === null)) {
      at = found + marker.length;
      continue;
    }
    if (first < 0) first = found;
    calls.push(...(found_ as ParsedCall[]));
    at = end;
  }
  return { content: first < 0 ? text : text.slice(0, first).trimEnd(), calls };
}

/** Text a streamed reply must hold back: from the first marker (or a marker's start at the very end). */
export function contentEnd(family: ToolFamily, text: string): number {
  const l = LAYOUTS[family];
  const markers = family === 'llama3' ? ['<|python_tag|>', '{"name"'] : family.startsWith('phi4') ? ['<|tool_call|>', 'functools'] : [l.trigger];
  let end = text.length;
  for (const m of markers) {
    const i = text.indexOf(m);
    if (i >= 0) end = Math.min(end, i);
    for (let n = Math.min(m.length - 1, text.length); n > 0; n--) {
      if (text.endsWith(m.slice(0, n))) {
        end = Math.min(end, text.length - n);
        break;
      }
    }
  }
  return end;
}

/** The calls written in a family's format (an assistant turn's tool_calls, for templates that do not render them). */
export function formatToolCalls(family: ToolFamily, calls: ParsedCall[]): string {
  const l = LAYOUTS[family];
  const items = calls.map((c) => `${l.itemOpen}{"name": ${JSON.stringify(c.name)}, "${l.argumentsKey}": ${c.arguments}}${l.itemClose}`);
  return l.listOpen + items.join(l.separator) + l.listClose;
}

/** The system message that carries the tools for a template that does not render them (the default format). */
export function defaultToolPrompt(tools: FunctionTool[]): string {
  const list = tools.map((t) => JSON.stringify(t)).join('\n');
  return `Functions you may call:\n<tools>\n${list}\n</tools>\nTo call one, reply <tool_call>\n{"name": <name>, "arguments": <arguments object>}\n</tool_call>`;
}

/** An OpenAI message as the chat template reads it (wire shapes in openai-types.ts). */
interface WireMessage {
  role: string;
  content: string | { text: string }[] | null;
  name?: string;
  tool_calls?: { id: string; type: 'function'; function: { name: string; arguments: string } }[];
  tool_call_id?: string;
}

/**
 * The messages (and `tools`) for the chat template. A template that renders tools gets them as
 * transformers passes them: `tools` beside the messages, assistant `tool_calls` with their arguments
 * parsed into objects, `role: "tool"` results as they are. Any other template gets the default
 * format: the tools in a system message, past calls written into the assistant's text in the hermes
 * form, results as user turns in <tool_response> tags.
 */
export function templateInput(
  messages: WireMessage[],
  tools: FunctionTool[],
  rendersTools: boolean,
): { messages: ChatMessage[]; tools?: unknown[] } {
  const text = (c: WireMessage['content']) => (typeof c === 'string' ? c : (c ?? []).map((p) => p.text).join(''));
  const out: ChatMessage[] = [];
  for (const m of messages) {
    const role = m.role === 'developer' ? 'system' : m.role;
    const base: ChatMessage = { role, content: text(m.content) };
    if (m.name !== undefined) base.name = m.name;
    if (rendersTools) {
      if (m.tool_calls) base.tool_calls = m.tool_calls.map((c) => ({ id: c.id, type: 'function', function: { name: c.function.name, arguments: JSON.parse(c.function.arguments) as unknown } }));
      if (m.tool_call_id !== undefined) base.tool_call_id = m.tool_call_id;
      out.push(base);
    } else if (m.tool_calls) {
      const calls = formatToolCalls('default', m.tool_calls.map((c) => ({ name: c.function.name, arguments: c.function.arguments })));
      out.push({ role, content: base.content ? `${base.content}\n${calls}` : calls });
    } else if (role === 'tool') {
      out.push({ role: 'user', content: `<tool_response>\n${base.content}\n</tool_response>` });
    } else out.push(base);
  }
  if (rendersTools) return tools.length > 0 ? { messages: out, tools: tools.map((f) => ({ type: 'function', function: f })) } : { messages: out };
  if (tools.length > 0) {
    const prompt = defaultToolPrompt(tools);
    if (out[0]?.role === 'system') out[0] = { ...out[0], content: `${out[0].content}\n\n${prompt}` };
    else out.unshift({ role: 'system', content: prompt });
  }
  return { messages: out };
}
