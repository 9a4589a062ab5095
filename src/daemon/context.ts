/**
 * State shared by the daemon's parts. `config` is replaced on SIGHUP; every part reads
 * `ctx.config` when it needs a value, so a reload takes effect everywhere (as upstream assigns the
 * new dict to every thread). Storage clients are created lazily per site and dropped on reload.
 */
import { hostname } from "node:os";
import path from "node:path";
import type { Logger } from "pino";
import type { PghoardConfig, SiteConfig } from "../config/types.js";
import { FileFormatPool } from "../fileformat/index.js";
import { createStorage } from "../storage/index.js";
import type { StorageBackend } from "../storage/types.js";
import type { Metrics } from "../monitoring/index.js";
import { deferred } from "../common/async.js";
import { ConditionAlert, createAlertFile, removeAlertFile, type AlertName } from "./alerts.js";
import { AsyncQueue } from "./queue.js";
import { siteSpoolPaths, type SiteSpoolPaths } from "./spool.js";
import type {
  CompressionEvent,
  DownloadOp,
  ListOp,
  MetadataOp,
  TransferOp,
  TransferResult,
  UploadOp,
} from "./types.js";

/** What `archive()` takes: a CompressionEvent; the context supplies the callback. */
export type ArchiveRequest = Omit<CompressionEvent, "callback">;
/** What `upload()` takes: an UploadOp; the context supplies type and callback. */
export type UploadRequest = Omit<UploadOp, "type" | "callback" | "retryNumber">;
/** What `transfer()` takes: a download, metadata lookup or listing without its callback. */
export type TransferRequest = Omit<DownloadOp, "callback"> | Omit<MetadataOp, "callback"> | Omit<ListOp, "callback">;

export class DaemonContext {
  config: PghoardConfig;
  metrics: Metrics;
  readonly log: Logger;
  readonly compressionQueue = new AsyncQueue<CompressionEvent>();
  readonly transferQueue = new AsyncQueue<TransferOp>();
  /** Sites whose basebackup was requested over HTTP; consumed by the basebackup scheduler hook. */
  readonly requestedBasebackupSites = new Set<string>();
  /** Ids the PUT answered for the pending requests of each site (several PUTs before a round share one backup). */
  readonly basebackupRequestIds = new Map<string, string[]>();
  /** Runs the main loop's next round now (a requested basebackup starts without waiting up to 5 s). */
  wakeMainLoop: () => void = () => undefined;
  readonly hostname = hostname();
  /** Aborted when a worker hits an unrecoverable failure; the main loop then quits (operations.md §1). */
  readonly criticalFailure = new AbortController();
  /** Set by the compressors: hands an already-compressed xlog_incoming segment to the WAL file deleter. */
  compressionDeleter: ((fullPath: string) => void) | undefined;
  /** The state file as it was when the daemon started (walreceiver resumes from it). */
  previousState: Record<string, unknown> = {};
  /** `disk_full_error`: raised by pg_receivewal's messages and by the compressors, one file for both. */
  readonly diskFullAlert: ConditionAlert;
  private storages = new Map<string, Promise<StorageBackend>>();
  private retiredStorages: Array<Promise<StorageBackend>> = [];

  constructor(
    config: PghoardConfig,
    metrics: Metrics,
    log: Logger,
    readonly pool: FileFormatPool,
  ) {
    this.config = config;
    this.metrics = metrics;
    this.log = log;
    this.diskFullAlert = new ConditionAlert(() => this.config.alert_file_dir, "disk_full_error");
  }

  /**
   * Compress (and encrypt) a WAL/history file and upload it through the compressors and transfer
   * agents; resolves with the upload result (or the compression failure).
   */
  archive(request: ArchiveRequest): Promise<TransferResult> {
    const callback = deferred<TransferResult>();
    this.compressionQueue.put({ ...request, callback });
    return callback.promise;
  }

  /** Upload an already encoded file or blob through the transfer agents (retries, statistics). */
  upload(request: UploadRequest): Promise<TransferResult> {
    const callback = deferred<TransferResult>();
    this.transferQueue.put({ type: "UPLOAD", ...request, callback });
    return callback.promise;
  }

  /** A download, metadata lookup or listing through the transfer agents; resolves with its result. */
  transfer(request: TransferRequest): Promise<TransferResult> {
    const callback = deferred<TransferResult>();
    this.transferQueue.put({ ...request, callback });
    return callback.promise;
  }

  /** Creates `<alert_file_dir>/<name>` (operations.md §8). */
  createAlert(name: AlertName): Promise<void> {
    return createAlertFile(this.config.alert_file_dir, name);
  }

  /** Removes the alert file; true when one was there. */
  removeAlert(name: AlertName): Promise<boolean> {
    return removeAlertFile(this.config.alert_file_dir, name);
  }

  site(site: string): SiteConfig {
    const siteConfig = this.config.backup_sites[site];
    if (!siteConfig) throw new Error(`Unknown site '${site}'`);
    return siteConfig;
  }

  get backupLocation(): string {
    // loadConfig for the daemon rejects a null backup_location; keep a clear error if it ever is.
    if (!this.config.backup_location) throw new Error("backup_location is not set");
    return this.config.backup_location;
  }

  spoolPaths(site: string): SiteSpoolPaths {
    return siteSpoolPaths(this.backupLocation, this.site(site).prefix);
  }

  /** Storage client of a site, created on first use. */
  getStorage(site: string): Promise<StorageBackend> {
    let storage = this.storages.get(site);
    if (!storage) {
      storage = createStorage(this.site(site).object_storage);
      // A failed creation must not be cached forever.
      storage.catch(() => {
        if (this.storages.get(site) === storage) this.storages.delete(site);
      });
      this.storages.set(site, storage);
    }
    return storage;
  }

  /**
   * Absolute path a `local` store would use for `key`, when the site's store is the legacy
   * `object_storage: null` one rooted at `backup_location` (so spool files are the objects).
   */
  localObjectPath(site: string, key: string): string | null {
    const os = this.site(site).object_storage;
    if (os.storage_type !== "local") return null;
    return path.resolve(os.directory, os.prefix ?? "", key);
  }

  /** New config: later storage requests create fresh clients; the old ones are closed at shutdown. */
  replaceConfig(config: PghoardConfig): void {
    this.config = config;
    this.retiredStorages.push(...this.storages.values());
    this.storages.clear();
  }

  async closeStorages(): Promise<void> {
    const all = [...this.storages.values(), ...this.retiredStorages];
    this.storages.clear();
    this.retiredStorages = [];
    for (const storage of all) {
      try {
        await (await storage).close();
      } catch {
        // creation failed or close failed: nothing left to release
      }
    }
  }
}
