/**
 * Text <-> token ids through the maintained @huggingface/tokenizers (byte-level BPE, SentencePiece-style
 * BPE with byte fallback, ...) and chat templates through @huggingface/jinja.
 */
import { Tokenizer } from '@huggingface/tokenizers';
import { Template } from '@huggingface/jinja';
import { ChatTemplateError, InvalidInputError, ModelFormatError } from '../errors.js';
import { validateTokenizerJson } from './validate.js';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'tool' | string;
  content: string;
  /** An assistant turn's calls, as Hugging Face chat templates read them (arguments as an object). */
  tool_calls?: { id?: string; type: 'function'; function: { name: string; arguments: unknown } }[];
  /** A tool result's call id (role 'tool'). */
  tool_call_id?: string;
  name?: string;
}

/** What a chat template is given beside the messages (as transformers' apply_chat_template passes it). */
export interface ChatTemplateExtras {
  /** OpenAI-style tool definitions: [{ type: 'function', function: { name, description, parameters } }]. */
  tools?: unknown[];
}

export interface TokenizerFiles {
  tokenizerJson: Record<string, unknown>;
  tokenizerConfig: Record<string, unknown>;
  /** From chat_template.jinja, else tokenizer_config.json's chat_template. */
  chatTemplate: string | null;
  /** How messages name where each came from (default `tokenizer.json`, `chat template`). */
  sources?: { tokenizer?: string; chatTemplate?: string };
}

/** Tokens that chat templates put at the end of an assistant turn, across model families. */
const END_OF_TURN_TOKENS = ['<|end|>', '<|eot_id|>', '<|im_end|>', '<end_of_turn>', '<|endoftext|>', '</s>'];

function tokenContent(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return undefined;
}

export class TextTokenizer {
  private readonly tokenizer: Tokenizer;
  /** Parsed on the first chat, not at load: a broken template fails chats and leaves plain prompts working. */
  private template: Template | ChatTemplateError | null | undefined;
  readonly bosToken: string | undefined;
  readonly eosToken: string | undefined;
  /** Where the tokenizer and the chat template came from, as messages name them. */
  readonly tokenizerSource: string;
  readonly chatTemplateSource: string;

  constructor(readonly files: TokenizerFiles) {
    this.tokenizerSource = files.sources?.tokenizer ?? 'tokenizer.json';
    this.chatTemplateSource = files.sources?.chatTemplate ?? 'chat template';
    const json = validateTokenizerJson(files.tokenizerJson, this.tokenizerSource);
    try {
      this.tokenizer = new Tokenizer(json, files.tokenizerConfig);
      // some malformed tables only fail on use: try one round trip now, while the file can be named
      const ids = this.tokenizer.encode('Hello, world!', { add_special_tokens: true }).ids;
      if (ids.length > 0) this.tokenizer.decode(ids, { skip_special_tokens: false });
    } catch (e) {
      if (e instanceof ModelFormatError) throw e;
      throw new ModelFormatError(this.tokenizerSource, `cannot be read by the tokenizer (${(e as Error).message}); re-download it or export it again with transformers`);
    }
    this.template = files.chatTemplate ? undefined : null;
    this.bosToken = tokenContent(files.tokenizerConfig.bos_token);
    this.eosToken = tokenContent(files.tokenizerConfig.eos_token);
  }

  /**
   * Tokenizes text. `addSpecialTokens` applies the tokenizer's post-processor (a BOS for Llama-2 style
   * tokenizers), as transformers does for a plain prompt; chat templates write their own special tokens.
   */
  encode(text: string, addSpecialTokens = true): number[] {
    try {
      return this.tokenizer.encode(text, { add_special_tokens: addSpecialTokens }).ids;
    } catch (e) {
      throw this.broken('tokenize', e);
    }
  }

  /** A failure inside the tokenizer library on this input: the tokenizer file is at fault, named. */
  private broken(what: string, e: unknown): ModelFormatError {
    return new ModelFormatError(this.tokenizerSource, `fails to ${what} (${oneLine((e as Error)?.message ?? String(e))}); the tokenizer file is malformed: re-download it or export it again with transformers`);
  }

  /** Exact inverse of encode for ordinary text: no clean-up of spaces around punctuation. */
  decode(ids: number[], skipSpecialTokens = false): string {
    if (ids.length === 0) return '';
    if (!ids.every((id) => Number.isSafeInteger(id) && id >= 0)) throw new InvalidInputError('token ids must be whole numbers >= 0');
    try {
      return this.tokenizer.decode(ids, { skip_special_tokens: skipSpecialTokens, clean_up_tokenization_spaces: false });
    } catch (e) {
      throw this.broken('decode', e);
    }
  }

  idOf(token: string): number | undefined {
    return this.tokenizer.token_to_id(token);
  }

  /** Ids that end a chat reply: the model's EOS ids plus whichever end-of-turn tokens the vocabulary has. */
  chatEndTokenIds(eosTokenIds: number[]): number[] {
    const endOfTurn = END_OF_TURN_TOKENS.map((t) => this.idOf(t)).filter((id): id is number => id !== undefined);
    return [...new Set([...eosTokenIds, ...endOfTurn])];
  }

  get hasChatTemplate(): boolean {
    return this.files.chatTemplate !== null && this.files.chatTemplate !== '';
  }

  /** Parses the chat template (once); a template that does not parse gives a ChatTemplateError naming its file. */
  private chatTemplate(): Template {
    if (this.template === undefined) {
      try {
        // the template's own raise_exception goes through ours, so a refusal of the messages is told apart from a broken template
        this.template = new Template(this.files.chatTemplate!.replace(/\braise_exception(\s*\()/g, `${RAISE}$1`));
      } catch (e) {
        this.template = new ChatTemplateError(this.chatTemplateSource, `does not parse (${oneLine((e as Error).message)}); fix the template or remove it to use plain prompts`);
      }
    }
    if (this.template === null) {
      throw new InvalidInputError('this model has no chat template (chat_template.jinja or tokenizer_config.json "chat_template"); use a plain prompt');
    }
    if (this.template instanceof ChatTemplateError) throw this.template;
    return this.template;
  }

  /** Why a chat would fail before any message is seen (the template does not parse), or null. */
  chatTemplateProblem(): ChatTemplateError | null {
    if (!this.hasChatTemplate) return null;
    try {
      this.chatTemplate();
      return null;
    } catch (e) {
      return e instanceof ChatTemplateError ? e : null;
    }
  }

  /** Renders messages with the model's chat template, ending with the assistant's turn prompt. */
  applyChatTemplate(messages: ChatMessage[], addGenerationPrompt = true, extras: ChatTemplateExtras = {}): string {
    const template = this.chatTemplate();
    let refusal: string | null = null;
    try {
      return template.render({
        messages,
        ...(extras.tools ? { tools: extras.tools } : {}),
        add_generation_prompt: addGenerationPrompt,
        bos_token: this.bosToken ?? '',
        eos_token: this.eosToken ?? '',
        // a template's own refusal (roles that do not alternate...) is about the messages, not the template
        [RAISE]: (message: unknown) => {
          refusal = String(message);
          throw new Error(refusal);
        },
      });
    } catch (e) {
      if (refusal !== null) throw new InvalidInputError(`the chat template refused the messages: ${refusal}`);
      throw new ChatTemplateError(this.chatTemplateSource, `fails to render (${oneLine((e as Error).message)}); fix the template`);
    }
  }
}

const RAISE = 'pdvm_raise_exception';

function oneLine(s: string): string {
  const line = s.replace(/\s+/g, ' ').trim();
  return line.length > 300 ? line.slice(0, 300) + '...' : line;
}
