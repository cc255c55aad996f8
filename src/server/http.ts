/** node:http plumbing the handlers share: bounded body reading, JSON replies, API-key check. */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { ApiError, badRequest } from './errors.js';

/** Reads the whole body as JSON; 413 past `limitBytes`, 400 when it is not JSON. */
export async function readJsonBody(req: IncomingMessage, limitBytes: number): Promise<unknown> {
  const declared = Number(req.headers['content-length'] ?? NaN);
  const chunks: Buffer[] = [];
  let received = 0;
  let tooLarge = declared > limitBytes;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    received += chunk.length;
    if (received > limitBytes) tooLarge = true;
    // an oversized body is drained and dropped so the client can read the 413; a flood is cut off
    if (tooLarge) {
      if (received > 64 * limitBytes) {
        req.destroy();
        break;
      }
      continue;
    }
    chunks.push(chunk);
  }
  if (tooLarge) {
    throw new ApiError(413, `the request body is ${received} bytes, over the limit of ${limitBytes}; send a shorter prompt`, 'invalid_request_error', null, 'request_too_large');
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (text.trim().length === 0) throw badRequest('the request body is empty; send a JSON object', null, 'invalid_json');
  try {
    return JSON.parse(text);
  } catch (e) {
    throw badRequest(`the request body is not valid JSON: ${(e as Error).message}`, null, 'invalid_json');
  }
}

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const json = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(json), ...headers });
  res.end(json);
}

/** True when the request carries `Authorization: Bearer <key>` (compared in constant time). */
export function hasApiKey(req: IncomingMessage, key: string): boolean {
  const header = req.headers.authorization ?? '';
  const match = /^Bearer\s+(.+)$/i.exec(header);
  if (!match) return false;
  const digest = (s: string) => createHash('sha256').update(s).digest();
  return timingSafeEqual(digest(match[1]!.trim()), digest(key));
}

/** Server-sent events: one `data:` line per JSON payload, ended by `data: [DONE]`. */
export class EventStream {
  constructor(private readonly res: ServerResponse, headers: Record<string, string> = {}) {
    res.writeHead(200, { 'Content-Type': 'text/event-stream; charset=utf-8', 'Cache-Control': 'no-cache', Connection: 'keep-alive', 'X-Accel-Buffering': 'no', ...headers });
    res.flushHeaders();
  }

  send(payload: unknown): void {
    if (!this.res.writableEnded) this.res.write(`data: ${JSON.stringify(payload)}\n\n`);
  }

  /** Ends the stream the way OpenAI's clients expect. */
  done(): void {
    if (!this.res.writableEnded) this.res.end('data: [DONE]\n\n');
  }
}
