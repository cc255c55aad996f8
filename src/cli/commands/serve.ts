/** `pdvm serve [model]`: the OpenAI-compatible server (src/server) over the library Model (src/api). */
import { Command } from 'commander';
import { loadModel, modelFromLoaded, type LoadModelOptions } from '../../api/model.js';
import { syntheticModel } from '../../bench/host-synthetic.js';
import { InvalidInputError } from '../../errors.js';
import { startServer } from '../../server/server.js';
import { action, backendOption, decodeOption, kvCacheOption, type KvCacheChoice, prefillInt8Option, prefillInt8Of, type PrefillInt8Choice, demoModelPath, parseFloatOption, parseIntOption, type BackendChoice, type DecodeChoice } from '../common.js';
import { progressBar } from '../progress.js';
import { forCli } from '../../wording.js';

interface ServeFlags {
  host: string;
  port: number;
  maxConcurrency?: number;
  prefixCacheMb: number;
  stepPrefillTokens: number;
  batchedStep?: boolean;
  cors: string[];
  servedModelName: string[];
  acceptAnyModel?: boolean;
  metricsPublic?: boolean;
  synthetic?: string;
  maxQueue: number;
  context?: number;
  apiKey?: string;
  maxBody: number;
  grace: number;
  backend: BackendChoice;
  decode: DecodeChoice;
  kvCache: KvCacheChoice;
  prefillInt8?: PrefillInt8Choice;
}

/** Commander's way to take a repeatable flag. */
const collect = (value: string, previous: string[]) => [...previous, value];

export function serveCommand(): Command {
  return new Command('serve')
    .description('serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, /v1/models)')
    .argument('[model]', 'Hugging Face model folder or .upg file (default: the built-in demo model)')
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .option('--port <n>', 'port to listen on; 0 picks a free one', parseIntOption('--port'), 8080)
    .option('--max-concurrency <n>', 'generations decoding at once (the batch size), each with its own KV cache (default: as many caches as fit 2 GiB, 1 to 32)', parseIntOption('--max-concurrency'))
    .option('--max-queue <n>', 'requests waiting for a slot before new ones get 429', parseIntOption('--max-queue'), 64)
    .option('--context <n>', "context length of each KV cache (default: the model's, at most 4096)", parseIntOption('--context'))
    .option('--api-key <key>', 'require "Authorization: Bearer KEY" (default: $PDVM_API_KEY, else none)')
    .option('--max-body <bytes>', 'largest request body accepted', parseIntOption('--max-body'), 1024 * 1024)
    .option('--grace <seconds>', 'on SIGTERM, how long requests in flight may take to finish', parseFloatOption('--grace'), 10)
    .option('--step-prefill-tokens <n>', 'prompt tokens a batched step prefills at most, and the size of the chunks a prompt is cut into (larger: shorter time to first token in a burst; smaller: smoother running streams)', parseIntOption('--step-prefill-tokens'), 64)
    .option('--batched-step', 'webgpu (the default): decode the running generations together through the batched step (continuous batching, prefix reuse); a generation running alone takes the fused decode path until another arrives')
    .option('--no-batched-step', 'webgpu: generations take turns, a step each, through the fused decode path (no prefix reuse)')
    .option('--prefix-cache-mb <n>', 'memory for KV caches kept after requests end, for prefix reuse (0 = off)', parseFloatOption('--prefix-cache-mb'), 256)
    .option('--cors <origin>', 'let web pages from ORIGIN call the API (repeatable; * for any)', collect, [])
    .option('--served-model-name <name>', 'a name the model answers to (repeatable; the first is listed first; default: the file name)', collect, [])
    .option('--accept-any-model', 'serve requests naming any model with this one instead of answering 404')
    .option('--metrics-public', 'GET /metrics needs no API key')
    .option('--synthetic <shape>', 'serve a model of a bench shape (llama-3.1-8b, phi-4, ...) with random q4 weights instead of a file: token-id prompts only, no EOS (load tests on a machine without models)')
    .addOption(backendOption())
    .addOption(decodeOption())
    .addOption(kvCacheOption())
    .addOption(prefillInt8Option())
    .action(action(async (modelPath: string | undefined, flags: ServeFlags) => {
      if (flags.port < 0 || flags.port > 65535) throw new InvalidInputError(`--port must be in 0..65535, got ${flags.port}`);
      if (flags.maxBody < 1) throw new InvalidInputError(`--max-body must be at least 1, got ${flags.maxBody}`);
      if (flags.grace < 0) throw new InvalidInputError(`--grace must be >= 0, got ${flags.grace}`);
      if (flags.prefixCacheMb < 0) throw new InvalidInputError(`--prefix-cache-mb must be >= 0, got ${flags.prefixCacheMb}`);
      if (flags.maxConcurrency !== undefined && flags.maxConcurrency < 1) throw new InvalidInputError(`--max-concurrency must be at least 1, got ${flags.maxConcurrency}`);
      const bar = progressBar('loading', 'B');
      let model;
      try {
        const options: LoadModelOptions = {
          backend: flags.backend,
          decode: flags.decode,
          kvCache: flags.kvCache,
          prefillInt8: prefillInt8Of(flags.prefillInt8),
          contextLength: flags.context,
          maxConcurrency: flags.maxConcurrency,
          maxQueued: flags.maxQueue,
          prefixCacheBytes: flags.prefixCacheMb * 1024 * 1024,
          stepPrefillTokens: flags.stepPrefillTokens,
          // on by default: on the H200 it decodes 8 streams at 2.1x and 32 at 2.8x one stream's rate,
          // and a lone stream still takes the fused decoder (docs/PERFORMANCE.md, "The lead's device call")
          batchedStep: flags.batchedStep !== false,
          soloOnDevice: flags.batchedStep !== false,
          onProgress: (p) => bar.update(p.loadedBytes, p.totalBytes),
        };
        if (flags.synthetic !== undefined && modelPath !== undefined) throw new InvalidInputError('give a model or --synthetic, not both');
        model = flags.synthetic !== undefined ? await modelFromLoaded(syntheticModel(flags.synthetic), options) : await loadModel(modelPath ?? demoModelPath(), options);
      } finally {
        bar.stop();
      }
      if (model.backendNotice) process.stderr.write(`pdvm: ${forCli(model.backendNotice)}\n`);
      // a broken chat template is the operator's to fix: said now; chat requests get a 500 naming the file, completions work
      const templateProblem = model.loaded.tokenizer?.chatTemplateProblem();
      if (templateProblem) process.stderr.write(`pdvm: warning: ${templateProblem.message}; /v1/chat/completions will answer 500 until it is fixed\n`);
      const apiKey = flags.apiKey ?? (process.env.PDVM_API_KEY || undefined);
      if (!apiKey && !['127.0.0.1', '::1', 'localhost'].includes(flags.host)) {
        process.stderr.write(`pdvm: warning: listening on ${flags.host} without an API key; anyone who can reach it can use it (set --api-key)\n`);
      }
      const server = await startServer(model, {
        host: flags.host, port: flags.port, apiKey, maxBodyBytes: flags.maxBody,
        cors: flags.cors, servedModelNames: flags.servedModelName, acceptAnyModel: flags.acceptAnyModel, metricsPublic: flags.metricsPublic,
      });
      let stopping = false;
      const stop = async (signal: string) => {
        if (stopping) return;
        stopping = true;
        process.stderr.write(`pdvm: ${signal}: finishing ${server.inFlight} request(s) in flight (up to ${flags.grace} s), then exiting\n`);
        await server.close(flags.grace * 1000);
        await model.dispose();
        process.stderr.write('pdvm: stopped\n');
        process.exit(0);
      };
      process.on('SIGTERM', () => void stop('SIGTERM'));
      process.on('SIGINT', () => void stop('SIGINT'));
      // `npx pdvm serve`: npm exits on SIGTERM without passing the signal on, which would leave the server
      // running as an orphan; so under npm exec, the npm parent going away stops the server the same way
      if (process.env.npm_command === 'exec') {
        const parent = process.ppid;
        setInterval(() => {
          if (process.ppid !== parent) void stop('the npx process that started pdvm ended');
        }, 250).unref();
      }
      // announced only once the signal handlers are in place: whoever reads this line may send SIGTERM at once
      process.stderr.write(
        `pdvm: serving ${flags.servedModelName[0] ?? model.id} on ${server.url}/v1 (${model.backend}, context ${model.contextLength}, ` +
          `${model.maxConcurrency} at once${model.engine.step ? ' in one batch' : ''}, queue ${flags.maxQueue}${apiKey ? ', API key required' : ''})\n`,
      );
    }));
}
