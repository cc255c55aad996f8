/**
 * POST /v1/chat/completions and POST /v1/completions: a validated wire request becomes one library
 * generation; its chunks go out as server-sent events or are gathered into one reply with usage.
 */
import type { ServerResponse } from 'node:http';
import type { GenerateOptions, GenerationStream, Model } from '../api/model.js';
import { AbortError } from '../errors.js';
import type { GenerationResult } from '../runtime/generate.js';
import { toApiError } from './errors.js';
import { randomBytes } from 'node:crypto';
import { EventStream, sendJson } from './http.js';
import { GrammarError, type ResponseFormat } from '../runtime/grammar/compiler.js';
import type { Constraint } from '../runtime/token-filter.js';
import { badRequest } from './errors.js';
import type { ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Completion, CompletionChunk, CompletionRequest, ResponseFormatParam, ToolCall, ToolCallDelta, Usage } from './openai-types.js';
import { contentEnd, parseToolCalls, templateInput, templateRendersTools, toolCallTag, toolFamily, type FunctionTool, type ToolChoice, type ToolFamily } from './tools.js';
import { generateOptions } from './validate.js';

/** What the server knows of one request while it runs; the log line is written from it. */
export interface RequestRecord {
  id: string;
  startedAt: number;
  status: number;
  promptTokens: number;
  completionTokens: number;
  /** Prompt tokens reused from a kept KV cache. */
  cachedTokens: number;
  /** From the request's arrival to its first generated token, ms (queue wait and prefill included). */
  firstTokenMs: number | null;
  /** When the latest generated tokens arrived (performance.now()). */
  lastTokenAt: number | null;
  tokensPerSecond: number | null;
  note: string;
}

export interface GenerationRequest {
  kind: 'chat' | 'text';
  model: Model;
  res: ServerResponse;
  record: RequestRecord;
  /** Aborted when the client goes away or the server's grace period ends. */
  signal: AbortSignal;
  /** The model name replies carry (the one requested, or the served name it maps to). */
  modelName: string;
  /** Called as tokens arrive after the first: how many, and the ms since the previous ones. */
  onTokens?: (tokens: number, ms: number) => void;
}

const usageOf = (r: GenerationResult): Usage => ({
  prompt_tokens: r.promptTokens,
  completion_tokens: r.tokenIds.length,
  total_tokens: r.promptTokens + r.tokenIds.length,
  prompt_tokens_details: { cached_tokens: r.cachedTokens },
});

/** Tool calling for one request: the template's format and what the reply may hold. */
interface ToolMode {
  family: ToolFamily;
  choice: ToolChoice;
}

/** A grammar or schema problem as a 400 naming its field. */
function grammarError(e: unknown, param: string): never {
  if (e instanceof GrammarError) throw badRequest(e.message, e.param && e.param !== 'responseFormat' ? e.param : param, 'invalid_grammar');
  throw e;
}

async function responseFormatConstraint(model: Model, format: ResponseFormatParam | undefined, grammar: string | undefined): Promise<Constraint | null> {
  if (grammar !== undefined) return model.compileConstraint({ grammar }).catch((e) => grammarError(e, 'grammar'));
  if (!format || format.type === 'text') return null;
  const library: ResponseFormat =
    format.type === 'json_object' ? { type: 'json_object' } : { type: 'json_schema', schema: format.json_schema.schema ?? {}, strict: format.json_schema.strict ?? false };
  return model.compileConstraint({ responseFormat: library }).catch((e) => grammarError(e, 'response_format'));
}

export async function handleChatCompletion(g: GenerationRequest, req: ChatCompletionRequest): Promise<void> {
  const { model } = g;
  const template = model.chatTemplate;
  const tools: FunctionTool[] = (req.tools ?? []).map((t) => t.function as FunctionTool);
  const wire = req.tool_choice ?? 'none';
  const choice: ToolChoice = typeof wire === 'object' ? { name: wire.function.name } : wire;
  const renders = templateRendersTools(template);
  // tool_choice "none": the tools are not shown to the model at all
  const input = templateInput(req.messages, choice === 'none' ? [] : tools, renders);
  let promptIds: number[];
  try {
    promptIds = model.chatPromptIds(input.messages, input.tools ? { tools: input.tools } : {});
  } catch (e) {
    throw toApiError(e, 'messages');
  }
  const maxTokens = req.max_completion_tokens ?? req.max_tokens ?? Math.max(1, model.contextLength - promptIds.length);
  let constraint: Constraint | null = null;
  let toolMode: ToolMode | null = null;
  if (tools.length > 0 && choice !== 'none') {
    toolMode = { family: toolFamily(template), choice };
    const grammars = new Map<FunctionTool, string>();
    for (const [i, t] of tools.entries()) {
      const param = `tools[${i}].function.parameters`;
      grammars.set(t, await model.schemaGrammar(t.parameters ?? { type: 'object' }, { strict: t.strict ?? false, param }).catch((e) => grammarError(e, param)));
    }
    const tag = toolCallTag(toolMode.family, tools, choice, req.parallel_tool_calls ?? true, (t) => grammars.get(t)!, req.max_tool_calls)!;
    constraint = await model.compileConstraint({ grammar: tag }).catch((e) => grammarError(e, 'tools'));
  } else constraint = await responseFormatConstraint(model, req.response_format, req.grammar);
  await run(g, req, promptIds, { ...generateOptions(req), maxTokens, eosTokenIds: model.chatEndTokenIds, constraint }, 'messages', toolMode);
}

export async function handleCompletion(g: GenerationRequest, req: CompletionRequest): Promise<void> {
  const constraint = await responseFormatConstraint(g.model, req.response_format, req.grammar);
  // OpenAI's legacy default for completions is 16 new tokens
  await run(g, req, g.model.promptIds(req.prompt), { ...generateOptions(req), maxTokens: req.max_tokens ?? 16, constraint }, 'prompt', null);
}

const callId = () => `call_${randomBytes(12).toString('base64url')}`;

/** The reply's content and calls: calls only where the generation ended at a stop (not cut by length). */
function replyOf(text: string, finish: GenerationResult['finishReason'], tools: ToolMode | null): { content: string | null; calls: ToolCall[]; finish: 'stop' | 'length' | 'tool_calls' } {
  if (!tools) return { content: text, calls: [], finish };
  const parsed = parseToolCalls(tools.family, text);
  if (parsed.calls.length === 0 || finish !== 'stop') return { content: text, calls: [], finish };
  const calls = parsed.calls.map((c) => ({ id: callId(), type: 'function' as const, function: { name: c.name, arguments: c.arguments } }));
  return { content: parsed.content === '' ? null : parsed.content, calls, finish: 'tool_calls' };
}

async function run(g: GenerationRequest, req: ChatCompletionRequest | CompletionRequest, promptIds: number[], options: GenerateOptions, promptParam: string, tools: ToolMode | null): Promise<void> {
  const { kind, model, res, record } = g;
  record.promptTokens = promptIds.length;
  const created = Math.floor(Date.now() / 1000);
  // every body starts id, object, created, model, in OpenAI's order
  const head = <O extends string>(object: O) => ({ id: record.id, object, created, model: g.modelName });
  let stream: GenerationStream;
  try {
    // throws at once (before any byte is sent) for a prompt past the context or a full queue
    stream = model.generate(promptIds, { ...options, stream: true, signal: g.signal });
  } catch (e) {
    throw toApiError(e, promptParam);
  }

  const countTokens = (tokens: number) => {
    if (tokens === 0) return;
    const now = performance.now();
    record.completionTokens += tokens;
    if (record.firstTokenMs === null) record.firstTokenMs = now - record.startedAt;
    else if (record.lastTokenAt !== null) g.onTokens?.(tokens, now - record.lastTokenAt);
    record.lastTokenAt = now;
  };

  if (!req.stream) {
    let result: GenerationResult;
    try {
      for await (const chunk of stream) countTokens(chunk.tokenIds.length);
      result = await stream.result;
    } catch (e) {
      throw toApiError(e, promptParam);
    }
    record.tokensPerSecond = result.tokensPerSecond;
    record.cachedTokens = result.cachedTokens;
    record.status = 200;
    const reply = replyOf(result.text, result.finishReason, tools);
    const message: ChatCompletion['choices'][0]['message'] = { role: 'assistant', content: reply.content, ...(reply.calls.length ? { tool_calls: reply.calls } : {}) };
    const body: ChatCompletion | Completion =
      kind === 'chat'
        ? { ...head('chat.completion'), choices: [{ index: 0, message, finish_reason: reply.finish, logprobs: null }], usage: usageOf(result) }
        : { ...head('text_completion'), choices: [{ index: 0, text: result.text, finish_reason: result.finishReason, logprobs: null }], usage: usageOf(result) };
    sendJson(res, 200, body, { 'X-Request-Id': record.id });
    return;
  }

  const includeUsage = req.stream_options?.include_usage === true;
  const usageField = includeUsage ? { usage: null } : {};
  const events = new EventStream(res, { 'X-Request-Id': record.id });
  record.status = 200;
  const chatChunk = (delta: ChatCompletionChunk['choices'][0]['delta'], finish: ChatCompletionChunk['choices'][0]['finish_reason']): ChatCompletionChunk =>
    ({ ...head('chat.completion.chunk'), choices: [{ index: 0, delta, finish_reason: finish, logprobs: null }], ...usageField });
  const textChunk = (text: string, finish: CompletionChunk['choices'][0]['finish_reason']): CompletionChunk =>
    ({ ...head('text_completion'), choices: [{ index: 0, text, finish_reason: finish, logprobs: null }], ...usageField });

  if (kind === 'chat') events.send(chatChunk({ role: 'assistant', content: '' }, null));
  // with tools, text that may start a call is held back until it is known to be content or calls
  let text = '', sent = 0;
  try {
    for await (const chunk of stream) {
      countTokens(chunk.tokenIds.length);
      // a model without a tokenizer (token-id prompts) streams a chunk per token, its text empty
      if (!tools) {
        if (chunk.text || (!model.hasTokenizer && chunk.tokenIds.length > 0)) events.send(kind === 'chat' ? chatChunk({ content: chunk.text }, null) : textChunk(chunk.text, null));
        continue;
      }
      text += chunk.text;
      const end = contentEnd(tools.family, text);
      if (end > sent) {
        events.send(chatChunk({ content: text.slice(sent, end) }, null));
        sent = end;
      }
    }
    const result = await stream.result;
    record.tokensPerSecond = result.tokensPerSecond;
    record.cachedTokens = result.cachedTokens;
    let finish: ChatCompletionChunk['choices'][0]['finish_reason'] = result.finishReason;
    if (tools) {
      const reply = replyOf(text, result.finishReason, tools);
      const content = reply.calls.length ? (reply.content ?? '') : text;
      if (content.length > sent) events.send(chatChunk({ content: content.slice(sent) }, null));
      reply.calls.forEach((c, index) => {
        const head: ToolCallDelta = { index, id: c.id, type: 'function', function: { name: c.function.name, arguments: '' } };
        events.send(chatChunk({ tool_calls: [head] }, null));
        events.send(chatChunk({ tool_calls: [{ index, function: { arguments: c.function.arguments } }] }, null));
      });
      finish = reply.finish;
    }
    events.send(kind === 'chat' ? chatChunk({}, finish) : textChunk('', result.finishReason));
    if (includeUsage) events.send({ ...head(kind === 'chat' ? 'chat.completion.chunk' : 'text_completion'), choices: [], usage: usageOf(result) });
    events.done();
  } catch (e) {
    if (e instanceof AbortError && res.destroyed) {
      record.note = 'client disconnected';
      record.status = 499;
      return;
    }
    // headers are gone already: the error travels as an event, as OpenAI's clients read it
    const error = toApiError(e, promptParam);
    record.status = error.status;
    record.note = error.message;
    events.send(error.body);
    events.done();
  }
}
