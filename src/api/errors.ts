/**
 * Errors the library API adds to the project's typed errors (src/errors.ts): one class per failure a
 * caller may want to tell apart (the server maps each to its HTTP status).
 */
import { InvalidInputError, PdvmError } from '../errors.js';

/** The prompt plus the requested new tokens do not fit the context the model was loaded with. */
export class ContextLengthError extends InvalidInputError {
  constructor(readonly promptTokens: number, readonly maxTokens: number, readonly contextLength: number) {
    super(
      promptTokens >= contextLength
        ? `the prompt has ${promptTokens} tokens but the context holds ${contextLength}; shorten the prompt or load the model with a longer context`
        : `the prompt has ${promptTokens} tokens and max tokens asks for ${maxTokens} more, ${promptTokens + maxTokens} in all, ` +
            `past the context length of ${contextLength}; shorten the prompt or ask for at most ${contextLength - promptTokens} new tokens`,
    );
  }
}

/** Every generation slot is busy and the waiting queue is full; try again later. */
export class QueueFullError extends PdvmError {
  constructor(readonly active: number, readonly queued: number) {
    super(`the model is busy: ${active} generations running and ${queued} waiting, the most allowed; try again shortly`);
  }
}

/** The model was disposed; load it again to use it. */
export class ModelDisposedError extends PdvmError {
  constructor() {
    super('the model has been disposed; load it again with loadModel()');
  }
}
