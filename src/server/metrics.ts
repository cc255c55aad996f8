/**
 * GET /metrics: the server's counters in Prometheus text format, through prom-client, on a registry
 * of the server's own (two servers in one process never mix). Load figures (queue, batch, KV caches)
 * are read from the model's scheduler when scraped; request figures are counted as requests end.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Model } from '../api/model.js';

export class ServerMetrics {
  readonly registry = new Registry();
  private readonly requests: Counter<'endpoint' | 'status'>;
  private readonly promptTokens: Counter;
  private readonly cachedPromptTokens: Counter;
  private readonly generatedTokens: Counter;
  private readonly timeToFirstToken: Histogram;
  private readonly timePerToken: Histogram;

  constructor(model: Model) {
    const registers = [this.registry];
    this.requests = new Counter({ name: 'pdvm_requests_total', help: 'HTTP requests answered, by endpoint and status (499: the client went away)', labelNames: ['endpoint', 'status'], registers });
    this.promptTokens = new Counter({ name: 'pdvm_prompt_tokens_total', help: 'Prompt tokens of generation requests', registers });
    this.cachedPromptTokens = new Counter({ name: 'pdvm_prompt_tokens_cached_total', help: 'Prompt tokens taken from kept KV caches (prefix reuse) instead of being prefilled', registers });
    this.generatedTokens = new Counter({ name: 'pdvm_generation_tokens_total', help: 'Tokens generated', registers });
    this.timeToFirstToken = new Histogram({
      name: 'pdvm_time_to_first_token_seconds', help: 'From a request\'s arrival to its first generated token (queue wait and prefill included)',
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60], registers,
    });
    this.timePerToken = new Histogram({
      name: 'pdvm_time_per_output_token_seconds', help: 'Time between consecutive generated tokens of a stream',
      buckets: [0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5, 5], registers,
    });
    const stats = () => model.schedulerStats;
    new Gauge({ name: 'pdvm_queue_depth', help: 'Generations waiting for a slot', registers, collect() { this.set(stats().queued); } });
    new Gauge({ name: 'pdvm_running_requests', help: 'Generations holding a KV cache slot', registers, collect() { this.set(stats().active); } });
    new Gauge({ name: 'pdvm_max_concurrency', help: 'Generations decoding at once at most (the batch size)', registers, collect() { this.set(model.maxConcurrency); } });
    new Gauge({ name: 'pdvm_batch_size', help: 'Decode rows in the latest batched step', registers, collect() { this.set(stats().lastStepDecodeRows); } });
    new Gauge({ name: 'pdvm_batch_steps', help: 'Batched steps run since the start', registers, collect() { this.set(stats().steps); } });
    new Gauge({ name: 'pdvm_batch_step_seconds', help: 'Seconds spent in batched steps since the start (the engine\'s share of the serving loop)', registers, collect() { this.set(stats().stepSeconds); } });
    new Gauge({ name: 'pdvm_batch_decode_steps', help: 'Batched steps of decode rows only (no prompt tokens) since the start', registers, collect() { this.set(stats().decodeSteps); } });
    new Gauge({ name: 'pdvm_batch_decode_step_seconds', help: 'Seconds spent in batched steps of decode rows only', registers, collect() { this.set(stats().decodeStepSeconds); } });
    new Gauge({ name: 'pdvm_batch_decode_step_rows', help: 'Rows of the batched steps of decode rows only, summed', registers, collect() { this.set(stats().decodeStepRows); } });
    new Gauge({ name: 'pdvm_batch_between_step_seconds', help: 'Seconds between a batched step\'s end and the next one\'s start while the loop runs (sampling, streaming, the event loop)', registers, collect() { this.set(stats().betweenStepSeconds); } });
    new Gauge({ name: 'pdvm_batch_prefill_tokens', help: 'Prompt tokens prefilled in the latest batched step', registers, collect() { this.set(stats().lastStepPrefillTokens); } });
    new Gauge({
      name: 'pdvm_kv_cache_bytes', help: 'KV cache memory held, by running generations and kept for prefix reuse', labelNames: ['state'], registers,
      collect() {
        const s = stats();
        this.set({ state: 'running' }, s.cacheBytes - s.keptBytes);
        this.set({ state: 'kept' }, s.keptBytes);
      },
    });
    new Gauge({
      name: 'pdvm_kv_caches', help: 'KV caches held, by running generations and kept for prefix reuse', labelNames: ['state'], registers,
      collect() {
        const s = stats();
        this.set({ state: 'running' }, s.runningCaches);
        this.set({ state: 'kept' }, s.keptCaches);
      },
    });
  }

  /** A request has ended (any endpoint, any status). */
  requestEnded(endpoint: string, status: number, r: { promptTokens: number; cachedTokens: number; completionTokens: number; firstTokenMs: number | null }): void {
    this.requests.inc({ endpoint, status: String(status) });
    if (r.promptTokens) this.promptTokens.inc(r.promptTokens);
    if (r.cachedTokens) this.cachedPromptTokens.inc(r.cachedTokens);
    if (r.completionTokens) this.generatedTokens.inc(r.completionTokens);
    if (r.firstTokenMs !== null) this.timeToFirstToken.observe(r.firstTokenMs / 1000);
  }

  /** `tokens` more tokens of one stream arrived `ms` after its previous ones. */
  tokensArrived(tokens: number, ms: number): void {
    for (let i = 0; i < tokens; i++) this.timePerToken.observe(ms / tokens / 1000);
  }

  async text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
