/**
 * Incremental detokenization: turns a growing list of token ids into text chunks without re-decoding
 * everything each step. A few tokens of left context are decoded along with the new ones so that
 * tokenizers which drop a leading space on the first token (SentencePiece) still get it right, and
 * text ending in an incomplete UTF-8 sequence (U+FFFD) is held back until the rest arrives.
 */
import type { TextTokenizer } from '../tokenizer/tokenizer.js';

export class Detokenizer {
  private ids: number[] = [];
  private prefixOffset = 0;
  private readOffset = 0;

  constructor(private readonly tokenizer: TextTokenizer) {}

  /** Adds one token; returns the text it completes (possibly ''). */
  push(id: number): string {
    this.ids.push(id);
    const prefix = this.tokenizer.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const full = this.tokenizer.decode(this.ids.slice(this.prefixOffset));
    if (full.length > prefix.length && !full.endsWith('\uFFFD')) {
      this.prefixOffset = this.readOffset;
      this.readOffset = this.ids.length;
      return full.slice(prefix.length);
    }
    return '';
  }

  /** Whatever is still held back (an incomplete character at the very end). */
  flush(): string {
    const prefix = this.tokenizer.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const full = this.tokenizer.decode(this.ids.slice(this.prefixOffset));
    this.prefixOffset = this.readOffset = this.ids.length;
    return full.slice(prefix.length);
  }
}
