/**
 * The OpenAI wire format, as this server speaks it: request and response bodies of /v1/completions,
 * /v1/chat/completions and /v1/models, field names in snake_case exactly as on the wire. Only this
 * module and the handlers that build these bodies use snake_case; everything else is camelCase.
 */

/** Sampling and length fields shared by both generation endpoints (top_k, min_p, repetition_penalty are extensions). */
export interface SamplingParams {
  max_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  top_k?: number | null;
  min_p?: number | null;
  seed?: number | null;
  stop?: string | string[] | null;
  n?: number | null;
  presence_penalty?: number | null;
  frequency_penalty?: number | null;
  repetition_penalty?: number | null;
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean | null } | null;
  user?: string;
  /** Extension (as llama-server's): a GBNF grammar the output must match. */
  grammar?: string;
}

export interface ChatContentPart {
  type: 'text';
  text: string;
}

export interface ToolCall {
  id: string;
  type: 'function';
  function: { name: string; arguments: string };
}

export interface ChatMessageParam {
  role: 'system' | 'developer' | 'user' | 'assistant' | 'tool';
  content: string | ChatContentPart[] | null;
  name?: string;
  /** assistant: the calls it made. */
  tool_calls?: ToolCall[];
  /** tool: the call this result answers. */
  tool_call_id?: string;
}

export interface FunctionToolParam {
  type: 'function';
  function: { name: string; description?: string; parameters?: Record<string, unknown>; strict?: boolean | null };
}

export type ToolChoiceParam = 'none' | 'auto' | 'required' | { type: 'function'; function: { name: string } };

export type ResponseFormatParam =
  | { type: 'text' }
  | { type: 'json_object' }
  | { type: 'json_schema'; json_schema: { name: string; description?: string; schema?: Record<string, unknown>; strict?: boolean | null } };

export interface ChatCompletionRequest extends SamplingParams {
  model: string;
  messages: ChatMessageParam[];
  /** The newer name of max_tokens; wins when both are given. */
  max_completion_tokens?: number | null;
  tools?: FunctionToolParam[];
  tool_choice?: ToolChoiceParam;
  parallel_tool_calls?: boolean;
  /** Extension (the Responses API's name): with parallel calls, at most this many in one reply. */
  max_tool_calls?: number;
  response_format?: ResponseFormatParam;
}

export interface CompletionRequest extends SamplingParams {
  model: string;
  /** One prompt: text, or token ids. (Lists of prompts need n > 1 choices and are refused.) */
  prompt: string | number[];
  response_format?: ResponseFormatParam;
}

export type FinishReason = 'stop' | 'length' | 'tool_calls';

/** A streamed piece of a call: the first for each index carries id, type and name. */
export interface ToolCallDelta {
  index: number;
  id?: string;
  type?: 'function';
  function: { name?: string; arguments: string };
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** cached_tokens: prompt tokens whose KV cache was reused from an earlier request (prefix reuse). */
  prompt_tokens_details: { cached_tokens: number };
}

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  choices: { index: number; message: { role: 'assistant'; content: string | null; tool_calls?: ToolCall[] }; finish_reason: FinishReason; logprobs: null }[];
  usage: Usage;
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  choices: { index: number; delta: { role?: 'assistant'; content?: string; tool_calls?: ToolCallDelta[] }; finish_reason: FinishReason | null; logprobs: null }[];
  /** With stream_options.include_usage: null on every chunk but the last, which has no choices. */
  usage?: Usage | null;
}

export interface Completion {
  id: string;
  object: 'text_completion';
  created: number;
  model: string;
  choices: { index: number; text: string; finish_reason: FinishReason; logprobs: null }[];
  usage: Usage;
}

export interface CompletionChunk {
  id: string;
  object: 'text_completion';
  created: number;
  model: string;
  choices: { index: number; text: string; finish_reason: FinishReason | null; logprobs: null }[];
  usage?: Usage | null;
}

export interface ModelObject {
  id: string;
  object: 'model';
  created: number;
  owned_by: string;
}

export interface ModelList {
  object: 'list';
  data: ModelObject[];
}

export interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}
