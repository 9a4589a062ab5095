/**
 * Prometheus Pushgateway client (operations.md §10.1): one POST per metric call to
 * `<endpoint>/metrics/job/<job>/instance/<instance>` with a two-line text exposition body.
 *
 * Upstream posts synchronously from the calling thread; here posts run in the background with a
 * timeout and a bound on posts in flight (extra ones are dropped and counted), so a slow or
 * absent gateway can never stall the daemon. The body is the clean form of upstream's (which
 * carries indentation from a triple-quoted string), with label values escaped.
 */
import os from "node:os";
import { prometheusLabelName, prometheusName } from "./prometheus.js";
import {
  type MetricsClient,
  type MetricsLogger,
  type MetricType,
  type MetricValue,
  type PushgatewayConfig,
  type Tags,
  isPlainObject,
  mergeTags,
  numericValue,
  pythonStr,
  sortedTagEntries,
} from "./types.js";

const MAX_IN_FLIGHT = 64;
const POST_TIMEOUT_MS = 5_000;

export function escapeLabelValue(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}

export function pushgatewayBody(name: string, type: MetricType, value: MetricValue, tags: Tags): string {
  const metric = prometheusName(name);
  const labels = sortedTagEntries(tags)
    .map(([k, v]) => `${prometheusLabelName(k)}="${escapeLabelValue(pythonStr(v))}"`)
    .join(",");
  return `# TYPE ${metric} ${type}\n${metric}{${labels}} ${numericValue(value)}\n`;
}

export class PushgatewayMetricsClient implements MetricsClient {
  private readonly endpoint: string;
  private readonly job: string;
  private readonly instance: string;
  private readonly tags: Tags;
  private readonly inFlight = new Set<Promise<void>>();
  /** Posts skipped because too many were pending. */
  dropped = 0;
  private lastErrorLogged = 0;

  constructor(
    config: PushgatewayConfig,
    private readonly log?: MetricsLogger,
  ) {
    this.endpoint = (config.endpoint ?? "").replace(/\/+$/, "");
    this.job = config.job || "pghoard";
    this.instance = config.instance ?? "";
    this.tags = isPlainObject(config.tags) ? (config.tags as Tags) : {};
  }

  urlFor(tags: Tags): string {
    const site = tags.site;
    const instance = this.instance || (site !== undefined && site !== null ? pythonStr(site) : os.hostname());
    return `${this.endpoint}/metrics/job/${encodeURIComponent(this.job)}/instance/${encodeURIComponent(instance)}`;
  }

  send(name: string, type: MetricType, value: MetricValue, tags: Tags): void {
    if (this.endpoint === "") return;
    const merged = mergeTags(this.tags, tags);
    if (this.inFlight.size >= MAX_IN_FLIGHT) {
      this.dropped += 1;
      return;
    }
    const post = fetch(this.urlFor(merged), {
      method: "POST",
      headers: { "content-type": "text/plain; version=0.0.4" },
      body: pushgatewayBody(name, type, value, merged),
      signal: AbortSignal.timeout(POST_TIMEOUT_MS),
    })
      .then(async (res) => {
        await res.arrayBuffer().catch(() => undefined);
        if (!res.ok) this.onError(`HTTP ${res.status}`);
      })
      .catch((err: unknown) => this.onError(err instanceof Error ? err.message : String(err)))
      .finally(() => {
        this.inFlight.delete(post);
      });
    this.inFlight.add(post);
  }

  private onError(message: string): void {
    const now = Date.now();
    if (now - this.lastErrorLogged > 60_000) {
      this.lastErrorLogged = now;
      this.log?.warn(`pushgateway post failed: ${message}`);
    }
  }

  /** Resolves when every post already started has finished. */
  async flush(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
  }

  close(): Promise<void> {
    return this.flush();
  }
}
