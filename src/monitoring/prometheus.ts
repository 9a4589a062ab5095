/**
 * Prometheus exposition for `GET /metrics` (http-api.md §4.2), built on prom-client.
 *
 * Deliberate deviations from upstream (operations.md §10.1): counters accumulate instead of
 * keeping the last increment, output is the standard text format with `# HELP`/`# TYPE` lines
 * and without per-sample timestamps (so scrapers apply their own), and label values are escaped.
 * Names get `.` and `-` replaced by `_` as upstream does, plus any other invalid character.
 */
import { Counter, Gauge, Registry } from "prom-client";
import { METRIC_HELP } from "./names.js";
import {
  type MetricsClient,
  type MetricsLogger,
  type MetricType,
  type MetricValue,
  type PrometheusConfig,
  type Tags,
  isPlainObject,
  mergeTags,
  numericValue,
  pythonStr,
} from "./types.js";

export function prometheusName(name: string): string {
  let out = name.replace(/[.-]/g, "_").replace(/[^a-zA-Z0-9_:]/g, "_");
  if (/^[0-9]/.test(out)) out = `_${out}`;
  return out;
}

const HELP = new Map(Object.entries(METRIC_HELP).map(([name, help]) => [prometheusName(name), help]));

export function prometheusLabelName(name: string): string {
  let out = name.replace(/[^a-zA-Z0-9_]/g, "_");
  if (/^[0-9]/.test(out) || out === "") out = `_${out}`;
  // Names starting with __ are reserved for Prometheus itself.
  if (out.startsWith("__")) out = `x${out}`;
  return out;
}

interface Series {
  labels: Record<string, string>;
  value: number;
}

interface Family {
  type: MetricType;
  labelNames: Set<string>;
  metric: Gauge<string> | Counter<string>;
  /** Our own copy of every series so the family can be rebuilt when a new label name appears. */
  series: Map<string, Series>;
}

export class PrometheusMetricsClient implements MetricsClient {
  readonly registry = new Registry();
  private readonly tags: Tags;
  private readonly families = new Map<string, Family>();

  constructor(
    config: PrometheusConfig,
    private readonly log?: MetricsLogger,
  ) {
    this.tags = isPlainObject(config.tags) ? (config.tags as Tags) : {};
  }

  send(name: string, type: MetricType, value: MetricValue, tags: Tags): void {
    const metricName = prometheusName(name);
    const labels: Record<string, string> = {};
    for (const [key, val] of Object.entries(mergeTags(this.tags, tags))) {
      labels[prometheusLabelName(key)] = pythonStr(val);
    }
    const num = numericValue(value);
    let family = this.families.get(metricName);
    if (family && family.type !== type) {
      this.log?.warn(`metric ${metricName} sent as ${type} but registered as ${family.type}; using ${family.type}`);
    }
    const labelKeys = Object.keys(labels);
    if (!family || labelKeys.some((k) => !family!.labelNames.has(k))) {
      family = this.rebuild(metricName, family?.type ?? type, labelKeys, family);
    }
    const seriesKey = JSON.stringify(Object.entries(labels).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
    const existing = family.series.get(seriesKey);
    if (family.type === "counter") {
      if (!(num >= 0)) {
        this.log?.debug(`ignoring negative or NaN increment ${num} of counter ${metricName}`);
        return;
      }
      (family.metric as Counter<string>).inc(labels, num);
      family.series.set(seriesKey, { labels, value: (existing?.value ?? 0) + num });
    } else {
      (family.metric as Gauge<string>).set(labels, num);
      family.series.set(seriesKey, { labels, value: num });
    }
  }

  private rebuild(name: string, type: MetricType, labelKeys: string[], old: Family | undefined): Family {
    const labelNames = new Set([...(old?.labelNames ?? []), ...labelKeys]);
    if (old) this.registry.removeSingleMetric(name);
    const options = {
      name,
      help: HELP.get(name) ?? `pghoard metric ${name}`,
      labelNames: [...labelNames].sort(),
      registers: [this.registry],
    };
    const metric = type === "counter" ? new Counter(options) : new Gauge(options);
    const series = old?.series ?? new Map<string, Series>();
    for (const s of series.values()) {
      if (type === "counter") (metric as Counter<string>).inc(s.labels, s.value);
      else (metric as Gauge<string>).set(s.labels, s.value);
    }
    const family: Family = { type, labelNames, metric, series };
    this.families.set(name, family);
    return family;
  }

  /** Body of `GET /metrics` (content type: `contentType`). */
  render(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  async close(): Promise<void> {
    // Nothing to flush: the registry lives as long as the process.
  }
}
