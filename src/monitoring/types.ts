/** Shared types of the metrics clients. */

/** A tag value of null is sent as a bare key in datadog format (upstream behaviour). */
export type Tags = Record<string, string | number | boolean | null>;

/** Metric values; booleans are rendered like Python's str() (`True`) for statsd and as 1/0 elsewhere. */
export type MetricValue = number | boolean;

export type MetricType = "gauge" | "counter";

/** What each backend client implements; the Metrics facade fans out to all of them. */
export interface MetricsClient {
  send(name: string, type: MetricType, value: MetricValue, tags: Tags): void;
  close(): Promise<void>;
}

/** Minimal logger shape (pino's Logger satisfies it). */
export interface MetricsLogger {
  warn(msg: string): void;
  debug(msg: string): void;
}

export interface StatsdConfig {
  host?: string;
  port?: number;
  format?: "telegraf" | "datadog" | string;
  tags?: Tags;
}

export interface PushgatewayConfig {
  endpoint?: string;
  job?: string;
  instance?: string;
  tags?: Tags;
}

export interface PrometheusConfig {
  tags?: Tags;
}

/** The top-level keys of pghoard.json that enable metrics clients (config.md); PghoardConfig satisfies it. */
export interface MonitoringConfig {
  statsd?: StatsdConfig | null | unknown;
  pushgateway?: PushgatewayConfig | null | unknown;
  prometheus?: PrometheusConfig | null | unknown;
}

/** Config tags first, per-call tags win (operations.md §10). */
export function mergeTags(configTags: Tags | undefined, callTags: Tags | undefined): Tags {
  return { ...(configTags ?? {}), ...(callTags ?? {}) };
}

export function sortedTagEntries(tags: Tags): [string, string | number | boolean | null][] {
  return Object.entries(tags).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

/** Python str() of a scalar, as upstream renders values and tag values. */
export function pythonStr(value: string | number | boolean | null): string {
  if (value === null) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number" && Number.isFinite(value)) return String(value);
  if (typeof value === "number") return Number.isNaN(value) ? "nan" : value > 0 ? "inf" : "-inf";
  return value;
}

export function numericValue(value: MetricValue): number {
  return typeof value === "boolean" ? (value ? 1 : 0) : value;
}

export function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
