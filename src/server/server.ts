/**
 * `pdvm serve`: an OpenAI-compatible HTTP server on node:http over one library Model.
 *
 *   GET  /health                 liveness and load (no API key needed)
 *   GET  /metrics                Prometheus text format (behind the API key unless metricsPublic)
 *   GET  /v1/models              the served model, under each of its names
 *   POST /v1/completions         prompt -> text (SSE with "stream": true)
 *   POST /v1/chat/completions    messages -> chat template -> text (SSE with "stream": true)
 *
 * Fair queueing, cancellation of a disconnected client and the KV cache slots are the Model's
 * scheduler's job; this module parses, routes, answers CORS preflights, counts metrics, logs one
 * line per request and shuts down gracefully.
 */
import { randomBytes } from 'node:crypto';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Model } from '../api/model.js';
import { handleChatCompletion, handleCompletion, type RequestRecord } from './completions.js';
import { ApiError, toApiError } from './errors.js';
import { hasApiKey, readJsonBody, sendJson } from './http.js';
import { ServerMetrics } from './metrics.js';
import type { ModelList, ModelObject } from './openai-types.js';
import { checkModel, parseChatCompletionRequest, parseCompletionRequest } from './validate.js';

export interface ServerOptions {
  /** Default 127.0.0.1 (loopback only). */
  host?: string;
  /** Default 8080; 0 picks a free port (see `PdvmServer.port`). */
  port?: number;
  /** When set, every /v1 request needs `Authorization: Bearer <apiKey>`. */
  apiKey?: string;
  /** Largest request body accepted, bytes (default 1 MiB); larger ones get 413. */
  maxBodyBytes?: number;
  /** Receives one line per request (default: stderr). */
  log?: (line: string) => void;
  /**
   * Origins a web page may call from ('*' for any): preflights (OPTIONS) are answered without the API
   * key and replies carry Access-Control-Allow-Origin. Default none.
   */
  cors?: string[];
  /** Names the model answers to; the first is the one /v1/models lists first (default: the model's id). */
  servedModelNames?: string[];
  /** A request naming another model is served by this one (reply `model`: the first served name) instead of a 404. */
  acceptAnyModel?: boolean;
  /** GET /metrics needs no API key. */
  metricsPublic?: boolean;
}

export interface PdvmServer {
  readonly url: string;
  readonly port: number;
  readonly http: Server;
  /** Requests being answered now. */
  readonly inFlight: number;
  /**
   * Stops accepting connections, lets requests in flight finish for up to `graceMs`, then cancels the
   * rest (streams end with an error event, others get 503) and closes every connection.
   */
  close(graceMs?: number): Promise<void>;
}

interface InFlight {
  controller: AbortController;
  done: Promise<void>;
}

const MODEL_CREATED = Math.floor(Date.now() / 1000);

export async function startServer(model: Model, options: ServerOptions = {}): Promise<PdvmServer> {
  const host = options.host ?? '127.0.0.1';
  const maxBodyBytes = options.maxBodyBytes ?? 1024 * 1024;
  const log = options.log ?? ((line: string) => process.stderr.write(line + '\n'));
  const inFlight = new Set<InFlight>();
  let draining = false;

  const names = options.servedModelNames?.length ? options.servedModelNames : [model.id];
  const modelObject = (id: string): ModelObject => ({ id, object: 'model', created: MODEL_CREATED, owned_by: 'pdvm' });
  const metrics = new ServerMetrics(model);
  const cors = options.cors ?? [];

  /** The CORS headers for this request's Origin, or null when it is not allowed. */
  function corsHeaders(req: IncomingMessage): Record<string, string> | null {
    const origin = req.headers.origin;
    if (cors.length === 0 || origin === undefined) return null;
    if (!cors.includes('*') && !cors.includes(origin)) return null;
    return { 'Access-Control-Allow-Origin': cors.includes('*') ? '*' : origin, Vary: 'Origin', 'Access-Control-Expose-Headers': 'X-Request-Id, Retry-After' };
  }

  async function route(req: IncomingMessage, res: ServerResponse, record: RequestRecord, signal: AbortSignal): Promise<void> {
    const path = (req.url ?? '/').split('?')[0]!;
    const method = req.method ?? 'GET';
    const allow = (methods: string) => {
      if (!methods.split(',').includes(method)) {
        throw new ApiError(405, `${method} ${path} is not allowed; use ${methods}`, 'invalid_request_error', null, 'method_not_allowed');
      }
    };
    // a CORS preflight from an allowed origin: answered before (and without) the API key
    if (method === 'OPTIONS' && corsHeaders(req)) {
      record.status = 204;
      res.writeHead(204, {
        'Access-Control-Allow-Methods': 'GET, POST, OPTIONS',
        'Access-Control-Allow-Headers': req.headers['access-control-request-headers'] ?? 'Authorization, Content-Type',
        'Access-Control-Max-Age': '600',
        'Content-Length': '0',
      });
      res.end();
      return;
    }
    if (path === '/health') {
      allow('GET');
      record.status = draining ? 503 : 200;
      sendJson(res, record.status, { status: draining ? 'draining' : 'ok', model: names[0], backend: model.backend, ...model.activity, max_concurrency: model.maxConcurrency });
      return;
    }
    const checkKey = () => {
      if (options.apiKey !== undefined && !hasApiKey(req, options.apiKey)) {
        const given = req.headers.authorization !== undefined;
        throw new ApiError(401, given ? 'incorrect API key provided' : 'missing API key: send "Authorization: Bearer <key>"', 'authentication_error', null, 'invalid_api_key');
      }
    };
    if (path === '/metrics') {
      allow('GET');
      if (!options.metricsPublic) checkKey();
      const text = await metrics.text();
      record.status = 200;
      res.writeHead(200, { 'Content-Type': metrics.contentType, 'Content-Length': Buffer.byteLength(text) });
      res.end(text);
      return;
    }
    if (draining) throw new ApiError(503, 'the server is shutting down; retry on another instance', 'server_error', null, 'shutting_down');
    checkKey();
    if (path === '/v1/models') {
      allow('GET');
      record.status = 200;
      sendJson(res, 200, { object: 'list', data: names.map(modelObject) } satisfies ModelList);
      return;
    }
    if (path.startsWith('/v1/models/')) {
      allow('GET');
      let id: string;
      try {
        id = decodeURIComponent(path.slice('/v1/models/'.length));
      } catch {
        throw new ApiError(400, `the model id in ${path} is not valid percent-encoding; encode it with encodeURIComponent`, 'invalid_request_error', 'model', 'invalid_url');
      }
      const name = checkModel(id, names, options.acceptAnyModel);
      record.status = 200;
      sendJson(res, 200, modelObject(name));
      return;
    }
    if (path === '/v1/chat/completions' || path === '/v1/completions') {
      allow('POST');
      const chat = path === '/v1/chat/completions';
      const body = await readJsonBody(req, maxBodyBytes);
      const request = chat ? parseChatCompletionRequest(body) : parseCompletionRequest(body);
      const modelName = checkModel(request.model, names, options.acceptAnyModel);
      record.id = `${chat ? 'chatcmpl' : 'cmpl'}-${record.id}`;
      const g = {
        kind: chat ? ('chat' as const) : ('text' as const), model, res, record, signal, modelName,
        onTokens: (tokens: number, ms: number) => metrics.tokensArrived(tokens, ms),
      };
      if (chat) await handleChatCompletion(g, request as ReturnType<typeof parseChatCompletionRequest>);
      else await handleCompletion(g, request as ReturnType<typeof parseCompletionRequest>);
      return;
    }
    throw new ApiError(404, `unknown request URL: ${method} ${path}; this server serves /v1/models, /v1/completions, /v1/chat/completions, /health and /metrics`, 'invalid_request_error', null, 'unknown_url');
  }

  async function handle(req: IncomingMessage, res: ServerResponse, controller: AbortController): Promise<void> {
    const record: RequestRecord = {
      id: randomBytes(9).toString('base64url'),
      startedAt: performance.now(),
      status: 0,
      promptTokens: 0,
      cachedTokens: 0,
      completionTokens: 0,
      firstTokenMs: null,
      lastTokenAt: null,
      tokensPerSecond: null,
      note: '',
    };
    const allowed = corsHeaders(req);
    if (allowed) for (const [k, v] of Object.entries(allowed)) res.setHeader(k, v);
    // a client that goes away before its reply is complete cancels its generation
    res.on('close', () => {
      if (!res.writableFinished) controller.abort();
    });
    try {
      await route(req, res, record, controller.signal);
    } catch (e) {
      if (controller.signal.aborted && res.destroyed) {
        record.status = 499;
        record.note = 'client disconnected';
      } else {
        const error = toApiError(e);
        record.status = error.status;
        record.note = error.message;
        if (!res.headersSent && !res.destroyed) {
          const headers: Record<string, string> = error.status === 503 || error.status === 413 ? { Connection: 'close' } : {};
          // past the queue: a slot frees within a few steps, so retrying after a second is reasonable
          if (error.status === 429) headers['Retry-After'] = '1';
          sendJson(res, error.status, error.body, headers);
        }
      }
    } finally {
      log(logLine(req, record));
      metrics.requestEnded(endpointOf(req), record.status, record);
    }
  }

  const http = createHttpServer((req, res) => {
    // aborted by the client going away, or by close() when the grace period ends
    const controller = new AbortController();
    const entry: InFlight = { controller, done: handle(req, res, controller).finally(() => inFlight.delete(entry)) };
    inFlight.add(entry);
  });
  // a client that stalls while sending its request is cut off (replies may stream for longer)
  http.headersTimeout = 30_000;

  await new Promise<void>((resolve, reject) => {
    http.once('error', reject);
    http.listen(options.port ?? 8080, host, () => {
      http.off('error', reject);
      resolve();
    });
  });
  const port = (http.address() as AddressInfo).port;

  return {
    url: `http://${host.includes(':') ? `[${host}]` : host}:${port}`,
    port,
    http,
    get inFlight() {
      return inFlight.size;
    },
    async close(graceMs = 10_000): Promise<void> {
      draining = true;
      const closed = new Promise<void>((resolve) => http.close(() => resolve()));
      http.closeIdleConnections();
      const all = () => Promise.all([...inFlight].map((f) => f.done));
      let timer: NodeJS.Timeout | undefined;
      const graceOver = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), graceMs)));
      const outcome = await Promise.race([all().then(() => 'done' as const), graceOver]);
      clearTimeout(timer);
      if (outcome === 'timeout') {
        for (const f of inFlight) f.controller.abort();
        await all();
      }
      http.closeAllConnections();
      await closed;
    },
  };
}

/** The metrics label of a request's path: the known endpoints, else 'other' (bounded label values). */
function endpointOf(req: IncomingMessage): string {
  const path = (req.url ?? '/').split('?')[0]!;
  if (['/v1/completions', '/v1/chat/completions', '/v1/models', '/health', '/metrics'].includes(path)) return path;
  return path.startsWith('/v1/models/') ? '/v1/models/{id}' : 'other';
}

function logLine(req: IncomingMessage, r: RequestRecord): string {
  const ms = (v: number) => `${v.toFixed(0)}ms`;
  const parts = [
    new Date().toISOString(),
    r.id,
    `${req.method} ${(req.url ?? '/').split('?')[0]}`,
    String(r.status),
    `in=${r.promptTokens}`,
    ...(r.cachedTokens ? [`cached=${r.cachedTokens}`] : []),
    `out=${r.completionTokens}`,
    `ttft=${r.firstTokenMs === null ? '-' : ms(r.firstTokenMs)}`,
    `${r.tokensPerSecond === null ? '-' : r.tokensPerSecond.toFixed(1)} tok/s`,
    `total=${ms(performance.now() - r.startedAt)}`,
  ];
  if (r.note) parts.push(`(${r.note})`);
  return parts.join(' ');
}
