/**
 * The Metrics facade: every call goes to every enabled client (statsd, Prometheus, Pushgateway),
 * enabled by the top-level config objects `statsd`, `pushgateway`, `prometheus` (config.md).
 * Calls never throw: a metric must not break the code that reports it.
 */
import { PrometheusMetricsClient } from "./prometheus.js";
import { PushgatewayMetricsClient } from "./pushgateway.js";
import { SiteHealth } from "./site_health.js";
import { StatsdMetricsClient } from "./statsd.js";
import { MetricNames } from "./names.js";
import {
  type MetricsClient,
  type MetricsLogger,
  type MetricType,
  type MetricValue,
  type MonitoringConfig,
  type PrometheusConfig,
  type PushgatewayConfig,
  type StatsdConfig,
  type Tags,
  isPlainObject,
} from "./types.js";

export interface MetricsOptions {
  log?: MetricsLogger;
  /** How often SiteHealth gauges are emitted; 0 disables the timer (call `siteHealth.emit()` yourself). */
  siteHealthIntervalMs?: number;
}

/** Result for the daemon's `GET /metrics` handler (http-api.md §4.2). */
export interface MetricsHttpResponse {
  status: 200 | 501;
  contentType: string;
  body: string;
}

export class Metrics {
  private clients: MetricsClient[] = [];
  private prometheusClient: PrometheusMetricsClient | null = null;
  private statsdClient: StatsdMetricsClient | null = null;
  private pushgatewayClient: PushgatewayMetricsClient | null = null;
  readonly siteHealth: SiteHealth;
  private closed = false;

  constructor(
    config: MonitoringConfig = {},
    private readonly options: MetricsOptions = {},
  ) {
    this.siteHealth = new SiteHealth({
      gauge: (name, value, tags) => this.gauge(name, value, tags),
      increase: (name, inc, tags) => this.increase(name, inc, tags),
    });
    this.configure(config);
    const interval = options.siteHealthIntervalMs ?? 10_000;
    if (interval > 0) this.siteHealth.start(interval);
  }

  private configure(config: MonitoringConfig): void {
    const log = this.options.log;
    if (isPlainObject(config.statsd)) {
      this.statsdClient = new StatsdMetricsClient(config.statsd as StatsdConfig, log);
      this.clients.push(this.statsdClient);
    }
    if (isPlainObject(config.pushgateway)) {
      this.pushgatewayClient = new PushgatewayMetricsClient(config.pushgateway as PushgatewayConfig, log);
      this.clients.push(this.pushgatewayClient);
    }
    if (isPlainObject(config.prometheus)) {
      this.prometheusClient = new PrometheusMetricsClient(config.prometheus as PrometheusConfig, log);
      this.clients.push(this.prometheusClient);
    }
  }

  /**
   * Applies a reloaded configuration (SIGHUP): statsd and pushgateway clients are recreated;
   * the Prometheus registry is kept when prometheus stays enabled, so counters survive reloads.
   */
  async reconfigure(config: MonitoringConfig): Promise<void> {
    const old = this.clients.filter((c) => c !== this.prometheusClient);
    const keepPrometheus = isPlainObject(config.prometheus) ? this.prometheusClient : null;
    this.clients = [];
    this.statsdClient = null;
    this.pushgatewayClient = null;
    this.prometheusClient = null;
    this.configure({ ...config, prometheus: keepPrometheus ? undefined : config.prometheus });
    if (keepPrometheus) {
      this.prometheusClient = keepPrometheus;
      this.clients.push(keepPrometheus);
    }
    await Promise.allSettled(old.map((c) => c.close()));
  }

  get enabled(): { statsd: boolean; pushgateway: boolean; prometheus: boolean } {
    return { statsd: !!this.statsdClient, pushgateway: !!this.pushgatewayClient, prometheus: !!this.prometheusClient };
  }

  gauge(name: string, value: MetricValue, tags?: Tags): void {
    this.send(name, "gauge", value, tags);
  }

  increase(name: string, inc: MetricValue = 1, tags?: Tags): void {
    this.send(name, "counter", inc, tags);
  }

  /** `pghoard.exception{exception=<class name>, where=<where>}` plus extra tags. */
  unexpectedException(err: unknown, where: string, tags?: Tags): void {
    const className =
      err instanceof Error ? err.constructor?.name || err.name || "Error" : err === null ? "NoneType" : typeof err;
    this.increase(MetricNames.EXCEPTION, 1, { exception: className, where, ...(tags ?? {}) });
  }

  private send(name: string, type: MetricType, value: MetricValue, tags?: Tags): void {
    if (this.closed) return;
    for (const client of this.clients) {
      try {
        client.send(name, type, value, tags ?? {});
      } catch (err) {
        this.options.log?.warn(
          `metrics client failed for ${name}: ${err instanceof Error ? err.message : String(err)}`,
        );
      }
    }
  }

  /** Prometheus text exposition, or null when `prometheus` is not configured. */
  async renderPrometheus(): Promise<string | null> {
    return this.prometheusClient ? this.prometheusClient.render() : null;
  }

  /** Everything `GET /metrics` needs: 200 with the exposition, or 501 when prometheus is disabled. */
  async httpResponse(): Promise<MetricsHttpResponse> {
    if (!this.prometheusClient) return { status: 501, contentType: "text/plain", body: "" };
    return { status: 200, contentType: this.prometheusClient.contentType, body: await this.prometheusClient.render() };
  }

  /** Resolves once pending Pushgateway posts finished (tests, shutdown). */
  async flush(): Promise<void> {
    await this.pushgatewayClient?.flush();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.siteHealth.stop();
    await Promise.allSettled(this.clients.map((c) => c.close()));
  }
}

/** A Metrics with no client: every call is a no-op (commands and tests that need none). */
export function nullMetrics(): Metrics {
  return new Metrics({}, { siteHealthIntervalMs: 0 });
}
