/** HTTP errors in OpenAI's JSON error shape, and how library errors map to them. */
import { ContextLengthError, ModelDisposedError, QueueFullError } from '../api/errors.js';
import { AbortError, ChatTemplateError, InvalidInputError, ModelFormatError } from '../errors.js';
import type { ErrorBody } from './openai-types.js';

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string = status === 400 ? 'invalid_request_error' : 'server_error',
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
    this.name = 'ApiError';
  }

  get body(): ErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

export const badRequest = (message: string, param: string | null = null, code: string | null = null) =>
  new ApiError(400, message, 'invalid_request_error', param, code);

/** Any error a handler meets, as the ApiError to send; `promptParam` names the field a context overflow blames. */
export function toApiError(e: unknown, promptParam = 'messages'): ApiError {
  if (e instanceof ApiError) return e;
  if (e instanceof ContextLengthError) {
    return new ApiError(400, e.message, 'invalid_request_error', e.promptTokens >= e.contextLength ? promptParam : 'max_tokens', 'context_length_exceeded');
  }
  if (e instanceof QueueFullError) return new ApiError(429, e.message, 'rate_limit_error', null, 'server_overloaded');
  if (e instanceof ModelDisposedError || e instanceof AbortError) return new ApiError(503, 'the server is shutting down; retry on another instance', 'server_error', null, 'shutting_down');
  if (e instanceof InvalidInputError) return badRequest(e.message);
  // the model's files are the operator's: a 500 naming the file (the server warned at start-up)
  if (e instanceof ChatTemplateError) return new ApiError(500, `${e.message} (a problem of the served model, not of the request)`, 'server_error', null, 'chat_template_error');
  if (e instanceof ModelFormatError) return new ApiError(500, `${e.message} (a problem of the served model, not of the request)`, 'server_error', null, 'model_error');
  const message = e instanceof Error ? e.message : String(e);
  return new ApiError(500, `internal error: ${message}`, 'server_error');
}
