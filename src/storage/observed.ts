/**
 * `object_storage.statsd_info` and `object_storage.notifier` (config.md §7): rohmu's driver-level
 * statsd counters (`rohmu_operation_count` / `rohmu_operation_size`, tag `operation`) and its HTTP
 * notifier (one JSON POST per object created, copied or deleted). Both wrap any backend, so every
 * storage type reports the same way; neither may disturb a transfer (send errors are logged only).
 */
import { createSocket, type Socket } from "node:dgram";
import { isIP } from "node:net";
import { stat } from "node:fs/promises";
import { Transform, type Readable } from "node:stream";
import { getLogger } from "../common/logger.js";
import { sleep } from "../common/async.js";
import { pyIsoformatUtc } from "../common/pycompat.js";
import { StorageError, type ListOptions, type Metadata, type StorageBackend, type StoredObject } from "./types.js";

type TagValue = string | number | null;

/** rohmu's `StorageOperation` names used by these wrappers. */
type Operation = "store_file" | "get_file" | "metadata_for_key" | "iter_key" | "delete_key" | "copy_file";

/** rohmu `StatsClient` with its `StatsdConfig` (`host`, `port`, `message_format`, `tags`, `operation_map`). */
export class StorageStats {
  private readonly socket: Socket;
  private readonly host: string;
  private readonly port: number;
  private readonly format: "telegraf" | "datadog";
  private readonly tags: Record<string, TagValue>;
  private readonly operationMap: Record<string, string>;
  private lastErrorLogged = 0;
  /** Datagrams handed to the socket and not yet sent: closing earlier would drop them. */
  private pending = 0;
  private closing = false;

  constructor(config: Record<string, unknown>) {
    const known = ["host", "port", "message_format", "tags", "operation_map"];
    for (const key of Object.keys(config)) {
      if (!known.includes(key)) throw new StorageError(`object_storage.statsd_info.${key} is not a known key`);
    }
    this.host = stringOr(config.host, "127.0.0.1", "host");
    this.port = Number(config.port ?? 8125);
    if (!Number.isInteger(this.port) || this.port < 1 || this.port > 65535) {
      throw new StorageError(`object_storage.statsd_info.port must be a port number, not ${String(config.port)}`);
    }
    const format = config.message_format ?? "telegraf";
    if (format !== "telegraf" && format !== "datadog") {
      throw new StorageError(`object_storage.statsd_info.message_format must be "telegraf" or "datadog"`);
    }
    this.format = format;
    this.tags = objectOf(config.tags, "tags") as Record<string, TagValue>;
    this.operationMap = objectOf(config.operation_map, "operation_map") as Record<string, string>;
    this.socket = createSocket(isIP(this.host) === 6 ? "udp6" : "udp4");
    this.socket.on("error", (err) => this.onError(err));
    // A metrics socket must never keep a finished command alive.
    this.socket.unref();
  }

  operation(operation: Operation, count = 1, size?: number): void {
    const tags = { operation: this.operationMap[operation] ?? operation };
    this.send("rohmu_operation_count", count, tags);
    if (size !== undefined) this.send("rohmu_operation_size", size, tags);
  }

  /** One counter datagram, tags as rohmu renders them (telegraf `m,k=v:1|c`, datadog `m:1|c|#k:v`). */
  private send(metric: string, value: number, tags: Record<string, TagValue>): void {
    const all = { ...this.tags, ...tags };
    let line: string;
    if (this.format === "datadog") {
      const rendered = Object.entries(all).map(([k, v]) => (v === null ? k : `${k}:${String(v)}`));
      line = `${metric}:${value}|c${rendered.length ? `|#${rendered.join(",")}` : ""}`;
    } else {
      // rohmu inserts each tag right after the metric name, so they come out in reverse order.
      const rendered = Object.entries(all)
        .map(([k, v]) => `,${k}=${v === null ? "None" : String(v)}`)
        .reverse();
      line = `${metric}${rendered.join("")}:${value}|c`;
    }
    if (this.closing) return;
    this.pending++;
    this.socket.send(line, this.port, this.host, (err) => {
      if (err) this.onError(err);
      if (--this.pending === 0 && this.closing) this.closeSocket();
    });
  }

  private onError(err: Error): void {
    const now = Date.now();
    if (now - this.lastErrorLogged > 60_000) {
      this.lastErrorLogged = now;
      getLogger("pghoard.storage").warn(`statsd_info: send failed: ${err.message}`);
    }
  }

  close(): void {
    this.closing = true;
    if (this.pending === 0) this.closeSocket();
  }

  private closeSocket(): void {
    try {
      this.socket.close();
    } catch {
      // already closed
    }
  }
}

type NotifyEvent =
  | { op: "UPLOAD"; key: string; size: number | null; last_modified: string; metadata: Metadata | null }
  | { op: "DELETE" | "DELETE_TREE"; key: string };

const RETRY_STATUSES = new Set([429, 500, 502, 503, 504]);
const NOTIFY_RETRIES = 5;
/** How long `close()` waits for queued events before dropping them (rohmu joins its thread for 7 s). */
const CLOSE_WAIT_MS = 7000;

/** rohmu's `BackgroundHTTPNotifier`: events are queued and POSTed in order, in the background. */
export class HttpNotifier {
  private readonly queue: NotifyEvent[] = [];
  private running: Promise<void> | null = null;
  private closed = false;

  constructor(
    private readonly url: string,
    private readonly retryDelayMs = 1000,
  ) {}

  objectCreated(key: string, size: number | null, metadata: Metadata | null): void {
    this.push({ op: "UPLOAD", key, size, last_modified: pyIsoformatUtc(new Date()), metadata });
  }

  objectDeleted(key: string): void {
    this.push({ op: "DELETE", key });
  }

  treeDeleted(key: string): void {
    this.push({ op: "DELETE_TREE", key });
  }

  private push(event: NotifyEvent): void {
    if (this.closed) return;
    this.queue.push(event);
    this.running ??= this.drain().finally(() => {
      this.running = null;
    });
  }

  private async drain(): Promise<void> {
    for (let event = this.queue.shift(); event; event = this.queue.shift()) {
      await this.post(event);
    }
  }

  private async post(event: NotifyEvent): Promise<void> {
    const body = JSON.stringify(event);
    let lastError = "";
    for (let attempt = 0; attempt <= NOTIFY_RETRIES; attempt++) {
      // urllib3's backoff (factor 1): no wait before the first retry, then 2, 4, 8 s.
      if (attempt > 1) await sleep(this.retryDelayMs * 2 ** (attempt - 1));
      try {
        const response = await fetch(this.url, {
          method: "POST",
          body,
          headers: { "content-type": "application/json" },
          signal: AbortSignal.timeout(30_000),
        });
        await response.arrayBuffer().catch(() => undefined);
        if (!RETRY_STATUSES.has(response.status)) return;
        lastError = `HTTP ${response.status}`;
      } catch (err) {
        lastError = (err as Error).message;
      }
    }
    // As upstream: the event is dropped, the queue keeps moving.
    getLogger("pghoard.storage").warn(`notifier: POST to ${redactUrl(this.url)} failed (${lastError}), dropping event`);
  }

  /** Waits (bounded) for queued events to be sent; later events are ignored. */
  async close(): Promise<void> {
    this.closed = true;
    const running = this.running;
    if (!running) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([running, new Promise<void>((resolve) => (timer = setTimeout(resolve, CLOSE_WAIT_MS)))]);
    clearTimeout(timer);
    if (this.queue.length) {
      getLogger("pghoard.storage").warn(`notifier: ${this.queue.length} event(s) not sent before close`);
    }
  }
}

/** A backend that reports each operation to `stats` and each change to `notifier`. */
class ObservedStorage implements StorageBackend {
  readonly storageType: string;
  readonly removeInterruptedWrites?: StorageBackend["removeInterruptedWrites"];

  constructor(
    private readonly inner: StorageBackend,
    private readonly stats: StorageStats | null,
    private readonly notifier: HttpNotifier | null,
  ) {
    this.storageType = inner.storageType;
    if (inner.removeInterruptedWrites) {
      this.removeInterruptedWrites = (prefix, olderThan) => inner.removeInterruptedWrites!(prefix, olderThan);
    }
  }

  private created(key: string, size: number, metadata: Metadata): void {
    this.stats?.operation("store_file", 1, size);
    this.notifier?.objectCreated(key, size, metadata);
  }

  async storeFileFromMemory(key: string, data: Buffer, metadata: Metadata): Promise<void> {
    await this.inner.storeFileFromMemory(key, data, metadata);
    this.created(key, data.length, metadata);
  }

  async storeFileFromDisk(key: string, filePath: string, metadata: Metadata): Promise<void> {
    const { size } = await stat(filePath);
    await this.inner.storeFileFromDisk(key, filePath, metadata);
    this.created(key, size, metadata);
  }

  async storeFileObject(key: string, source: Readable, metadata: Metadata): Promise<void> {
    let size = 0;
    const counter = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        size += chunk.length;
        callback(null, chunk);
      },
    });
    source.on("error", (err) => counter.destroy(err));
    await this.inner.storeFileObject(key, source.pipe(counter), metadata);
    this.created(key, size, metadata);
  }

  async getContentsToMemory(key: string): Promise<{ data: Buffer; metadata: Metadata }> {
    const result = await this.inner.getContentsToMemory(key);
    this.stats?.operation("get_file", 1, result.data.length);
    return result;
  }

  async getContentsToFile(key: string, filePath: string): Promise<Metadata> {
    const metadata = await this.inner.getContentsToFile(key, filePath);
    if (this.stats) this.stats.operation("get_file", 1, (await stat(filePath)).size);
    return metadata;
  }

  async getReadStream(key: string): Promise<{ stream: Readable; metadata: Metadata; size: number }> {
    const result = await this.inner.getReadStream(key);
    this.stats?.operation("get_file", 1, result.size);
    return result;
  }

  async getMetadataForKey(key: string): Promise<Metadata> {
    const metadata = await this.inner.getMetadataForKey(key);
    this.stats?.operation("metadata_for_key");
    return metadata;
  }

  async list(prefix: string, options?: ListOptions): Promise<StoredObject[]> {
    const objects = await this.inner.list(prefix, options);
    this.stats?.operation("iter_key");
    return objects;
  }

  async deleteKey(key: string): Promise<void> {
    await this.inner.deleteKey(key);
    this.stats?.operation("delete_key");
    this.notifier?.objectDeleted(key);
  }

  async deleteTree(prefix: string): Promise<void> {
    await this.inner.deleteTree(prefix);
    this.stats?.operation("delete_key");
    this.notifier?.treeDeleted(prefix);
  }

  async copyFile(sourceKey: string, destinationKey: string, metadata?: Metadata): Promise<void> {
    await this.inner.copyFile(sourceKey, destinationKey, metadata);
    this.stats?.operation("copy_file");
    if (this.notifier) {
      const copied = metadata ?? (await this.inner.getMetadataForKey(destinationKey).catch(() => null));
      this.notifier.objectCreated(destinationKey, null, copied);
    }
  }

  async close(): Promise<void> {
    try {
      await this.notifier?.close();
    } finally {
      this.stats?.close();
      await this.inner.close();
    }
  }
}

/** Wraps `backend` when `statsd_info` or `notifier` is configured; validates both. */
export function observeStorage(
  backend: StorageBackend,
  config: { statsd_info?: unknown; notifier?: unknown; [key: string]: unknown },
): StorageBackend {
  const stats = isObject(config.statsd_info) ? new StorageStats(config.statsd_info) : null;
  let notifier: HttpNotifier | null = null;
  if (config.notifier !== undefined && config.notifier !== null) {
    if (!isObject(config.notifier)) throw new StorageError("object_storage.notifier must be an object");
    const type = config.notifier.notifier_type;
    if (type !== "http") {
      throw new StorageError(
        `object_storage.notifier.notifier_type: unsupported notifier type ${JSON.stringify(type)}`,
      );
    }
    const url = config.notifier.url;
    if (typeof url !== "string" || !/^https?:\/\//.test(url)) {
      throw new StorageError("object_storage.notifier.url must be an http(s) URL");
    }
    notifier = new HttpNotifier(url);
  }
  return stats || notifier ? new ObservedStorage(backend, stats, notifier) : backend;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function objectOf(value: unknown, key: string): Record<string, unknown> {
  if (value === undefined || value === null) return {};
  if (!isObject(value)) throw new StorageError(`object_storage.statsd_info.${key} must be an object`);
  return value;
}

function stringOr(value: unknown, fallback: string, key: string): string {
  if (value === undefined || value === null) return fallback;
  if (typeof value !== "string") throw new StorageError(`object_storage.statsd_info.${key} must be a string`);
  return value;
}

/** A notifier URL may carry credentials; they never reach the log. */
function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.username || parsed.password) {
      parsed.username = "***";
      parsed.password = "";
    }
    return parsed.toString();
  } catch {
    return "<notifier url>";
  }
}
