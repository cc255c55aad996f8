/**
 * Request validation: turns a parsed JSON body into a checked wire request, or throws an ApiError
 * (400) naming the field at fault. Pure functions: tested without a model.
 */
import type { GenerateOptions } from '../api/model.js';
import type { ChatMessage } from '../tokenizer/tokenizer.js';
import { ApiError, badRequest } from './errors.js';
import { templateInput } from './tools.js';
import type { ChatCompletionRequest, ChatMessageParam, CompletionRequest, FunctionToolParam, ResponseFormatParam, SamplingParams, ToolCall, ToolChoiceParam } from './openai-types.js';

type Body = Record<string, unknown>;

const ROLES = new Set(['system', 'developer', 'user', 'assistant', 'tool']);
const MAX_STOP_STRINGS = 16;

function describe(v: unknown): string {
  if (v === undefined) return 'nothing (the field is missing)';
  if (v === null) return 'null';
  if (Array.isArray(v)) return v.length === 0 ? 'an empty list' : `a list of ${v.length}`;
  if (typeof v === 'object') return 'an object';
  return typeof v === 'string' ? `the string ${JSON.stringify(v.length > 40 ? v.slice(0, 40) + '...' : v)}` : `${typeof v} ${JSON.stringify(v)}`;
}

function asObject(body: unknown): Body {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw badRequest(`the request body must be a JSON object, got ${describe(body)}`);
  return body as Body;
}

/** An optional number field (null counts as absent) within [min, max]; `integer` for whole numbers. */
function optionalNumber(body: Body, name: string, min: number, max: number, integer = false, minExclusive = false): number | undefined {
  const v = body[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw badRequest(`${name} must be a number, got ${describe(v)}`, name, 'invalid_type');
  if (integer && !Number.isSafeInteger(v)) throw badRequest(`${name} must be a whole number, got ${v}`, name, 'invalid_type');
  if (v < min || v > max || (minExclusive && v === min)) {
    const range = `${minExclusive ? '(' : '['}${min}, ${max === Infinity ? '∞)' : `${max}]`}`;
    throw badRequest(`${name} must be in ${range}, got ${v}`, name, 'invalid_value');
  }
  return v;
}

function optionalBoolean(body: Body, name: string): boolean | undefined {
  const v = body[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') throw badRequest(`${name} must be true or false, got ${describe(v)}`, name, 'invalid_type');
  return v;
}

/** Fields of the OpenAI API this server does not implement: refused rather than silently ignored. */
function refuseUnsupported(body: Body): void {
  const refuse = (name: string, what: string) => {
    throw badRequest(`${name} is not supported by this server (${what})`, name, 'unsupported_parameter');
  };
  if (body.logprobs !== undefined && body.logprobs !== null && body.logprobs !== false) refuse('logprobs', 'no log probabilities are returned');
  if (body.top_logprobs !== undefined && body.top_logprobs !== null && body.top_logprobs !== 0) refuse('top_logprobs', 'no log probabilities are returned');
  if (body.logit_bias && typeof body.logit_bias === 'object' && Object.keys(body.logit_bias).length > 0) refuse('logit_bias', 'no logit bias');
  if (body.echo === true) refuse('echo', 'the prompt is not echoed');
  if (typeof body.best_of === 'number' && body.best_of !== 1) refuse('best_of', 'one candidate per request');
  if (typeof body.suffix === 'string' && body.suffix.length > 0) refuse('suffix', 'no insertion');
}

/** The fields both endpoints share, checked; `model` must be a string. */
function checkSampling(body: Body): SamplingParams & { model: string } {
  if (body.model === undefined) throw badRequest('model is required: the name of the served model (GET /v1/models lists it)', 'model', 'missing_required_parameter');
  if (typeof body.model !== 'string' || body.model.length === 0) {
    throw badRequest(`model must be the name of a served model (GET /v1/models lists them), got ${describe(body.model)}`, 'model', 'invalid_type');
  }
  refuseUnsupported(body);
  const n = optionalNumber(body, 'n', 1, Infinity, true);
  if (n !== undefined && n !== 1) throw badRequest(`n must be 1 (one choice per request), got ${n}`, 'n', 'invalid_value');
  let stop: string[] | undefined;
  if (body.stop !== undefined && body.stop !== null) {
    const list = typeof body.stop === 'string' ? [body.stop] : body.stop;
    if (!Array.isArray(list) || list.some((s) => typeof s !== 'string')) throw badRequest(`stop must be a string or a list of strings, got ${describe(body.stop)}`, 'stop', 'invalid_type');
    if (list.length > MAX_STOP_STRINGS) throw badRequest(`stop takes at most ${MAX_STOP_STRINGS} strings, got ${list.length}`, 'stop', 'invalid_value');
    stop = list as string[];
  }
  const streamOptions = body.stream_options;
  if (streamOptions !== undefined && streamOptions !== null) {
    if (typeof streamOptions !== 'object' || Array.isArray(streamOptions)) throw badRequest(`stream_options must be an object, got ${describe(streamOptions)}`, 'stream_options', 'invalid_type');
    optionalBoolean(streamOptions as Body, 'include_usage');
  }
  if (body.user !== undefined && typeof body.user !== 'string') throw badRequest(`user must be a string, got ${describe(body.user)}`, 'user', 'invalid_type');
  if (body.grammar !== undefined && body.grammar !== null && typeof body.grammar !== 'string') throw badRequest(`grammar must be GBNF text, got ${describe(body.grammar)}`, 'grammar', 'invalid_type');
  const format = body.response_format as Body | null | undefined;
  if (typeof body.grammar === 'string' && format && format.type !== 'text') throw badRequest('give grammar or response_format, not both', 'grammar', 'invalid_value');
  if (typeof body.grammar === 'string' && Array.isArray(body.tools) && body.tools.length > 0 && body.tool_choice !== 'none') throw badRequest('grammar cannot be combined with tools unless tool_choice is "none"', 'grammar', 'invalid_value');
  return {
    model: body.model,
    max_tokens: optionalNumber(body, 'max_tokens', 1, Infinity, true),
    temperature: optionalNumber(body, 'temperature', 0, 2),
    top_p: optionalNumber(body, 'top_p', 0, 1, false, true),
    top_k: optionalNumber(body, 'top_k', 0, Infinity, true),
    min_p: optionalNumber(body, 'min_p', 0, 1),
    seed: optionalNumber(body, 'seed', Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER, true),
    stop,
    n,
    presence_penalty: optionalNumber(body, 'presence_penalty', -2, 2),
    frequency_penalty: optionalNumber(body, 'frequency_penalty', -2, 2),
    repetition_penalty: optionalNumber(body, 'repetition_penalty', 0, Infinity, false, true),
    stream: optionalBoolean(body, 'stream'),
    stream_options: streamOptions ? { include_usage: (streamOptions as Body).include_usage as boolean | undefined } : undefined,
    ...(typeof body.grammar === 'string' ? { grammar: body.grammar } : {}),
  };
}

function checkMessage(m: unknown, i: number): ChatMessageParam {
  const at = `messages[${i}]`;
  if (typeof m !== 'object' || m === null || Array.isArray(m)) throw badRequest(`${at} must be an object with role and content, got ${describe(m)}`, at, 'invalid_type');
  const { role, content } = m as Body;
  if (typeof role !== 'string' || !ROLES.has(role)) throw badRequest(`${at}.role must be one of ${[...ROLES].join(', ')}, got ${describe(role)}`, `${at}.role`, 'invalid_value');
  const extra: Partial<ChatMessageParam> = {};
  const calls = (m as Body).tool_calls;
  if (calls !== undefined && calls !== null) {
    if (role !== 'assistant') throw badRequest(`${at}.tool_calls belongs to assistant messages, not ${role}`, `${at}.tool_calls`, 'invalid_value');
    extra.tool_calls = checkToolCalls(calls, `${at}.tool_calls`);
  }
  if (role === 'tool') {
    const id = (m as Body).tool_call_id;
    if (typeof id !== 'string') throw badRequest(`${at}.tool_call_id must be the id of the call this result answers, got ${describe(id)}`, `${at}.tool_call_id`, 'invalid_type');
    extra.tool_call_id = id;
  }
  if (typeof (m as Body).name === 'string') extra.name = (m as Body).name as string;
  if (typeof content === 'string' || ((content === null || content === undefined) && role === 'assistant' && extra.tool_calls)) return { role: role as ChatMessageParam['role'], content: (content ?? null) as string | null, ...extra };
  if (content === null && role === 'assistant') return { role: 'assistant', content, ...extra };
  if (Array.isArray(content)) {
    content.forEach((part, j) => {
      if (typeof part !== 'object' || part === null || (part as Body).type !== 'text' || typeof (part as Body).text !== 'string') {
        throw badRequest(`${at}.content[${j}] must be a text part {"type": "text", "text": "..."}; this model reads text only`, `${at}.content`, 'invalid_value');
      }
    });
    return { role: role as ChatMessageParam['role'], content: content as ChatMessageParam['content'], ...extra };
  }
  throw badRequest(`${at}.content must be a string or a list of text parts, got ${describe(content)}`, `${at}.content`, 'invalid_type');
}

export function parseChatCompletionRequest(raw: unknown): ChatCompletionRequest {
  const body = asObject(raw);
  const sampling = checkSampling(body);
  if (body.messages === undefined) throw badRequest('messages is required: a list of {role, content} with at least one message', 'messages', 'missing_required_parameter');
  if (Array.isArray(body.messages) && body.messages.length === 0) {
    throw badRequest('messages is an empty list; send at least one message, e.g. [{"role": "user", "content": "Hello"}]', 'messages', 'invalid_value');
  }
  if (!Array.isArray(body.messages)) {
    throw badRequest(`messages must be a list of {role, content}, got ${describe(body.messages)}`, 'messages', 'invalid_type');
  }
  const messages = body.messages.map(checkMessage);
  const maxCompletion = optionalNumber(body, 'max_completion_tokens', 1, Infinity, true);
  const tools = checkTools(body.tools);
  const toolChoice = checkToolChoice(body.tool_choice, tools);
  const parallel = optionalBoolean(body, 'parallel_tool_calls');
  // each further call adds a copy of the calls' grammar: a limit past a few dozen is no limit in practice
  const maxToolCalls = optionalNumber(body, 'max_tool_calls', 1, MAX_TOOL_CALLS, true);
  if (maxToolCalls !== undefined && tools.length === 0) throw badRequest('max_tool_calls needs tools', 'max_tool_calls', 'invalid_value');
  const responseFormat = checkResponseFormat(body.response_format);
  if (tools.length > 0 && toolChoice !== 'none' && responseFormat && responseFormat.type !== 'text') {
    throw badRequest('response_format cannot be combined with tools unless tool_choice is "none": the reply is either calls or the format', 'response_format', 'invalid_value');
  }
  return {
    ...sampling,
    messages,
    max_completion_tokens: maxCompletion,
    ...(tools.length > 0 ? { tools, tool_choice: toolChoice } : {}),
    ...(parallel !== undefined ? { parallel_tool_calls: parallel } : {}),
    ...(maxToolCalls !== undefined ? { max_tool_calls: maxToolCalls } : {}),
    ...(responseFormat ? { response_format: responseFormat } : {}),
  };
}

/** The largest max_tool_calls taken (the grammar holds the calls' rules once per call). */
const MAX_TOOL_CALLS = 32;

const FUNCTION_NAME = /^[a-zA-Z0-9_-]{1,64}$/;

function checkToolCalls(v: unknown, at: string): ToolCall[] {
  if (!Array.isArray(v)) throw badRequest(`${at} must be a list of calls, got ${describe(v)}`, at, 'invalid_type');
  return v.map((c, i) => {
    const f = (c as Body | null)?.function as Body | undefined;
    if (typeof c !== 'object' || c === null || typeof f !== 'object' || f === null || typeof f.name !== 'string' || typeof f.arguments !== 'string') {
      throw badRequest(`${at}[${i}] must be {"id", "type": "function", "function": {"name", "arguments": "<JSON text>"}}`, `${at}[${i}]`, 'invalid_value');
    }
    try {
      JSON.parse(f.arguments);
    } catch {
      throw badRequest(`${at}[${i}].function.arguments must be JSON text, got ${describe(f.arguments)}`, `${at}[${i}].function.arguments`, 'invalid_value');
    }
    const id = (c as Body).id;
    return { id: typeof id === 'string' ? id : `call_${i}`, type: 'function', function: { name: f.name, arguments: f.arguments } };
  });
}

function checkTools(v: unknown): FunctionToolParam[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw badRequest(`tools must be a list of {"type": "function", "function": {...}}, got ${describe(v)}`, 'tools', 'invalid_type');
  const names = new Set<string>();
  return v.map((t, i) => {
    const at = `tools[${i}]`;
    const f = (t as Body | null)?.function as Body | undefined;
    if (typeof t !== 'object' || t === null || (t as Body).type !== 'function' || typeof f !== 'object' || f === null) {
      throw badRequest(`${at} must be {"type": "function", "function": {"name", "description", "parameters"}}`, at, 'invalid_value');
    }
    if (typeof f.name !== 'string' || !FUNCTION_NAME.test(f.name)) throw badRequest(`${at}.function.name must be 1-64 letters, digits, _ or -, got ${describe(f.name)}`, `${at}.function.name`, 'invalid_value');
    if (names.has(f.name)) throw badRequest(`${at}.function.name "${f.name}" is given twice`, `${at}.function.name`, 'invalid_value');
    names.add(f.name);
    if (f.parameters !== undefined && (typeof f.parameters !== 'object' || f.parameters === null || Array.isArray(f.parameters))) {
      throw badRequest(`${at}.function.parameters must be a JSON Schema object, got ${describe(f.parameters)}`, `${at}.function.parameters`, 'invalid_type');
    }
    if (f.description !== undefined && typeof f.description !== 'string') throw badRequest(`${at}.function.description must be a string`, `${at}.function.description`, 'invalid_type');
    const strict = optionalBoolean(f, 'strict');
    return { type: 'function', function: { name: f.name, ...(f.description !== undefined ? { description: f.description as string } : {}), ...(f.parameters !== undefined ? { parameters: f.parameters as Record<string, unknown> } : {}), ...(strict !== undefined ? { strict } : {}) } };
  });
}

function checkToolChoice(v: unknown, tools: FunctionToolParam[]): ToolChoiceParam {
  if (v === undefined || v === null) return tools.length > 0 ? 'auto' : 'none';
  if (v === 'none' || v === 'auto' || v === 'required') {
    if (v !== 'none' && tools.length === 0) throw badRequest(`tool_choice "${v}" needs tools`, 'tool_choice', 'invalid_value');
    return v;
  }
  const name = ((v as Body | null)?.function as Body | undefined)?.name;
  if (typeof v === 'object' && (v as Body).type === 'function' && typeof name === 'string') {
    if (!tools.some((t) => t.function.name === name)) throw badRequest(`tool_choice names the function "${name}", which is not among tools`, 'tool_choice', 'invalid_value');
    return { type: 'function', function: { name } };
  }
  throw badRequest(`tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name"}}, got ${describe(v)}`, 'tool_choice', 'invalid_value');
}

function checkResponseFormat(v: unknown): ResponseFormatParam | undefined {
  if (v === undefined || v === null) return undefined;
  const type = (v as Body | null)?.type;
  if (typeof v !== 'object' || (type !== 'text' && type !== 'json_object' && type !== 'json_schema')) {
    throw badRequest(`response_format must be {"type": "text" | "json_object" | "json_schema"}, got ${describe(v)}`, 'response_format', 'invalid_value');
  }
  if (type !== 'json_schema') return { type };
  const spec = (v as Body).json_schema as Body | undefined;
  if (typeof spec !== 'object' || spec === null || Array.isArray(spec)) {
    throw badRequest('response_format.json_schema must be {"name", "schema", "strict"}', 'response_format.json_schema', 'missing_required_parameter');
  }
  if (spec.schema !== undefined && (typeof spec.schema !== 'object' || spec.schema === null || Array.isArray(spec.schema))) {
    throw badRequest(`response_format.json_schema.schema must be a JSON Schema object, got ${describe(spec.schema)}`, 'response_format.json_schema.schema', 'invalid_type');
  }
  const strict = optionalBoolean(spec, 'strict');
  return { type: 'json_schema', json_schema: { name: typeof spec.name === 'string' ? spec.name : 'response', ...(spec.schema ? { schema: spec.schema as Record<string, unknown> } : {}), ...(strict !== undefined ? { strict } : {}) } };
}

export function parseCompletionRequest(raw: unknown): CompletionRequest {
  const body = asObject(raw);
  const sampling = checkSampling(body);
  if (Array.isArray(body.tools) && body.tools.length > 0) throw badRequest('tools are for /v1/chat/completions; completions take none', 'tools', 'unsupported_parameter');
  const responseFormat = checkResponseFormat(body.response_format);
  let prompt = body.prompt;
  // a list holding one prompt is one prompt
  if (Array.isArray(prompt) && prompt.length === 1 && (typeof prompt[0] === 'string' || Array.isArray(prompt[0]))) prompt = prompt[0];
  const isIds = Array.isArray(prompt) && prompt.length > 0 && prompt.every((id) => Number.isSafeInteger(id) && (id as number) >= 0);
  if (Array.isArray(prompt) && prompt.length > 1 && prompt.every((p) => typeof p === 'string' || Array.isArray(p))) {
    throw badRequest(`prompt holds ${prompt.length} prompts; send one prompt per request (n = 1)`, 'prompt', 'invalid_value');
  }
  if (typeof prompt !== 'string' && !isIds) {
    throw badRequest(`prompt must be a string or a list of token ids, got ${describe(prompt)}`, 'prompt', prompt === undefined ? 'missing_required_parameter' : 'invalid_type');
  }
  return { ...sampling, prompt: prompt as string | number[], ...(responseFormat ? { response_format: responseFormat } : {}) };
}

/**
 * The served model check: the name replies carry. A name other than ours is a 404, as OpenAI answers,
 * or, with `acceptAny`, maps to the first served name.
 */
export function checkModel(requested: string, served: string | string[], acceptAny = false): string {
  const names = typeof served === 'string' ? [served] : served;
  if (names.includes(requested)) return requested;
  if (acceptAny) return names[0]!;
  const list = names.map((n) => `"${n}"`).join(', ');
  throw new ApiError(404, `the model "${requested}" does not exist here; this server serves ${list}`, 'invalid_request_error', 'model', 'model_not_found');
}

/** Wire sampling fields to the library's options (max tokens is decided by the handler). */
export function generateOptions(req: SamplingParams): GenerateOptions {
  const options: GenerateOptions = {
    temperature: req.temperature ?? undefined,
    topP: req.top_p ?? undefined,
    topK: req.top_k ?? undefined,
    minP: req.min_p ?? undefined,
    seed: req.seed ?? undefined,
    presencePenalty: req.presence_penalty ?? undefined,
    frequencyPenalty: req.frequency_penalty ?? undefined,
    repetitionPenalty: req.repetition_penalty ?? undefined,
    stop: (req.stop as string[] | undefined) ?? undefined,
  };
  for (const key of Object.keys(options) as (keyof GenerateOptions)[]) if (options[key] === undefined) delete options[key];
  return options;
}

/** Chat messages as a chat template without tool support takes them: text parts joined, "developer" read as "system". */
export function templateMessages(messages: ChatMessageParam[]): ChatMessage[] {
  return templateInput(messages, [], false).messages;
}
