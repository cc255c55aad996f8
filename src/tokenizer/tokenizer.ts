/**
 * Text <-> token ids through the maintained @huggingface/tokenizers (byte-level BPE, SentencePiece-style
 * BPE with byte fallback, ...) and chat templates through @huggingface/jinja.
 */
import { Tokenizer } from '@huggingface/tokenizers';
import { Template } from '@huggingface/jinja';
import { InvalidInputError } from '../errors.js';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'tool' | string;
  content: string;
}

export interface TokenizerFiles {
  tokenizerJson: Record<string, unknown>;
  tokenizerConfig: Record<string, unknown>;
  /** From chat_template.jinja, else tokenizer_config.json's chat_template. */
  chatTemplate: string | null;
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
  private readonly template: Template | null;
  readonly bosToken: string | undefined;
  readonly eosToken: string | undefined;

  constructor(readonly files: TokenizerFiles) {
    this.tokenizer = new Tokenizer(files.tokenizerJson, files.tokenizerConfig);
    this.template = files.chatTemplate ? new Template(files.chatTemplate) : null;
    this.bosToken = tokenContent(files.tokenizerConfig.bos_token);
    this.eosToken = tokenContent(files.tokenizerConfig.eos_token);
  }

  /**
   * Tokenizes text. `addSpecialTokens` applies the tokenizer's post-processor (a BOS for Llama-2 style
   * tokenizers), as transformers does for a plain prompt; chat templates write their own special tokens.
   */
  encode(text: string, addSpecialTokens = true): number[] {
    return this.tokenizer.encode(text, { add_special_tokens: addSpecialTokens }).ids;
  }

  /** Exact inverse of encode for ordinary text: no clean-up of spaces around punctuation. */
  decode(ids: number[], skipSpecialTokens = false): string {
    if (ids.length === 0) return '';
    return this.tokenizer.decode(ids, { skip_special_tokens: skipSpecialTokens, clean_up_tokenization_spaces: false });
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
    return this.template !== null;
  }

  /** Renders messages with the model's chat template, ending with the assistant's turn prompt. */
  applyChatTemplate(messages: ChatMessage[], addGenerationPrompt = true): string {
    if (!this.template) {
      throw new InvalidInputError('this model has no chat template (chat_template.jinja or tokenizer_config.json "chat_template"); use a plain prompt');
    }
    return this.template.render({
      messages,
      add_generation_prompt: addGenerationPrompt,
      bos_token: this.bosToken ?? '',
      eos_token: this.eosToken ?? '',
    });
  }
}
