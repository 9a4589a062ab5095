/**
 * statsd client (operations.md §10.1) on top of hot-shots.
 *
 * hot-shots produces upstream's exact lines once its extras are switched off: we merge and sort
 * the tags ourselves and hand them over as a "k:v" array (a null value becomes a bare key), so
 * its telegraf mode writes `<metric>,k=v,...:<value>|<type>` and its plain (non-datadog) mode
 * `<metric>:<value>|<type>|#k:v,...`. Datadog mode proper is left off because it appends
 * container-id fields, DD_* environment tags and its own telemetry metrics. One difference from
 * upstream is kept on purpose: hot-shots replaces `|`, `,` (and in datadog format `@`, `#`) in
 * tags with `_`, so a tag can never break the datagram.
 */
import StatsD from "hot-shots";
import type { StatsD as StatsDClient } from "hot-shots";
import {
  type MetricsClient,
  type MetricsLogger,
  type MetricType,
  type MetricValue,
  type StatsdConfig,
  type Tags,
  isPlainObject,
  mergeTags,
  pythonStr,
  sortedTagEntries,
} from "./types.js";

export class StatsdMetricsClient implements MetricsClient {
  private readonly client: StatsDClient;
  private readonly tags: Tags;
  readonly format: "telegraf" | "datadog";
  private lastErrorLogged = 0;

  constructor(
    config: StatsdConfig,
    private readonly log?: MetricsLogger,
  ) {
    this.tags = isPlainObject(config.tags) ? (config.tags as Tags) : {};
    this.format = config.format === "datadog" ? "datadog" : "telegraf";
    this.client = new StatsD({
      host: config.host ?? "127.0.0.1",
      port: config.port ?? 8125,
      protocol: "udp",
      telegraf: this.format === "telegraf",
      datadog: false,
      includeDataDogTags: false,
      includeDatadogTelemetry: false,
      originDetection: false,
      maxBufferSize: 0,
      errorHandler: (err: Error) => this.onError(err),
    });
  }

  send(name: string, type: MetricType, value: MetricValue, tags: Tags): void {
    const merged = mergeTags(this.tags, tags);
    const tagList: string[] = [];
    for (const [key, val] of sortedTagEntries(merged)) {
      if (val === null && this.format === "datadog") tagList.push(key);
      else tagList.push(`${key}:${pythonStr(val)}`);
    }
    // hot-shots formats the value with a template string; a string keeps Python's rendering of booleans.
    const rendered = typeof value === "boolean" ? pythonStr(value) : value;
    const cb = (err?: Error) => {
      if (err) this.onError(err);
    };
    // hot-shots' typings say number; it interpolates the value, so "True" is sent verbatim.
    if (type === "gauge") this.client.gauge(name, rendered as number, tagList, cb);
    else this.client.increment(name, rendered as number, tagList, cb);
  }

  private onError(err: Error): void {
    // Metrics must never disturb the daemon; rate-limit the warning to once a minute.
    const now = Date.now();
    if (now - this.lastErrorLogged > 60_000) {
      this.lastErrorLogged = now;
      this.log?.warn(`statsd send failed: ${err.message}`);
    }
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.client.close(() => resolve());
    });
  }
}
