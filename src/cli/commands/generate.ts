/** `pdvm generate [model] --prompt TEXT | --prompt-ids 1,2,3`: streams the continuation to stdout. */
import { Command, Option } from 'commander';
import { readFile } from 'node:fs/promises';
import { InvalidInputError } from '../../errors.js';
import type { LoadedModel } from '../../model/load.js';
import { GrammarCompiler, type TokenizerJson, jumpTokenizer } from '../../runtime/grammar/compiler.js';
import type { Constraint } from '../../runtime/token-filter.js';
import { generate, type GenerationResult } from '../../runtime/generate.js';
import { generationConfigSource, generationDefaults } from '../../runtime/defaults.js';
import { action, backendOption, createEngineForCli, decodeOption, kvCacheOption, type KvCacheChoice, prefillInt8Option, type PrefillInt8Choice, defaultContext, loadForCli, parseFloatOption, parseIntOption, type DecodeChoice } from '../common.js';

interface GenerateFlags {
  prompt?: string;
  promptIds?: string;
  maxTokens: number;
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  repetitionPenalty?: number;
  seed?: number;
  stop: string[];
  chat?: boolean;
  system?: string;
  json?: boolean;
  verbose?: boolean;
  ignoreEos?: boolean;
  context?: number;
  backend: 'cpu' | 'webgpu' | 'auto';
  decode: DecodeChoice;
  jsonSchema?: string;
  grammar?: string;
  strict?: boolean;
  kvCache: KvCacheChoice;
  prefillInt8?: PrefillInt8Choice;
}

/** The constraint --json-schema FILE or --grammar FILE asks for (compiled by xgrammar), or null. */
async function constraintOf(flags: GenerateFlags, model: LoadedModel): Promise<Constraint | null> {
  if (flags.jsonSchema === undefined && flags.grammar === undefined) return null;
  if (flags.jsonSchema !== undefined && flags.grammar !== undefined) throw new InvalidInputError('give --json-schema or --grammar, not both');
  if (!model.tokenizer) throw new InvalidInputError(`${model.path} has no tokenizer.json, and a grammar is matched against token text`);
  const file = (flags.jsonSchema ?? flags.grammar)!;
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    throw new InvalidInputError(`${file}: cannot be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); give the path of a ${flags.jsonSchema ? 'JSON Schema file' : 'GBNF grammar file'}`);
  }
  const grammars = new GrammarCompiler(model.tokenizer.files.tokenizerJson as TokenizerJson, model.config.vocabSize, jumpTokenizer(model.tokenizer));
  if (flags.grammar !== undefined) return grammars.grammar(text, file);
  let schema: unknown;
  try {
    schema = JSON.parse(text);
  } catch (e) {
    throw new InvalidInputError(`${file}: not JSON (${(e as Error).message}); --json-schema takes a JSON Schema file`);
  }
  return grammars.responseFormat({ type: 'json_schema', schema: schema as Record<string, unknown>, strict: flags.strict ?? false }, file);
}

export function parseIdList(text: string): number[] {
  const ids = text.split(',').map((s) => s.trim()).filter((s) => s.length > 0).map(Number);
  if (ids.length === 0 || ids.some((n) => !Number.isInteger(n) || n < 0)) {
    throw new InvalidInputError(`--prompt-ids must be a comma-separated list of token ids, got "${text}"`);
  }
  return ids;
}

export function generateCommand(): Command {
  return new Command('generate')
    .description('generate text from a prompt (streams to stdout, summary to stderr)')
    .argument('[model]', 'Hugging Face model folder or .upg file (default: the built-in demo model)')
    .option('-p, --prompt <text>', 'prompt text')
    .option('--prompt-ids <ids>', 'prompt as comma-separated token ids (for models without a tokenizer)')
    .option('-n, --max-tokens <n>', 'new tokens at most', parseIntOption('--max-tokens'), 128)
    .option('-t, --temperature <t>', 'sampling temperature; 0 = greedy (default: generation_config.json, else 0.8)', parseFloatOption('--temperature'))
    .option('--top-k <k>', 'keep the k most likely tokens; 0 = off (default 40)', parseIntOption('--top-k'))
    .option('--top-p <p>', 'nucleus sampling threshold; 1 = off (default 0.95)', parseFloatOption('--top-p'))
    .option('--min-p <p>', 'drop tokens under p times the top probability; 0 = off (default 0.05)', parseFloatOption('--min-p'))
    .option('--repetition-penalty <r>', 'penalise tokens already seen; 1 = off', parseFloatOption('--repetition-penalty'))
    .option('--seed <s>', 'random seed for reproducible sampling', parseIntOption('--seed'))
    .option('--stop <text>', 'stop before this text (repeatable)', (v: string, prev: string[]) => [...prev, v], [] as string[])
    .option('--chat', "wrap the prompt with the model's chat template as a user message")
    .option('--system <text>', 'system message for --chat')
    .option('--json', 'print one JSON object instead of streaming')
    .option('--verbose', 'say on stderr which device, features and kernel paths run (webgpu)')
    .option('--ignore-eos', 'keep generating past the end-of-sequence token')
    .option('--context <n>', 'context length to allocate (default: the model\'s, at most 4096)', parseIntOption('--context'))
    .option('--json-schema <file>', 'output JSON valid against this JSON Schema (enforced token by token)')
    .option('--grammar <file>', 'output matching this GBNF grammar (start rule "root"; xgrammar\'s EBNF)')
    .option('--strict', 'with --json-schema: refuse schema keywords the engine cannot enforce')
    .addOption(backendOption())
    .addOption(decodeOption())
    .addOption(kvCacheOption())
    .addOption(prefillInt8Option())
    .action(action(async (modelPath: string | undefined, flags: GenerateFlags) => {
      if ((flags.prompt === undefined) === (flags.promptIds === undefined)) {
        throw new InvalidInputError('give exactly one of --prompt TEXT or --prompt-ids 1,2,3');
      }
      // webgpu: the matrices stream from the file to the device (model/lazy.ts)
      const model = await loadForCli(modelPath, { lazy: flags.backend !== 'cpu' });
      const { tokenizer } = model;
      let promptIds: number[];
      if (flags.promptIds !== undefined) {
        promptIds = parseIdList(flags.promptIds);
        if (flags.chat) throw new InvalidInputError('--chat needs a text --prompt, not --prompt-ids');
      } else {
        if (!tokenizer) {
          throw new InvalidInputError(`${model.path} has no tokenizer.json, so a text prompt cannot be tokenized; pass --prompt-ids instead`);
        }
        if (flags.chat) {
          const messages = [...(flags.system ? [{ role: 'system', content: flags.system }] : []), { role: 'user', content: flags.prompt! }];
          promptIds = tokenizer.encode(tokenizer.applyChatTemplate(messages), false);
        } else {
          promptIds = tokenizer.encode(flags.prompt!, true);
          if (promptIds.length === 0 && model.config.bosTokenId !== null) promptIds = [model.config.bosTokenId];
        }
      }
      const constraint = await constraintOf(flags, model);
      const engine = await createEngineForCli(model, flags.backend, defaultContext(model, flags.context), flags.decode, flags.kvCache, flags.prefillInt8);
      const described = (engine as { describe?: () => string }).describe?.();
      if (flags.verbose) process.stderr.write(`pdvm: backend ${engine.backend}${described ? `: ${described}` : ''}\n`);
      const seq = engine.createSequence();
      const stream = generate(
        { engine, tokenizer, defaults: generationDefaults(model.generationConfig, generationConfigSource(model.path)), eosTokenIds: model.config.eosTokenIds },
        seq,
        promptIds,
        {
          maxTokens: flags.maxTokens, temperature: flags.temperature, topK: flags.topK, topP: flags.topP, minP: flags.minP,
          repetitionPenalty: flags.repetitionPenalty, seed: flags.seed, stop: flags.stop, ignoreEos: flags.ignoreEos,
          // a chat reply also ends at the template's end-of-turn token
          eosTokenIds: flags.chat && tokenizer ? tokenizer.chatEndTokenIds(model.config.eosTokenIds) : undefined,
          constraint,
        },
      );
      let result: GenerationResult;
      while (true) {
        const r = await stream.next();
        if (r.done) {
          result = r.value;
          break;
        }
        if (!flags.json && r.value.text) {
          process.stdout.write(r.value.text);
          // let I/O events in: a reader that went away (EPIPE, handled in main.ts) ends the run now, not at the end
          await new Promise((resolve) => setImmediate(resolve));
        }
      }
      engine.dispose();
      if (flags.json) {
        process.stdout.write(JSON.stringify({
          token_ids: result.tokenIds,
          text: result.text,
          prompt_tokens: result.promptTokens,
          time_to_first_token_ms: result.prefillMs,
          tokens_per_second: result.tokensPerSecond,
          finish_reason: result.finishReason,
        }) + '\n');
      } else {
        if (tokenizer) process.stdout.write('\n');
        else process.stdout.write(result.tokenIds.join(',') + '\n');
        process.stderr.write(
          `[${result.promptTokens} prompt tokens, ${result.tokenIds.length} generated (${result.finishReason}); ` +
            `time to first token ${result.prefillMs.toFixed(0)} ms (${(result.promptTokens / (result.prefillMs / 1000)).toFixed(1)} prompt tok/s), decode ${result.tokensPerSecond.toFixed(1)} tok/s, ${engine.backend}]\n`,
        );
      }
    }));
}
