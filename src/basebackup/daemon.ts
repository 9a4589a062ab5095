/**
 * The daemon's basebackup part (operations.md §2 steps 5–6, §3, §4): a DaemonPlugin that, per
 * site and main-loop iteration, collects a finished backup, refreshes the listing and applies
 * retention (never while a backup runs), decides whether to start a new backup and starts it in
 * the background. Uploads go through the daemon's transfer agents (retries, statistics).
 */
import pg from "pg";
import type { Logger } from "pino";
import type { DaemonPlugin } from "../common/plugin.js";
import { nodeConnectionInfo } from "../config/connection.js";
import type { PghoardConfig, SiteConfig } from "../config/types.js";
import type { Metrics } from "../monitoring/index.js";
import type { StorageBackend } from "../storage/types.js";
import { runBasebackup } from "./index.js";
import type { ProgressState } from "./progress.js";
import type { BasebackupInfo } from "../catalog/index.js";
import { removeInterruptedBackupLeftovers } from "./leftovers.js";
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
  createAlert(name: "authentication_error" | "configuration_error" | "version_unsupported_error"): Promise<void>;
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
  /** When bytes done/uploaded last grew (pghoard.seconds_since_backup_progress_stalled). */
  lastProgressAt: number;
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

/** operations.md §3.4: server version from site `pg_version`, else queried and cached. */
async function serverVersion(
  ctx: BasebackupDaemonContext,
  site: string,
  siteConfig: SiteConfig,
  node: SiteConfig["nodes"][number],
): Promise<number | null> {
  if (typeof siteConfig.pg_version === "number" && siteConfig.pg_version) return siteConfig.pg_version;
  const info = nodeConnectionInfo(node);
  const client = new pg.Client({
    host: info.host ?? info.hostaddr,
    port: info.port ? Number(info.port) : undefined,
    user: info.user,
    password: info.password,
    database: info.dbname ?? "postgres",
    application_name: "pghoard",
  });
  try {
    await client.connect();
    const res = await client.query<{ server_version_num: string }>("SHOW server_version_num");
    const version = Number(res.rows[0].server_version_num);
    siteConfig.pg_version = version;
    return version;
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    ctx.log.warn(`${(err as Error).name} (${message}) connecting to DB of site ${site}`);
    const alert = /password authentication|authentication failed/.test(message)
      ? "authentication_error"
      : "configuration_error";
    await ctx.createAlert(alert).catch(() => undefined);
    return null;
  } finally {
    await client.end().catch(() => undefined);
  }
}

export function createBasebackupPlugin(ctx: BasebackupDaemonContext): DaemonPlugin<BasebackupSiteHandle> {
  const sites = new Map<string, SiteRuntime>();
  /** Store temp files older than this cannot be from an upload of this process. */
  const startedAt = new Date();
  const runtime = (site: string): SiteRuntime => {
    let r = sites.get(site);
    if (!r) {
      r = { backups: [], requests: new Map() };
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
    // Never called while a backup of the site runs, so every unfinished backup found is a leftover.
    try {
      await removeInterruptedBackupLeftovers({
        config: ctx.config,
        site: handle.site,
        siteConfig: handle.siteConfig,
        storage: await ctx.getStorage(handle.site),
        startedAt,
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
    request: { requested: boolean; ids: string[] },
  ): void {
    const site = handle.site;
    const abort = new AbortController();
    const running: RunningBackup = {
      lastProgressAt: Date.now(),
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
      storage: undefined as never, // replaced below once the storage client exists
      pool: ctx.pool,
      decision,
      // Whoever asked waits for it: no spread checkpoint (up to checkpoint_timeout) first.
      fastCheckpoint: request.requested,
      log: loggerFor(ctx, site),
      metrics: { gauge: (n, v, t) => ctx.metrics.gauge(n, v, t), increase: (n, v, t) => ctx.metrics.increase(n, v, t) },
      onProgress: (p) => {
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
    ctx.metrics.gauge("pghoard.backup_stream.basebackup_requested", 1, { site });
    running.promise = (async () => {
      try {
        bctx.storage = await ctx.getStorage(site);
        const result = await runBasebackup(bctx);
        running.success = true;
        recordRequests(r, request.ids, { status: "done", basebackup: result.name });
      } catch (err) {
        ctx.log.error({ err }, `Basebackup of site ${site} failed`);
        running.success = false;
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
      if (r.running) {
        if (!r.running.done) {
          ctx.metrics.gauge(
            "pghoard.seconds_since_backup_progress_stalled",
            Math.floor((Date.now() - r.running.lastProgressAt) / 1000),
          );
          return;
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
      start(handle, r, decision.metadata as unknown as Record<string, string>, pgVersion, node, {
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
    },
  };
}
