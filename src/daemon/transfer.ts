/**
 * Transfer agents (upstream TransferAgent, operations.md §9): `transfer.thread_count` concurrent
 * loops execute uploads, downloads, metadata lookups and listings against each site's storage.
 * Uploads that fail are re-queued forever with backoff min(0.5·2^(n−1), 20) s; after
 * `upload_retries_warning_limit` failures the `upload_retries_warning` alert file is created, and it
 * is removed again once no upload is over that limit and one succeeds.
 */
import { readFile, unlink } from "node:fs/promises";
import path from "node:path";
import type { Logger } from "pino";
import { siteLogger } from "../common/logger.js";
import { RateLimitedLog } from "../common/rate_limited_log.js";
import { StorageNotFoundError, type Metadata, type StorageBackend } from "../storage/types.js";
import { objectKey } from "../catalog/index.js";
import { downloadObjectTo, siteDecoder } from "../restore/wal_file.js";
import { createAlertFile, removeAlertFile } from "./alerts.js";
import type { DaemonContext } from "./context.js";
import { nowSeconds } from "./http.js";
import type { SpoolMetadata } from "./spool.js";
import type { ObjectFileType, TransferOp, TransferResult, UploadOp } from "./types.js";

export interface TransferTypeState {
  data: number;
  count: number;
  time_taken: number;
  failures: number;
  xlogs_since_basebackup: number;
  /** Monotonic seconds, as upstream (comparable only within one daemon run). */
  last_success: number | null;
  /** Wall-clock time of the last success (ISO 8601 UTC); not in upstream. */
  last_success_time?: string;
  latest_filename?: string;
}
type Operation = "upload" | "download" | "metadata" | "list";
export type TransferAgentState = Record<string, Record<Operation, Record<ObjectFileType, TransferTypeState>>>;

const FILE_TYPES: ObjectFileType[] = [
  "basebackup",
  "basebackup_chunk",
  "basebackup_delta",
  "basebackup_delta_chunk",
  "timeline",
  "xlog",
];

/** Store-side metadata: values as strings, null/undefined dropped, Content-Length added (storage-layout.md §4.1). */
export function storeMetadata(metadata: SpoolMetadata, storedSize: number): Metadata {
  const out: Metadata = {};
  for (const [key, value] of Object.entries(metadata)) {
    if (value === null || value === undefined) continue;
    out[key] = typeof value === "boolean" ? (value ? "True" : "False") : String(value);
  }
  out["Content-Length"] = String(storedSize);
  return out;
}

function uploadObjectName(op: UploadOp): string {
  if (op.objectName) return op.objectName;
  if (op.filetype === "basebackup_chunk") {
    return path.posix.join(path.basename(path.dirname(op.localPath)), path.basename(op.localPath));
  }
  return path.basename(op.localPath);
}

export class TransferAgents {
  state: TransferAgentState;
  private workers: Array<Promise<void>> = [];
  private running = 0;
  private stopped = false;
  private backoffTimers = new Set<NodeJS.Timeout>();
  /** Uploads that are past the warning limit and not yet through. */
  private overLimit = new Set<UploadOp>();
  /** Uploads waiting in a backoff sleep: counted as pending work during a graceful drain. */
  private backingOff = 0;
  private readonly log: Logger;
  /** Upload retry errors: the first logged, then one line a minute with a count. */
  private readonly repeatedErrors = new RateLimitedLog();
  private metricsTimer: NodeJS.Timeout | null = null;

  constructor(
    private readonly ctx: DaemonContext,
    initialState: TransferAgentState = {},
  ) {
    this.log = ctx.log.child({ name: "pghoard.transfer" });
    this.state = initialState;
  }

  start(count: number): void {
    for (let i = 0; i < count; i++) this.workers.push(this.workerLoop());
    // operations.md §10.2: pghoard.last_upload_age at most every 10 s (upstream's transmit_metrics).
    this.metricsTimer = setInterval(() => this.transmitMetrics(), 10_000);
    this.metricsTimer.unref();
  }

  /** `pghoard.last_upload_age{site,type}` for every type that had a successful upload. */
  transmitMetrics(): void {
    const now = nowSeconds();
    for (const [site, byOper] of Object.entries(this.state)) {
      for (const [filetype, entry] of Object.entries(byOper.upload ?? {})) {
        // last_success is on this process's monotonic clock; one restored from an older state file is not.
        if (entry.last_success === null || entry.last_success > now) continue;
        this.ctx.metrics.gauge("pghoard.last_upload_age", now - entry.last_success, { site, type: filetype });
      }
    }
  }

  /** Work not finished yet: queued, running, or sleeping before a retry. */
  get pendingCount(): number {
    return this.ctx.transferQueue.size + this.running + this.backingOff;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.metricsTimer) clearInterval(this.metricsTimer);
    this.ctx.transferQueue.close();
    for (const timer of this.backoffTimers) clearTimeout(timer);
    this.backoffTimers.clear();
    this.backingOff = 0;
    await Promise.all(this.workers);
  }

  private async workerLoop(): Promise<void> {
    while (!this.stopped) {
      const op = await this.ctx.transferQueue.get();
      if (!op) break;
      this.running++;
      try {
        await this.handle(op);
      } catch (err) {
        // handle() reports failures itself; this is a bug guard so one op never kills a worker.
        this.log.error({ err }, `Unexpected error in transfer agent`);
      } finally {
        this.running--;
      }
    }
  }

  private typeState(site: string, oper: Operation, filetype: ObjectFileType): TransferTypeState {
    if (!this.state[site]) {
      const defaults = (): Record<ObjectFileType, TransferTypeState> => {
        const out = {} as Record<ObjectFileType, TransferTypeState>;
        for (const t of FILE_TYPES) {
          out[t] = { data: 0, count: 0, time_taken: 0, failures: 0, xlogs_since_basebackup: 0, last_success: null };
        }
        return out;
      };
      this.state[site] = { upload: defaults(), download: defaults(), metadata: defaults(), list: defaults() };
    }
    const byOper = this.state[site][oper];
    if (!byOper[filetype]) {
      byOper[filetype] = {
        data: 0,
        count: 0,
        time_taken: 0,
        failures: 0,
        xlogs_since_basebackup: 0,
        last_success: null,
      };
    }
    return byOper[filetype];
  }

  private async handle(op: TransferOp): Promise<void> {
    const start = nowSeconds();
    const prefix = this.ctx.site(op.site).prefix;
    let result: TransferResult;
    let size = 0;
    let name: string;
    let key: string;
    switch (op.type) {
      case "UPLOAD": {
        name = uploadObjectName(op);
        key = objectKey(prefix, op.filetype, name);
        size = op.fileSize;
        const outcome = await this.handleUpload(op, key);
        if (outcome === "retrying") {
          this.typeState(op.site, "upload", op.filetype).failures += 1;
          this.ctx.metrics.increase("pghoard.upload_size", size, {
            result: "failed",
            type: op.filetype,
            site: op.site,
          });
          return;
        }
        result = { success: true };
        break;
      }
      case "DOWNLOAD":
        name = op.name;
        key = objectKey(prefix, op.filetype, name);
        ({ result, size } = await this.handleDownload(op.site, key, op.targetPath, op.durable ?? true));
        break;
      case "METADATA":
        name = op.name;
        key = objectKey(prefix, op.filetype, name);
        result = await this.guarded("handle_metadata", op.site, key, async (storage) => ({
          success: true,
          metadata: await storage.getMetadataForKey(key),
        }));
        size = result.metadata ? JSON.stringify(result.metadata).length : 0;
        break;
      case "LIST":
        name = "";
        key = path.posix.join(prefix, op.filetype);
        result = await this.guarded("handle_list", op.site, key, async (storage) => ({
          success: true,
          items: await storage.list(key),
        }));
        size = result.items ? JSON.stringify(result.items).length : 0;
        break;
    }

    const oper = op.type.toLowerCase() as Operation;
    const entry = this.typeState(op.site, oper, op.filetype);
    if (result.success) {
      if (oper === "upload") {
        const xlogEntry = this.typeState(op.site, "upload", "xlog");
        if (op.filetype === "xlog") xlogEntry.xlogs_since_basebackup += 1;
        else if (op.filetype === "basebackup" || op.filetype === "basebackup_delta")
          xlogEntry.xlogs_since_basebackup = 0;
        this.ctx.metrics.gauge("pghoard.xlogs_since_basebackup", xlogEntry.xlogs_since_basebackup, { site: op.site });
        if (op.filetype === "xlog") this.ctx.metrics.siteHealth.walUploaded(op.site, path.basename(name));
      }
      entry.last_success = nowSeconds();
      entry.last_success_time = new Date().toISOString();
      entry.count += 1;
      entry.data += size;
      entry.time_taken += nowSeconds() - start;
      entry.latest_filename = path.basename(name);
      // Uploads only: a listing's or a metadata read's size is no upload.
      if (oper === "upload")
        this.ctx.metrics.gauge("pghoard.total_upload_size", entry.data, { type: op.filetype, site: op.site });
    } else {
      entry.failures += 1;
    }
    if (oper === "upload" || oper === "download") {
      this.ctx.metrics.increase(`pghoard.${oper}_size`, size, {
        result: result.success ? "ok" : "failed",
        type: op.filetype,
        site: op.site,
      });
    }
    op.callback?.resolve(result);
    const took = (nowSeconds() - start).toFixed(3);
    if (result.notFound) {
      // Expected: restore_command probes for history files and for the end of the archive.
      siteLogger(this.log, op.site).debug(`${op.type} of key: ${key}: not in storage, took ${took}s`);
      return;
    }
    const line = `${op.type} ${result.success ? "" : "FAILED "}transfer of key: ${key}, size: ${size}, took ${took}s`;
    if (result.success) siteLogger(this.log, op.site).info(line);
    else siteLogger(this.log, op.site).warn(line);
  }

  private async guarded(
    where: string,
    site: string,
    key: string,
    fn: (storage: StorageBackend) => Promise<TransferResult>,
  ): Promise<TransferResult> {
    try {
      return await fn(await this.ctx.getStorage(site));
    } catch (err) {
      if (err instanceof StorageNotFoundError) {
        // Expected (a HEAD or restore_command probing for the end of the archive): no warning.
        siteLogger(this.log, site).debug(`'${key}' not found from storage`);
        return { success: false, notFound: true, error: err };
      }
      siteLogger(this.log, site).error({ err }, `Problem with ${where} of ${key}`);
      this.ctx.metrics.unexpectedException(err, where);
      return { success: false, error: err };
    }
  }

  private async handleDownload(
    site: string,
    key: string,
    targetPath: string,
    durable: boolean,
  ): Promise<{ result: TransferResult; size: number }> {
    let size = 0;
    const result = await this.guarded("handle_download", site, key, async (storage) => {
      const decoder = siteDecoder(this.ctx.site(site), (metadata, pem) =>
        this.ctx.pool.createDecodeStream(metadata, pem),
      );
      const { metadata, storedSize } = await downloadObjectTo(storage, key, targetPath, decoder, durable);
      size = storedSize;
      return { success: true, metadata, targetPath };
    });
    return { result, size };
  }

  /** "done", or "retrying" when the op was re-queued after a failure. */
  private async handleUpload(op: UploadOp, key: string): Promise<"done" | "retrying"> {
    const log = siteLogger(this.log, op.site);
    try {
      const storage = await this.ctx.getStorage(op.site);
      const metadata = storeMetadata(op.metadata, op.fileSize);
      let deleteLocal = false;
      if (op.blob) {
        await storage.storeFileFromMemory(key, op.blob, metadata);
      } else if (this.ctx.localObjectPath(op.site, key) === path.resolve(op.localPath)) {
        // Legacy `object_storage: null`: the spool file already is the object; only (re)write it with
        // the store's sidecar so it becomes visible, and never delete it.
        await storage.storeFileFromMemory(key, await readFile(op.localPath), metadata);
      } else {
        await storage.storeFileFromDisk(key, op.localPath, metadata);
        deleteLocal = op.deleteAfterUpload ?? true;
      }
      if (deleteLocal) {
        try {
          await unlink(op.localPath);
          await unlink(`${op.localPath}.metadata`).catch(() => undefined);
        } catch (err) {
          log.error({ err }, `Problem deleting ${op.localPath} after upload`);
          this.ctx.metrics.unexpectedException(err, "handle_upload_unlink");
        }
      }
      this.repeatedErrors.clearPrefix(`upload:${op.site}:`);
      if (this.overLimit.delete(op) || this.overLimit.size === 0) {
        if (
          this.overLimit.size === 0 &&
          (await removeAlertFile(this.ctx.config.alert_file_dir, "upload_retries_warning"))
        ) {
          log.info("Uploads succeed again, removed alert file upload_retries_warning");
        }
      }
      return "done";
    } catch (err) {
      const retryNumber = (op.retryNumber ?? 0) + 1;
      op.retryNumber = retryNumber;
      // No stack trace, and the same error (per site) at most once a minute with a count: during an
      // outage a line per attempt would bury everything else.
      const reason = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
      const line = `Problem uploading ${op.localPath} to ${key}, need to retry (attempt ${retryNumber}): ${reason}`;
      const kind = err instanceof Error ? `${err.name}:${(err as NodeJS.ErrnoException).code ?? ""}` : "unknown";
      if (retryNumber > 1) this.ctx.metrics.unexpectedException(err, "handle_upload");
      this.repeatedErrors.log(`upload:${op.site}:${kind}`, line, (text) =>
        retryNumber > 1 ? log.error(text) : log.warn(text),
      );
      if (retryNumber > this.ctx.config.upload_retries_warning_limit) {
        this.overLimit.add(op);
        try {
          await createAlertFile(this.ctx.config.alert_file_dir, "upload_retries_warning");
        } catch (alertErr) {
          this.repeatedErrors.log(
            "alert:upload_retries_warning",
            "Could not create alert file upload_retries_warning",
            (text) => log.error({ err: alertErr }, text),
          );
        }
      }
      // Re-queue after the backoff without holding a worker, so other uploads keep flowing.
      this.backingOff++;
      const timer = setTimeout(
        () => {
          this.backoffTimers.delete(timer);
          this.backingOff--;
          if (this.ctx.transferQueue.isClosed) {
            // Shutdown: a spool file stays for the next start; an in-memory blob is re-sent by
            // PostgreSQL's next archive_command (it never got a 201).
            op.callback?.resolve({ success: false, error: err });
            this.overLimit.delete(op);
          } else {
            this.ctx.transferQueue.put(op);
          }
        },
        Math.min(0.5 * 2 ** (retryNumber - 1), 20) * 1000,
      );
      this.backoffTimers.add(timer);
      return "retrying";
    }
  }
}
