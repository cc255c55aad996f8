/**
 * POST /v1/chat/completions and POST /v1/completions: a validated wire request becomes one library
 * generation; its chunks go out as server-sent events or are gathered into one reply with usage.
 */
import type { ServerResponse } from 'node:http';
import type { GenerateOptions, GenerationStream, Model } from '../api/model.js';
import { AbortError } from '../errors.js';
import type { GenerationResult } from '../runtime/generate.js';
import { toApiError } from './errors.js';
import { EventStream, sendJson } from './http.js';
import type { ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Completion, CompletionChunk, CompletionRequest, Usage } from './openai-types.js';
import { generateOptions, templateMessages } from './validate.js';

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

export async function handleChatCompletion(g: GenerationRequest, req: ChatCompletionRequest): Promise<void> {
  const { model } = g;
  const promptIds = model.chatPromptIds(templateMessages(req.messages));
  const maxTokens = req.max_completion_tokens ?? req.max_tokens ?? Math.max(1, model.contextLength - promptIds.length);
  await run(g, req, promptIds, { ...generateOptions(req), maxTokens, eosTokenIds: model.chatEndTokenIds }, 'messages');
}

export async function handleCompletion(g: GenerationRequest, req: CompletionRequest): Promise<void> {
  // OpenAI's legacy default for completions is 16 new tokens
  await run(g, req, g.model.promptIds(req.prompt), { ...generateOptions(req), maxTokens: req.max_tokens ?? 16 }, 'prompt');
}

async function run(g: GenerationRequest, req: ChatCompletionRequest | CompletionRequest, promptIds: number[], options: GenerateOptions, promptParam: string): Promise<void> {
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
    const body: ChatCompletion | Completion =
      kind === 'chat'
        ? { ...head('chat.completion'), choices: [{ index: 0, message: { role: 'assistant', content: result.text }, finish_reason: result.finishReason, logprobs: null }], usage: usageOf(result) }
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
  try {
    for await (const chunk of stream) {
      countTokens(chunk.tokenIds.length);
      // a model without a tokenizer (token-id prompts) streams a chunk per token, its text empty
      if (chunk.text || (!model.hasTokenizer && chunk.tokenIds.length > 0)) events.send(kind === 'chat' ? chatChunk({ content: chunk.text }, null) : textChunk(chunk.text, null));
    }
    const result = await stream.result;
    record.tokensPerSecond = result.tokensPerSecond;
    record.cachedTokens = result.cachedTokens;
    events.send(kind === 'chat' ? chatChunk({}, result.finishReason) : textChunk('', result.finishReason));
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
