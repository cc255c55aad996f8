/**
 * Structured output through xgrammar: a model's vocabulary is described to xgrammar once (lazily, on
 * the first constrained generation), then response formats, grammars and tool-call formats compile to
 * Constraints (cached by their text), each of which makes a fresh matcher (a TokenFilter) per
 * generation.
 *
 * Grammars are xgrammar's EBNF, which reads llama.cpp's GBNF: rules `name ::= ...`, the start rule
 * `root`, "literals", [character classes], ( ) | * + ? {m,n}, # comments.
 */
import type { CompiledGrammar, GrammarCompiler as XgCompiler, GrammarMatcher, StructuralTag } from '@mlc-ai/web-xgrammar';
import { InvalidInputError } from '../../errors.js';
import { countAllowed, type Constraint, type TokenFilter } from '../token-filter.js';
import { unenforcedKeywords } from './schema.js';
import { xgrammar, xgrammarCall } from './xgrammar.js';

export type JsonSchema = Record<string, unknown> | boolean;

/** OpenAI's response_format, in the library's spelling. */
export type ResponseFormat =
  | { type: 'text' }
  | { type: 'json_object' }
  | { type: 'json_schema'; schema: JsonSchema; strict?: boolean; name?: string };

/** A grammar, schema or format the engine cannot compile or enforce (the server answers 400). */
export class GrammarError extends InvalidInputError {
  constructor(message: string, readonly param: string | null = null) {
    super(message);
  }
}

/** The tokenizer.json fields the vocabulary description needs. */
export interface TokenizerJson {
  model?: { type?: string; vocab?: Record<string, number> | [string, number][] };
  added_tokens?: { id: number; content: string; special?: boolean }[];
  decoder?: { type?: string; decoders?: { type?: string }[]; prepend_scheme?: string; add_prefix_space?: boolean } | null;
  normalizer?: { type?: string; prepend?: string; normalizers?: { type?: string; prepend?: string }[] } | null;
  pre_tokenizer?: { type?: string; prepend_scheme?: string; add_prefix_space?: boolean; pretokenizers?: { type?: string; prepend_scheme?: string }[] } | null;
}

/** Special tokens kept usable in a grammar: the markers tool-call formats open and close calls with. */
const TOOL_MARKERS = new Set(['<tool_call>', '</tool_call>', '[TOOL_CALLS]', '<|python_tag|>', '<|tool_call|>', '<|/tool_call|>']);

/**
 * Token strings by id as xgrammar's TokenizerInfo takes them, its vocabulary type and whether the
 * tokenizer prepends a space. Special tokens are given as '' so no grammar can produce them by their
 * spelling (a JSON string may not contain "<|end|>" as the end-of-turn token).
 */
export function describeVocabulary(json: TokenizerJson, vocabSize: number): { tokens: string[]; vocabType: 'byte_level' | 'byte_fallback' | 'raw'; prependSpace: boolean } {
  const tokens = new Array<string>(vocabSize).fill('');
  const vocab = json.model?.vocab;
  if (Array.isArray(vocab)) vocab.forEach(([piece], id) => id < vocabSize && (tokens[id] = piece));
  else if (vocab) for (const [piece, id] of Object.entries(vocab)) if (id < vocabSize) tokens[id] = piece;
  for (const t of json.added_tokens ?? []) if (t.id < vocabSize) tokens[t.id] = t.special && !TOOL_MARKERS.has(t.content) ? '' : t.content;
  const decoders = [json.decoder, ...(json.decoder?.decoders ?? [])].filter((d) => d);
  const vocabType = decoders.some((d) => d!.type === 'ByteLevel') ? 'byte_level' : decoders.some((d) => d!.type === 'ByteFallback') ? 'byte_fallback' : 'raw';
  const pre = [json.pre_tokenizer, ...(json.pre_tokenizer?.pretokenizers ?? [])].filter((p) => p);
  const norm = [json.normalizer, ...(json.normalizer?.normalizers ?? [])].filter((n) => n);
  const prependSpace =
    pre.some((p) => p!.type === 'Metaspace' && p!.prepend_scheme !== 'never') ||
    norm.some((n) => n!.type === 'Prepend' && n!.prepend === '▁');
  return { tokens, vocabType, prependSpace };
}

/** One compiled grammar: each generation gets its own matcher from it. */
/** Text to token ids and back, for jump-forward (the tokenizer's own split of a forced string). */
export interface JumpTokenizer {
  encode(text: string): number[];
  decode(ids: number[]): string;
}

/** A TextTokenizer as a JumpTokenizer: no special tokens added, none skipped. */
export function jumpTokenizer(t: { encode(text: string, addSpecialTokens?: boolean): number[]; decode(ids: number[], skipSpecialTokens?: boolean): string }): JumpTokenizer {
  return { encode: (text) => t.encode(text, false), decode: (ids) => t.decode(ids, false) };
}

/** A JumpTokenizer limited to tokens a grammar can produce (special tokens are not). */
interface JumpTokens extends JumpTokenizer {
  usable(id: number): boolean;
}

class CompiledConstraint implements Constraint {
  constructor(private readonly compiled: CompiledGrammar, readonly description: string, private readonly vocabSize: number, private readonly tokenizer: JumpTokens | null) {}

  async newFilter(stopTokenIds: number[]): Promise<TokenFilter> {
    const xg = await xgrammar();
    const matcher = await xg.GrammarMatcher.createGrammarMatcher(this.compiled, stopTokenIds.length ? stopTokenIds : undefined);
    const filter = new MatcherFilter(matcher, this.description, this.vocabSize, new Set(stopTokenIds), this.tokenizer);
    await filter.refresh();
    return filter;
  }
}

/**
 * One generation's matcher. Jump-forward: where the grammar forces a string (xgrammar's
 * findJumpForwardString: `", "age": ` between two values), the tokenizer's own tokens for it are
 * forced one after another with no sampling and no mask; a single allowed token is forced too.
 */
class MatcherFilter implements TokenFilter {
  bitmask: Int32Array = new Int32Array(0);
  forced: number | null = null;
  done = false;
  private steps = 0;
  /** The rest of a forced string's tokens. */
  private jump: number[] = [];

  constructor(private readonly matcher: GrammarMatcher, private readonly description: string, private readonly vocabSize: number, private readonly stops: Set<number>, private readonly tokenizer: JumpTokens | null) {}

  /** Computes the mask for the next token, and the forced token if there is one choice. */
  async refresh(): Promise<void> {
    if (this.jump.length > 0) {
      this.forced = this.jump.shift()!;
      return;
    }
    if (this.tokenizer) {
      const text = this.matcher.findJumpForwardString();
      if (text.length > 1) {
        const ids = this.tokenizer.encode(text);
        // only where the tokens spell the string exactly (a tokenizer may add a prefix space...)
        if (ids.length > 1 && ids.every((id) => this.tokenizer!.usable(id)) && this.tokenizer.decode(ids) === text) {
          this.jump = ids;
          this.forced = this.jump.shift()!;
          return;
        }
      }
    }
    this.bitmask = await this.matcher.getNextTokenBitmask();
    const { count, first } = countAllowed(this.bitmask, this.vocabSize);
    if (count === 0) {
      throw new GrammarError(
        this.steps === 0
          ? `the ${this.description} allows no first token: it is empty or unsatisfiable with this model's vocabulary`
          : `the ${this.description} allows no token after ${this.steps} tokens: it cannot be completed with this model's vocabulary`,
      );
    }
    this.forced = count === 1 ? first : null;
    // only stop tokens left: the output is complete, end it with the first
    if (this.forced === null && count <= this.stops.size) {
      const onlyStops = [...this.stops].filter((id) => id < this.vocabSize && ((this.bitmask[id >>> 5]! >>> (id & 31)) & 1) === 1);
      if (onlyStops.length === count) this.forced = Math.min(...onlyStops);
    }
  }

  async accept(id: number): Promise<void> {
    if (!this.matcher.acceptToken(id)) {
      throw new Error(`grammar matcher: token ${id} was chosen but is not allowed (a sampler ignored the mask)`);
    }
    this.steps++;
    if (this.matcher.isTerminated()) {
      this.done = true;
      this.forced = null;
      return;
    }
    await this.refresh();
  }

  dispose(): void {
    this.matcher.dispose();
  }
}

/** The structured-output side of one model: its vocabulary as xgrammar knows it, and compiled grammars. */
export class GrammarCompiler {
  private compiler: Promise<XgCompiler> | null = null;
  private readonly cache = new Map<string, Promise<CompiledConstraint>>();
  private jumpTokens: JumpTokens | null = null;

  constructor(private readonly tokenizerJson: TokenizerJson, readonly vocabSize: number, private readonly tokenizer: JumpTokenizer | null = null) {}

  private xgCompiler(): Promise<XgCompiler> {
    this.compiler ??= (async () => {
      const xg = await xgrammar();
      const v = describeVocabulary(this.tokenizerJson, this.vocabSize);
      const tokenizer = this.tokenizer;
      if (tokenizer) this.jumpTokens = { encode: (t) => tokenizer.encode(t), decode: (ids) => tokenizer.decode(ids), usable: (id) => id < v.tokens.length && v.tokens[id] !== '' };
      const info = await xg.TokenizerInfo.createTokenizerInfo(v.tokens, v.vocabType, v.prependSpace, this.vocabSize);
      return xg.GrammarCompiler.createGrammarCompiler(info);
    })();
    return this.compiler;
  }

  private compile(key: string, description: string, param: string | null, run: (c: XgCompiler) => Promise<CompiledGrammar>): Promise<Constraint> {
    let entry = this.cache.get(key);
    if (!entry) {
      entry = (async () => {
        const compiler = await this.xgCompiler();
        const compiled = await xgrammarCall(() => run(compiler), (m) => new GrammarError(`the ${description} cannot be compiled: ${m}`, param));
        return new CompiledConstraint(compiled, description, this.vocabSize, this.jumpTokens);
      })();
      entry.catch(() => this.cache.delete(key));
      if (this.cache.size > 64) this.cache.delete(this.cache.keys().next().value!);
      this.cache.set(key, entry);
    }
    return entry;
  }

  /** A response format's constraint; null for plain text. `param` names the field in errors. */
  responseFormat(format: ResponseFormat, param = 'response_format'): Promise<Constraint | null> {
    if (typeof format !== 'object' || format === null) return Promise.reject(new GrammarError(`${param} must be an object with a "type", got ${JSON.stringify(format)}`, param));
    switch (format.type) {
      case 'text':
        return Promise.resolve(null);
      case 'json_object':
        return this.compile('json_object', 'JSON object format', param, (c) => c.compileJSONSchema(JSON.stringify({ type: 'object' }), false, -1, [', ', ': '], false));
      case 'json_schema': {
        const schema = format.schema;
        if (typeof schema !== 'boolean' && (typeof schema !== 'object' || schema === null || Array.isArray(schema))) {
          return Promise.reject(new GrammarError(`${param}.schema must be a JSON Schema object, got ${JSON.stringify(schema)}`, param));
        }
        if (format.strict) {
          const problems = unenforcedKeywords(schema);
          if (problems.length > 0) {
            return Promise.reject(new GrammarError(`${param}: strict is true but this engine cannot enforce ${problems.slice(0, 5).join(', ')}${problems.length > 5 ? ` and ${problems.length - 5} more` : ''}; drop those keywords or strict`, param));
          }
        }
        const text = JSON.stringify(schema);
        return this.compile(`schema:${text}`, 'JSON schema', param, (c) => c.compileJSONSchema(text, false, -1, [', ', ': ']));
      }
      default:
        return Promise.reject(new GrammarError(`${param}.type must be "text", "json_object" or "json_schema", got ${JSON.stringify((format as { type: unknown }).type)}`, param));
    }
  }

  /** A GBNF / xgrammar EBNF grammar (start rule `root`). */
  grammar(text: string, param = 'grammar'): Promise<Constraint> {
    if (typeof text !== 'string' || text.trim() === '') return Promise.reject(new GrammarError(`the ${param} is empty: give GBNF rules with a "root ::= ..." rule`, param));
    return this.compile(`ebnf:${text}`, 'grammar', param, (c) => c.compileGrammar(text, 'root'));
  }

  /**
   * The GBNF of a JSON schema as this engine enforces it (compact JSON: ", " and ": " separators, no
   * other whitespace), to embed in a larger grammar or structural tag. `param` names it in errors.
   */
  async schemaGrammar(schema: JsonSchema, strict: boolean, param: string): Promise<string> {
    if (strict) {
      const problems = unenforcedKeywords(schema);
      if (problems.length > 0) throw new GrammarError(`${param}: strict is true but this engine cannot enforce ${problems.slice(0, 5).join(', ')}`, param);
    }
    return xgrammarCall((xg) => xg.Testings._jsonSchemaToEBNF(JSON.stringify(schema), false, -1, [', ', ': ']), (m) => new GrammarError(`${param}: the schema cannot be compiled: ${m}`, param));
  }

  /** An xgrammar structural tag (tool-call formats: see server/tools.ts). */
  structuralTag(tag: StructuralTag, description: string, param: string | null = null): Promise<Constraint> {
    const text = JSON.stringify(tag);
    return this.compile(`tag:${text}`, description, param, (c) => c.compileStructuralTag(tag));
  }
}
