/**
 * Typed errors. Every error a user can cause (bad files, bad flags, bad requests) is a PdvmError:
 * the CLI prints its message and exits 1 without a stack trace. Messages name the file and say what
 * to do next.
 */
export class PdvmError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** A model file (safetensors, config.json, UPG artifact...) is malformed or does not match its config. */
export class ModelFormatError extends PdvmError {
  constructor(readonly file: string, problem: string) {
    super(`${file}: ${problem}`);
  }
}

/**
 * The model's chat template does not parse or fails to render: the operator's file is at fault, not the
 * messages (the server answers 500 naming the file). Plain prompts still work.
 */
export class ChatTemplateError extends ModelFormatError {}

/** The model's architecture is not one this engine implements. */
export class UnsupportedArchitectureError extends PdvmError {}

/** A prompt, option or request is invalid (too long for the context, bad sampling value...). */
export class InvalidInputError extends PdvmError {}

/** Generation (or a load) was cancelled through an AbortSignal. */
export class AbortError extends PdvmError {
  constructor(message = 'generation was aborted') {
    super(message);
  }
}
