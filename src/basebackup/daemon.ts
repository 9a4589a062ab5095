/**
 * The daemon's basebackup part (operations.md §2 steps 5–6, §3, §4): a DaemonPlugin that, per
 * site and main-loop iteration, collects a finished backup, refreshes the listing and applies
 * retention (never while a backup runs), decides whether to start a new backup and starts it in
 * the background. Uploads go through the daemon's transfer agents (retries, statistics).
 */
import type { Logger } from "pino";
import type { DaemonPlugin } from "../common/plugin.js";
import { siteLogger } from "../common/logger.js";
import { RateLimitedLog } from "../common/rate_limited_log.js";
import { replicationConnectionInfo } from "../config/connection.js";
import { findPgBinary, pgMajorFromNumber } from "../config/pgbinary.js";
import type { PghoardConfig, SiteConfig } from "../config/types.js";
import { ExceptionWhere, MetricNames, type Metrics } from "../monitoring/index.js";
import type { StorageBackend } from "../storage/types.js";
import { connectionFailureAlert, ReplicationConnection, ReplicationError } from "../wal/replication.js";
import { ConfigError } from "../config/errors.js";
import { BackupFailure, runBasebackup } from "./index.js";
import type { ProgressState } from "./progress.js";
import type { BasebackupInfo } from "../catalog/index.js";
import type { DeltaReferenceCache } from "../catalog/orphans.js";
import { removeInterruptedBackupLeftovers } from "./leftovers.js";
import { PersistedProgress, PROGRESS_FILE, type ProgressKey } from "./persisted_progress.js";
import { basebackupStateEntry, refreshAndApplyRetention, type RetentionSite } from "./retention.js";
import { decideNewBackup, deltaBackoffAllows, recordBackupResult, type DeltaFailureInfo } from "./schedule.js";
import type { BasebackupContext, BasebackupLogger, BasebackupUploader, UploadRequest } from "./types.js";

const RETENTION_INTERVAL_MS = 300_000;

/** The parts of the daemon's context this plugin uses (the daemon's DaemonContext satisfies it). */
export interface BasebackupDaemonContext {
  config: PghoardConfig;
  readonly log: Logger;
  readonly metrics: Pick<Metrics, "gauge" | "increase" | "unexpectedException" | "siteHealth">;
  readonly pool: BasebackupContext["pool"];
  readonly hostname: string;
  /** Sites whose basebackup was requested over HTTP; this plugin consumes them. */
  readonly requestedBasebackupSites: Set<string>;
  /** Ids the HTTP PUT gave the pending requests of each site; this plugin reports their outcome. */
  readonly basebackupRequestIds?: Map<string, string[]>;
  /** Runs the main loop's next round now: a finished backup is collected and reported at once. */
  wakeMainLoop?: () => void;
  getStorage(site: string): Promise<StorageBackend>;
  /** Upload through the daemon's transfer agents; resolves once stored or failed. */
  upload(
    request: Omit<UploadRequest, "onProgress"> & { site: string; deleteAfterUpload: boolean },
  ): Promise<{ success: boolean; error?: unknown }>;
  createAlert(
    name: "authentication_error" | "configuration_error" | "version_unsupported_error" | "version_mismatch_error",
  ): Promise<void>;
}

/** The parts of the daemon's per-site handle this plugin uses. */
export interface BasebackupSiteHandle {
  site: string;
  siteConfig: SiteConfig;
  /** backup_sites.<site> of the state file. */
  state: { basebackups: unknown[] };
  /** True while the maintenance-mode file exists. */
  maintenanceMode(): boolean;
}

interface RunningBackup {
  /** When bytes done/uploaded last grew (pghoard.seconds_since_backup_progress_stalled before any persisted progress). */
  lastProgressAt: number;
  /** What the stall gauge measures: uploads, or (delta, before uploads start) the snapshot, tagged with its phase. */
  stallKey: ProgressKey;
  phaseTag?: string;
  promise: Promise<void>;
  done: boolean;
  success: boolean;
  abort: AbortController;
  latestActivity: Date;
  progress: ProgressState | null;
  /** The HTTP requests this backup answers. */
  requestIds: string[];
}

/** A request's outcome in the state file (`pg_basebackups.<site>.requests.<id>`), read by `request-basebackup --wait`. */
interface RequestRecord {
  status: "running" | "done" | "failed" | "not started";
  basebackup?: string;
  error?: string;
  updated_at: string;
}

/** Requests remembered per site (the oldest are dropped). */
const REQUESTS_KEPT = 20;

interface SiteRuntime {
  running?: RunningBackup;
  lastRefresh?: number;
  backups: BasebackupInfo[];
  deltaFailure?: DeltaFailureInfo;
  latestActivity?: Date;
  requests: Map<string, RequestRecord>;
  /** Delta manifests already read by the leftover clean-up. */
  deltaReferences: DeltaReferenceCache;
}

function recordRequests(r: SiteRuntime, ids: readonly string[], record: Omit<RequestRecord, "updated_at">): void {
  for (const id of ids) {
    r.requests.delete(id);
    r.requests.set(id, { ...record, updated_at: new Date().toISOString() });
  }
  for (const id of r.requests.keys()) {
    if (r.requests.size <= REQUESTS_KEPT) break;
    r.requests.delete(id);
  }
}

/** Routes basebackup files through the daemon's transfer queue and waits for the upload. */
class TransferQueueUploader implements BasebackupUploader {
  constructor(
    private readonly ctx: BasebackupDaemonContext,
    private readonly site: string,
  ) {}

  async upload(request: UploadRequest): Promise<void> {
    const result = await this.ctx.upload({
      site: this.site,
      filetype: request.filetype,
      localPath: request.localPath,
      objectName: request.objectName,
      metadata: request.metadata,
      fileSize: request.fileSize,
      deleteAfterUpload: true,
    });
    if (!result.success) throw new Error(`Upload of ${request.objectName} failed: ${String(result.error)}`);
    request.onProgress?.(request.fileSize);
  }
}

function loggerFor(ctx: BasebackupDaemonContext, site: string): BasebackupLogger {
  const log = ctx.log.child({ name: "PGBaseBackup", site });
  return {
    debug: (m) => log.debug(m),
    info: (m) => log.info(m),
    warn: (m) => log.warn(m),
    error: (m) => log.error(m),
  };
}

/** A server that stays unreachable: its connection error once a minute, with a count. */
const repeatedConnectErrors = new RateLimitedLog();

/**
 * operations.md §3.4: server version from site `pg_version`, else queried over a replication
 * connection (as pg_basebackup connects: a replication-only pg_hba.conf must work) and cached.
 * Null when the server cannot be reached (alert file raised) or the check failed unexpectedly.
 */
async function serverVersion(
  ctx: BasebackupDaemonContext,
  site: string,
  siteConfig: SiteConfig,
  node: SiteConfig["nodes"][number],
): Promise<number | null> {
  if (typeof siteConfig.pg_version === "number" && siteConfig.pg_version) return siteConfig.pg_version;
  let conn: ReplicationConnection | undefined;
  try {
    conn = await ReplicationConnection.connect({ connect_timeout: "10", ...replicationConnectionInfo(node) });
    const version = conn.serverVersion;
    repeatedConnectErrors.clearPrefix(`${site}:`);
    siteConfig.pg_version = version;
    return version;
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    if (err instanceof ReplicationError) {
      repeatedConnectErrors.log(
        `${site}:${message}`,
        `${err.name} (${message}) connecting to DB of site ${site}`,
        (text) => siteLogger(ctx.log, site).warn(text),
      );
      await ctx.createAlert(connectionFailureAlert(message)).catch(() => undefined);
    } else {
      siteLogger(ctx.log, site).error({ err }, `Problem in getting PG server version of site ${site}`);
      ctx.metrics.unexpectedException(err, ExceptionWhere.CHECK_PG_SERVER_VERSION);
    }
    return null;
  } finally {
    await conn?.close().catch(() => undefined);
  }
}

/**
 * operations.md §3.4: the pg_basebackup binary's major version must match the server's, else
 * alert `version_mismatch_error` and no backup. Checked for the modes that run pg_basebackup and
 * whenever `pg_basebackup_path` is set; returns the binary's path, null to skip the backup, or
 * undefined when the mode does not need the binary.
 */
async function checkPgBasebackupVersion(
  ctx: BasebackupDaemonContext,
  site: string,
  siteConfig: SiteConfig,
  serverVersionNum: number,
): Promise<string | null | undefined> {
  const needed = siteConfig.basebackup_mode === "basic" || siteConfig.basebackup_mode === "pipe";
  if (!needed && !siteConfig.pg_basebackup_path) return undefined;
  let binary: { path: string; version: number };
  try {
    binary = await findPgBinary(siteConfig, "pg_basebackup", {
      wantedMajor: pgMajorFromNumber(serverVersionNum),
      siteName: site,
    });
  } catch (err) {
    if (!needed) return undefined;
    siteLogger(ctx.log, site).error(`${(err as Error).message}; created alert file configuration_error`);
    await ctx.createAlert("configuration_error").catch(() => undefined);
    return null;
  }
  if (Math.floor(binary.version / 100) !== Math.floor(serverVersionNum / 100)) {
    siteLogger(ctx.log, site).error(
      `Site ${site}: server version ${serverVersionNum} does not match pg_basebackup version ${binary.version} (${binary.path}); created alert file version_mismatch_error`,
    );
    await ctx.createAlert("version_mismatch_error").catch(() => undefined);
    return null;
  }
  return binary.path;
}

export function createBasebackupPlugin(ctx: BasebackupDaemonContext): DaemonPlugin<BasebackupSiteHandle> {
  const sites = new Map<string, SiteRuntime>();
  /** Store temp files older than this cannot be from an upload of this process. */
  const startedAt = new Date();
  let persisted: PersistedProgress | null = null;
  let persistDirty = false;
  let lastPersistWrite = 0;

  async function progressStore(): Promise<PersistedProgress> {
    persisted ??= await PersistedProgress.read(PersistedProgress.path(), (err) => {
      ctx.log.warn(`Could not read ${PROGRESS_FILE}: ${err instanceof Error ? err.message : String(err)}`);
      ctx.metrics.unexpectedException(err, ExceptionWhere.READ_PERSISTED_PROGRESS);
    });
    return persisted;
  }

  let persistWriting: Promise<void> = Promise.resolve();
  let persistWarned = false;

  /** Writes the progress file when it changed, at most once a second unless forced; writes never overlap. */
  function persistProgress(force: boolean): Promise<void> {
    const store = persisted;
    if (!store || !(persistDirty || force)) return persistWriting;
    if (!force && Date.now() - lastPersistWrite < 1000) return persistWriting;
    persistDirty = false;
    lastPersistWrite = Date.now();
    persistWriting = persistWriting.then(async () => {
      try {
        await store.write();
      } catch (err) {
        // Once as a warning (e.g. an unwritable working directory repeats every second), then debug.
        const message = `Could not write ${PROGRESS_FILE}: ${err instanceof Error ? err.message : String(err)}`;
        if (persistWarned) ctx.log.debug(message);
        else ctx.log.warn(message);
        persistWarned = true;
        ctx.metrics.unexpectedException(err, ExceptionWhere.WRITE_PERSISTED_PROGRESS);
      }
    });
    return persistWriting;
  }

  /** Feeds the persisted progress from the running backup's progress (upstream's upload progress tracker). */
  function trackProgress(running: RunningBackup, p: ProgressState): void {
    const store = persisted;
    if (!store) return;
    const prev = running.progress;
    const uploadedGrowth = p.bytes_uploaded - (prev?.bytes_uploaded ?? 0);
    if (uploadedGrowth > 0) {
      running.stallKey = "total_bytes_uploaded";
      running.phaseTag = undefined;
      const info = store.get("total_bytes_uploaded");
      if (store.advance("total_bytes_uploaded", info.current_progress + uploadedGrowth)) {
        persistDirty = true;
        void persistProgress(false);
        ctx.metrics.gauge(MetricNames.SECONDS_SINCE_BACKUP_PROGRESS_STALLED, 0);
      }
    } else if (p.mode === "delta" && p.bytes_uploaded === 0) {
      // Before a delta backup uploads anything it snapshots and hashes the files (upstream's snapshot progress).
      running.stallKey = "snapshot_progress";
      running.phaseTag = p.phase;
      if (store.advance("snapshot_progress", p.bytes_done)) {
        persistDirty = true;
        void persistProgress(false);
        ctx.metrics.gauge(MetricNames.SECONDS_SINCE_BACKUP_PROGRESS_STALLED, 0, { phase: p.phase });
      }
    }
  }

  /** pghoard.seconds_since_backup_progress_stalled for the running backup, or for one a restart interrupted. */
  function emitStalled(running: RunningBackup | undefined): void {
    const store = persisted;
    if (running) {
      const fromStore = store?.stalledSeconds(running.stallKey) ?? null;
      const seconds = fromStore ?? (Date.now() - running.lastProgressAt) / 1000;
      const tags =
        running.stallKey === "snapshot_progress" && running.phaseTag ? { phase: running.phaseTag } : undefined;
      ctx.metrics.gauge(MetricNames.SECONDS_SINCE_BACKUP_PROGRESS_STALLED, Math.floor(seconds), tags);
      return;
    }
    // Progress left by a backup that did not complete (success resets it): its stall keeps counting.
    const latest = store?.latest();
    if (latest) {
      ctx.metrics.gauge(
        MetricNames.SECONDS_SINCE_BACKUP_PROGRESS_STALLED,
        Math.floor(store!.stalledSeconds(latest.key) ?? 0),
      );
    }
  }

  const runtime = (site: string): SiteRuntime => {
    let r = sites.get(site);
    if (!r) {
      r = { backups: [], requests: new Map(), deltaReferences: new Map() };
      sites.set(site, r);
    }
    return r;
  };

  async function retentionSites(site: string, siteConfig: SiteConfig): Promise<RetentionSite[]> {
    const names = [site, ...(siteConfig.moved_from ?? [])];
    const result: RetentionSite[] = [];
    for (const name of [...new Set(names)]) {
      const config = ctx.config.backup_sites[name];
      if (!config) continue;
      result.push({ name, config: name === site ? siteConfig : config, storage: await ctx.getStorage(name) });
    }
    return result;
  }

  async function refresh(handle: BasebackupSiteHandle, r: SiteRuntime): Promise<void> {
    const log = loggerFor(ctx, handle.site);
    // Never called while a backup of the site runs, so every unfinished backup found is a leftover;
    // a backup of another site with the same prefix (same spool and store directories) defers it.
    const sharedBusy = [...sites].some(
      ([name, other]) =>
        name !== handle.site &&
        other.running !== undefined &&
        !other.running.done &&
        ctx.config.backup_sites[name]?.prefix === handle.siteConfig.prefix,
    );
    try {
      if (!sharedBusy)
        await removeInterruptedBackupLeftovers({
          config: ctx.config,
          site: handle.site,
          siteConfig: handle.siteConfig,
          storage: await ctx.getStorage(handle.site),
          startedAt,
          deltaReferenceCache: r.deltaReferences,
          log,
        });
    } catch (err) {
      log.warn(
        `Could not remove what interrupted basebackups left: ${err instanceof Error ? err.message : String(err)}`,
      );
    }
    const result = await refreshAndApplyRetention({
      sites: await retentionSites(handle.site, handle.siteConfig),
      deps: {
        log,
        metrics: {
          gauge: (n, v, t) => ctx.metrics.gauge(n, v, t),
          increase: (n, v, t) => ctx.metrics.increase(n, v, t),
          unexpectedException: (e, w) => ctx.metrics.unexpectedException(e, w),
        },
      },
    });
    r.backups = result.remaining;
    // Oldest restorable point and time since the newest backup (monitoring's per-site health gauges).
    ctx.metrics.siteHealth.backupsListed(
      handle.site,
      result.remaining.map((b) => ({ startTime: b.startTime, endTime: b.metadata["end-time"] ?? null })),
    );
    r.lastRefresh = Date.now();
    handle.state.basebackups = result.remaining.filter((b) => b.site === handle.site).map(basebackupStateEntry);
  }

  function start(
    handle: BasebackupSiteHandle,
    r: SiteRuntime,
    decision: Record<string, string>,
    pgVersion: number,
    node: SiteConfig["nodes"][number],
    pgBasebackupPath: string | undefined,
    request: { requested: boolean; ids: string[] },
  ): void {
    const site = handle.site;
    const abort = new AbortController();
    const running: RunningBackup = {
      lastProgressAt: Date.now(),
      stallKey: "total_bytes_uploaded",
      promise: Promise.resolve(),
      done: false,
      success: false,
      abort,
      latestActivity: new Date(),
      progress: null,
      requestIds: request.ids,
    };
    const bctx: BasebackupContext = {
      config: ctx.config,
      site,
      node,
      pgVersion,
      ...(pgBasebackupPath ? { pgBasebackupPath } : {}),
      storage: undefined as never, // replaced below once the storage client exists
      pool: ctx.pool,
      decision,
      // Whoever asked waits for it: no spread checkpoint (up to checkpoint_timeout) first.
      fastCheckpoint: request.requested,
      log: loggerFor(ctx, site),
      metrics: { gauge: (n, v, t) => ctx.metrics.gauge(n, v, t), increase: (n, v, t) => ctx.metrics.increase(n, v, t) },
      onProgress: (p) => {
        try {
          trackProgress(running, p);
        } catch (err) {
          // The progress tracking failed, not the backup (upstream's progress tracker thread failure).
          ctx.log.error({ err }, "Failed to track basebackup progress");
          ctx.metrics.increase(MetricNames.TRANSFER_OPERATION_ERRORS);
        }
        if (
          !running.progress ||
          p.bytes_done > running.progress.bytes_done ||
          p.bytes_uploaded > running.progress.bytes_uploaded
        ) {
          running.lastProgressAt = Date.now();
        }
        running.progress = p;
        running.latestActivity = new Date();
        if (request.ids.length && !r.requests.get(request.ids[0])?.basebackup)
          recordRequests(r, request.ids, { status: "running", basebackup: p.name });
      },
      signal: abort.signal,
      uploader: new TransferQueueUploader(ctx, site),
      listBasebackups: async () => r.backups,
      hostname: ctx.hostname,
    };
    ctx.metrics.gauge(MetricNames.BASEBACKUP_REQUESTED, 1, { site });
    // A new backup snapshots from scratch; uploaded bytes keep adding up (as upstream).
    if (persisted?.progress.snapshot_progress) {
      delete persisted.progress.snapshot_progress;
      persistDirty = true;
    }
    running.promise = (async () => {
      try {
        bctx.storage = await ctx.getStorage(site);
        const result = await runBasebackup(bctx);
        running.success = true;
        recordRequests(r, request.ids, { status: "done", basebackup: result.name });
      } catch (err) {
        running.success = false;
        if (err instanceof BackupFailure || err instanceof ConfigError || abort.signal.aborted) {
          // An expected failure (already logged by runBasebackup): no stack trace, no exception metric.
          ctx.log.error(`Basebackup of site ${site} failed: ${err instanceof Error ? err.message : String(err)}`);
        } else {
          ctx.log.error({ err }, `Basebackup of site ${site} unexpectedly failed`);
          ctx.metrics.unexpectedException(err, ExceptionWhere.PG_BASE_BACKUP);
        }
        recordRequests(r, request.ids, {
          status: "failed",
          basebackup: running.progress?.name,
          error: err instanceof Error ? err.message : String(err),
        });
      } finally {
        running.done = true;
        running.latestActivity = new Date();
        ctx.wakeMainLoop?.();
      }
    })();
    r.running = running;
    recordRequests(r, request.ids, { status: "running" });
  }

  return {
    name: "basebackup",

    async handleSite(handle: BasebackupSiteHandle): Promise<void> {
      const { site, siteConfig } = handle;
      const r = runtime(site);
      await progressStore();
      try {
        emitStalled(r.running && !r.running.done ? r.running : undefined);
        await persistProgress(false);
      } catch (err) {
        ctx.log.error({ err }, "Failed to check basebackup progress");
        ctx.metrics.increase(MetricNames.TRANSFER_OPERATION_ERRORS);
      }
      if (r.running) {
        if (!r.running.done) return;
        if (r.running.success && persisted) {
          persisted.resetAll();
          await persistProgress(true);
        }
        r.deltaFailure = recordBackupResult(r.deltaFailure, r.running.success, siteConfig.basebackup_mode, new Date());
        r.latestActivity = r.running.latestActivity;
        r.running = undefined;
        await refresh(handle, r);
      } else if (r.lastRefresh === undefined || Date.now() - r.lastRefresh > RETENTION_INTERVAL_MS) {
        await refresh(handle, r);
      }

      const requested = ctx.requestedBasebackupSites.has(site);
      const now = new Date();
      const decision = decideNewBackup({ site, settings: siteConfig, backups: r.backups, now, requested });
      if (requested) ctx.requestedBasebackupSites.delete(site);
      const requestIds = ctx.basebackupRequestIds?.get(site) ?? [];
      ctx.basebackupRequestIds?.delete(site);
      const notStarted = (error: string): void => recordRequests(r, requestIds, { status: "not started", error });
      if (!decision.metadata) return notStarted(decision.message);
      const log = loggerFor(ctx, site);
      if (handle.maintenanceMode()) {
        log.info("Maintenance mode file exists, not starting a basebackup");
        return notStarted("maintenance mode file exists");
      }
      const backoff = deltaBackoffAllows({ failure: r.deltaFailure, settings: siteConfig, now, requested });
      if (!backoff.allowed) {
        log.info(backoff.message);
        return notStarted(backoff.message);
      }
      log.info(decision.message);
      if (siteConfig.nodes.length === 0) throw new Error(`Site ${site} has no nodes`);
      const node = siteConfig.nodes[Math.floor(Math.random() * siteConfig.nodes.length)];
      const pgVersion = await serverVersion(ctx, site, siteConfig, node);
      if (pgVersion === null) {
        ctx.metrics.increase("pghoard.basebackup_failed");
        return notStarted("could not connect to PostgreSQL to read its version (see the daemon log)");
      }
      if (!pgVersion) {
        await ctx.createAlert("version_unsupported_error").catch(() => undefined);
        return notStarted("unsupported PostgreSQL version");
      }
      const pgBasebackupPath = await checkPgBasebackupVersion(ctx, site, siteConfig, pgVersion);
      if (pgBasebackupPath === null) return notStarted("pg_basebackup version mismatch");
      start(handle, r, decision.metadata as unknown as Record<string, string>, pgVersion, node, pgBasebackupPath, {
        requested,
        ids: requestIds,
      });
    },

    writeState(state: Record<string, unknown>): void {
      const entries: Record<string, unknown> = {};
      for (const [site, r] of sites) {
        const activity = r.running?.latestActivity ?? r.latestActivity;
        if (!activity && !r.running && !r.requests.size) continue;
        entries[site] = {
          latest_activity: (activity ?? new Date()).toISOString(),
          running: r.running !== undefined,
          ...(r.running?.progress ? { progress: r.running.progress } : {}),
          ...(r.requests.size ? { requests: Object.fromEntries(r.requests) } : {}),
        };
      }
      state.pg_basebackups = entries;
    },

    async stop(graceful: boolean): Promise<void> {
      const running = [...sites.values()]
        .map((r) => r.running)
        .filter((x): x is RunningBackup => x !== undefined && !x.done);
      for (const b of running) b.abort.abort();
      const wait = Promise.all(running.map((b) => b.promise));
      await Promise.race([wait, new Promise((resolve) => setTimeout(resolve, graceful ? 10_000 : 1000).unref())]);
      if (persistDirty) await persistProgress(true);
    },
  };
}
