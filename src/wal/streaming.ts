/**
 * The daemon plugin for WAL streaming (operations.md §2 steps 3–4, §6.1, §6.2, §8, §11): per active
 * site it runs pg_receivewal (`pg_receivexlog` mode) with a watcher on `xlog_incoming`, or the
 * built-in walreceiver (`walreceiver` mode), restarting either with a backoff when it ends.
 *
 * Before starting, the server is checked as upstream does for pg_basebackup and pg_receivewal
 * (§3.4): connection failures raise `authentication_error` / `configuration_error`, an unknown
 * server version `version_unsupported_error`, a pg_receivewal of another major version
 * `version_mismatch_error`. Unlike upstream, an alert this plugin raised is removed again once the
 * same check passes, so the alert directory reflects the current state.
 */
import { readdir, stat } from "node:fs/promises";
import path from "node:path";
import type { Logger } from "pino";
import { siteLogger } from "../common/logger.js";
import { RateLimitedLog } from "../common/rate_limited_log.js";
import type { DaemonPlugin } from "../common/plugin.js";
import {
  ConfigError,
  connectionStringUsingPgpass,
  findPgBinary,
  nodeSlot,
  pgMajorFromNumber,
  replicationConnectionInfo,
  type NodeConfig,
  type PghoardConfig,
  type SiteConfig,
} from "../config/index.js";
import { walKey } from "../catalog/index.js";
import { StorageNotFoundError, type StorageBackend } from "../storage/types.js";
import {
  findReceiversWritingTo,
  NO_SPACE_LINE,
  fullDiskSegmentAfter,
  paddedPartialShowsSpaceBack,
  showsSpaceBack,
  PgReceiveXlog,
  removeCopiesUpTo,
  repairPartialFiles,
  STUCK_PARTIAL_LINE,
  terminateLeftoverReceiver,
} from "./receivexlog.js";
import { connectionFailureAlert, ReplicationConnection } from "./replication.js";
import { SpoolWatcher } from "./spool_watcher.js";
import { isWalName, WAL_SEG_SIZE } from "./names.js";
import { verifyWalHeader } from "./verify.js";
import { WalReceiver, type WalSink } from "./walreceiver.js";

/** Names a site's pg_receivewal as a reporter of the shared `disk_full_error` alert. */
function diskFullReporter(site: string): string {
  return `pg_receivewal:${site}`;
}

/** The alerts the server checks raise (and remove again). */
type AlertName =
  "authentication_error" | "configuration_error" | "version_unsupported_error" | "version_mismatch_error";

/** A WAL or history file for the daemon's compressors (its CompressionEvent without the callback). */
export interface WalArchiveRequest {
  site: string;
  filetype: "xlog" | "timeline";
  /** Names the file; with `inputData` nothing is read from or written to it. */
  fullPath: string;
  inputData: Buffer;
  compressToMemory: true;
  deleteFileAfterCompression: false;
  /** An incomplete segment, stored as `<name>.partial` (its header is checked here, before queueing). */
  partial?: boolean;
}

/** The parts of the daemon's context this plugin uses (the daemon's DaemonContext satisfies it). */
export interface WalStreamingContext {
  config: PghoardConfig;
  readonly log: Logger;
  readonly metrics: { unexpectedException(err: unknown, where: string): void };
  /** The state file as it was when the daemon started (walreceiver resumes from it). */
  previousState: Record<string, unknown>;
  site(site: string): SiteConfig;
  spoolPaths(site: string): { xlogIncoming: string; xlog: string; timeline: string };
  getStorage(site: string): Promise<StorageBackend>;
  /** Compress (and encrypt) and upload; resolves once stored or failed. */
  archive(request: WalArchiveRequest): Promise<{ success: boolean; error?: unknown }>;
  createAlert(name: AlertName): Promise<void>;
  /** True when an alert file was there. */
  removeAlert(name: AlertName): Promise<boolean>;
  /**
   * `disk_full_error`, shared with the compressors: present while any reporter says the disk is
   * full; one an earlier run left goes at the first clear.
   */
  diskFullAlert: {
    /** True when this reporter had not raised it yet. */
    raise(reporter: string): Promise<boolean>;
    clear(reporter: string): Promise<boolean>;
  };
}

/** The parts of the daemon's per-site handle this plugin uses. */
export interface WalStreamingSiteHandle {
  site: string;
  siteConfig: SiteConfig;
  spool: { xlogIncoming: string };
  /** Compress and upload a completed file of xlog_incoming; the source is deleted afterwards. */
  queueIncomingFile(fullPath: string): void;
}
/** Restart delays after consecutive failures: 5, 10, 20, 40, 60, 60 … s. */
const MAX_BACKOFF_MS = 60_000;
/** A run at least this long resets the backoff. */
const HEALTHY_RUN_MS = 60_000;

export interface StreamingTestHooks {
  /** walreceiver: idle time before an incomplete segment is stored as `.partial`. */
  partialIntervalMs?: number;
}

class SiteStreaming {
  mode: "pg_receivexlog" | "walreceiver" | null = null;
  handle: WalStreamingSiteHandle | null = null;
  watcher: SpoolWatcher | null = null;
  receivexlog: PgReceiveXlog | null = null;
  walreceiver: WalReceiver | null = null;
  walreceiverRun: Promise<void> | null = null;
  walreceiverStartedAt = 0;
  latestActivity = new Date();
  lastFlushedLsn: bigint | null = null;
  failures = 0;
  nextStartAt = 0;
  starting = false;
  /** xlog_incoming names already handed to the compressors (kept across watcher restarts). */
  readonly reportedIncoming = new Set<string>();
  watcherStarted = false;
  /** Alerts this plugin created and has not removed yet. */
  raisedAlerts = new Set<AlertName>();
  /**
   * The segment pg_receivewal could not write for a full disk ("" when its message named none):
   * only that segment or a later one arriving shows space is back. One it had allocated before the
   * disk filled up still completes meanwhile, and must not remove the alert just raised.
   */
  fullDiskSegment: string | null = null;

  constructor(readonly site: string) {}
}

class CheckFailed extends Error {}

export class WalStreamingPlugin implements DaemonPlugin<WalStreamingSiteHandle> {
  readonly name = "wal-streaming";
  private readonly sites = new Map<string, SiteStreaming>();
  /** A server that stays unreachable: its connection error once a minute, with a count. */
  private readonly repeatedErrors = new RateLimitedLog();
  private stopped = false;

  constructor(
    private readonly ctx: WalStreamingContext,
    private readonly hooks: StreamingTestHooks = {},
  ) {}

  private get log(): Logger {
    return this.ctx.log;
  }

  private siteState(site: string): SiteStreaming {
    let state = this.sites.get(site);
    if (!state) {
      state = new SiteStreaming(site);
      const previous = (
        this.ctx.previousState.walreceivers as Record<string, { last_flushed_lsn?: unknown }> | undefined
      )?.[site];
      const lsn = previous?.last_flushed_lsn;
      if (typeof lsn === "number" && Number.isSafeInteger(lsn) && lsn >= 0) state.lastFlushedLsn = BigInt(lsn);
      this.sites.set(site, state);
    }
    return state;
  }

  async handleSite(handle: WalStreamingSiteHandle): Promise<void> {
    if (this.stopped) return;
    const state = this.siteState(handle.site);
    state.handle = handle;
    const mode = handle.siteConfig.active_backup_mode;
    const wanted = mode === "pg_receivexlog" ? "pg_receivexlog" : mode === "walreceiver" ? "walreceiver" : null;
    if (state.mode !== wanted) {
      await this.stopSite(state);
      state.mode = wanted;
      state.failures = 0;
      state.nextStartAt = 0;
    }
    if (wanted === "pg_receivexlog") await this.ensureReceiveXlog(state, handle);
    else if (wanted === "walreceiver") await this.ensureWalReceiver(state, handle);
  }

  writeState(state: Record<string, unknown>): void {
    const receivexlogs = (state.pg_receivexlogs ?? {}) as Record<string, unknown>;
    const walreceivers = (state.walreceivers ?? {}) as Record<string, unknown>;
    for (const [site, s] of this.sites) {
      if (s.mode === "pg_receivexlog") {
        receivexlogs[site] = {
          latest_activity: s.receivexlog?.latestActivity ?? s.latestActivity,
          running: s.receivexlog?.isRunning ?? false,
        };
      } else if (s.mode === "walreceiver") {
        const lsn = s.walreceiver?.lastFlushedLsn ?? s.lastFlushedLsn;
        walreceivers[site] = {
          latest_activity: s.walreceiver?.latestActivity ?? s.latestActivity,
          running: s.walreceiver !== null,
          last_flushed_lsn: lsn === null ? null : Number(lsn),
        };
      }
    }
    state.pg_receivexlogs = receivexlogs;
    state.walreceivers = walreceivers;
  }

  configReloaded(): void {
    // Sites that were removed or deactivated no longer get handleSite calls: stop their receivers.
    for (const [site, state] of this.sites) {
      const siteConfig = this.ctx.config.backup_sites[site];
      if (!siteConfig || !siteConfig.active) void this.stopSite(state);
    }
    // A new disk limit is applied to a running pg_receivewal right away.
    for (const state of this.sites.values()) void state.receivexlog?.checkDiskSpace(true);
  }

  async stop(graceful: boolean): Promise<void> {
    this.stopped = true;
    await Promise.all([...this.sites.values()].map((s) => this.stopSite(s, graceful ? 60_000 : 1000)));
  }

  private async stopSite(state: SiteStreaming, waitMs = 60_000): Promise<void> {
    if (state.receivexlog) {
      const rx = state.receivexlog;
      state.receivexlog = null;
      await rx.stop();
    }
    // After the child is gone: a last scan hands over what it completed while stopping.
    if (state.watcher) {
      const watcher = state.watcher;
      state.watcher = null;
      await watcher.scan();
      watcher.stop();
    }
    if (state.walreceiver) {
      const wr = state.walreceiver;
      const run = state.walreceiverRun;
      // Cleared first: walreceiverEnded then knows this end was asked for.
      state.walreceiver = null;
      state.walreceiverRun = null;
      wr.stop();
      if (run) await Promise.race([run, new Promise((r) => setTimeout(r, waitMs).unref())]);
      state.lastFlushedLsn = wr.lastFlushedLsn;
    }
  }

  /** Still wanted after an asynchronous start-up step (no shutdown, mode change or deactivation meanwhile)? */
  private wanted(state: SiteStreaming, mode: SiteStreaming["mode"]): boolean {
    return !this.stopped && state.mode === mode && this.ctx.config.backup_sites[state.site]?.active === true;
  }

  private scheduleRestart(state: SiteStreaming, ranMs: number): void {
    if (ranMs >= HEALTHY_RUN_MS) state.failures = 0;
    state.failures += 1;
    const delay = Math.min(5000 * 2 ** (state.failures - 1), MAX_BACKOFF_MS);
    state.nextStartAt = Date.now() + delay;
    siteLogger(this.log, state.site).info(`Site ${state.site}: restarting ${state.mode} in ${delay / 1000} s`);
  }

  private pickNode(siteConfig: SiteConfig, site: string): NodeConfig {
    const nodes = siteConfig.nodes ?? [];
    if (nodes.length === 0) throw new ConfigError(`Site '${site}': no nodes configured`);
    return nodes[Math.floor(Math.random() * nodes.length)] as NodeConfig;
  }

  private async raise(state: SiteStreaming, alert: AlertName): Promise<void> {
    await this.ctx.createAlert(alert);
    state.raisedAlerts.add(alert);
  }

  private async clearAlerts(state: SiteStreaming, alerts: AlertName[]): Promise<void> {
    for (const alert of alerts) {
      if (!state.raisedAlerts.has(alert)) continue;
      state.raisedAlerts.delete(alert);
      if (await this.ctx.removeAlert(alert)) {
        siteLogger(this.log, state.site).info(
          `Site ${state.site}: the condition behind alert ${alert} is gone, removed the alert file`,
        );
      }
    }
  }

  /** Connects over replication and checks the server version; returns it (and caches it in the site config). */
  private async checkServer(state: SiteStreaming, siteConfig: SiteConfig, node: NodeConfig): Promise<number> {
    let conn: ReplicationConnection;
    try {
      conn = await ReplicationConnection.connect(replicationConnectionInfo(node));
    } catch (err) {
      const message = (err as Error).message;
      const alert = connectionFailureAlert(message);
      this.repeatedErrors.log(
        `${state.site}:connect:${message}`,
        `Site ${state.site}: connection to PostgreSQL for the ${state.mode} version check failed: ${message}; created alert file ${alert}`,
        (text) => siteLogger(this.log, state.site).error(text),
      );
      await this.raise(state, alert);
      throw new CheckFailed(message);
    }
    let version: number;
    try {
      version = siteConfig.pg_version ?? conn.serverVersion;
    } finally {
      await conn.close();
    }
    await this.clearAlerts(state, ["authentication_error", "configuration_error"]);
    this.repeatedErrors.clearPrefix(`${state.site}:connect:`);
    if (!version || version < 90300) {
      siteLogger(this.log, state.site).error(
        `Site ${state.site}: unsupported PostgreSQL server version ${version}; created alert file version_unsupported_error`,
      );
      await this.raise(state, "version_unsupported_error");
      throw new CheckFailed(`unsupported server version ${version}`);
    }
    await this.clearAlerts(state, ["version_unsupported_error"]);
    siteConfig.pg_version = version;
    return version;
  }

  /** Removes the kept copies of short .partial files up to the latest segment handed on in this run. */
  private async dropCompletedCopies(state: SiteStreaming, directory: string): Promise<void> {
    let latest = "";
    for (const name of state.reportedIncoming) if (isWalName(name) && name > latest) latest = name;
    if (latest) await removeCopiesUpTo(directory, latest);
  }

  private async ensureReceiveXlog(state: SiteStreaming, handle: WalStreamingSiteHandle): Promise<void> {
    if (!state.watcher) {
      const watcher = new SpoolWatcher(
        handle.spool.xlogIncoming,
        (fullPath) => {
          siteLogger(this.log, state.site).debug(`pg_receivewal completed ${fullPath}, queueing it for compression`);
          state.latestActivity = new Date();
          // The segment that did not fit (or a later one) was written: pg_receivewal's full disk (or
          // one an earlier run left) is over.
          const name = path.basename(fullPath);
          if (showsSpaceBack(state.fullDiskSegment, name)) this.spaceIsBack(state);
          // The segment arrived complete: copies of earlier short .partial files of it (or of an
          // earlier segment) are of no use.
          void removeCopiesUpTo(handle.spool.xlogIncoming, name);
          state.handle?.queueIncomingFile(fullPath);
        },
        {
          onError: (err) =>
            siteLogger(this.log, state.site).warn(`Watching ${handle.spool.xlogIncoming}: ${String(err)}`),
          onWrongSize: (file, size) =>
            siteLogger(this.log, state.site).error(
              `Ignoring ${file}: ${size} bytes, but only 16 MiB WAL segments are supported`,
            ),
          known: state.reportedIncoming,
          // Only the first watcher may assume the start-up walk queued what is there.
          reportExisting: state.watcherStarted,
        },
      );
      state.watcher = watcher;
      state.watcherStarted = true;
      await watcher.start();
      // Segments the first watcher found already there are not reported to it (the start-up walk
      // queued them), so their kept copies go here.
      await this.dropCompletedCopies(state, handle.spool.xlogIncoming);
    }
    if (state.fullDiskSegment !== null) await this.checkPaddedPartial(state, handle.spool.xlogIncoming);
    if (state.receivexlog?.isRunning || state.starting || Date.now() < state.nextStartAt) return;
    if (state.receivexlog) {
      const ran = Date.now() - state.receivexlog.startedAt;
      state.receivexlog = null;
      this.scheduleRestart(state, ran);
      if (Date.now() < state.nextStartAt) return;
    }
    // In the background: an unreachable server must not hold up the main loop.
    state.starting = true;
    void this.startReceiveXlog(state, handle)
      .catch((err: unknown) => {
        if (!(err instanceof CheckFailed)) {
          siteLogger(this.log, state.site).error(
            `Site ${state.site}: could not start pg_receivewal: ${(err as Error).message}`,
          );
        }
        this.scheduleRestart(state, 0);
      })
      .finally(() => {
        state.starting = false;
      });
  }

  private async startReceiveXlog(state: SiteStreaming, handle: WalStreamingSiteHandle): Promise<void> {
    const siteConfig = handle.siteConfig;
    const node = this.pickNode(siteConfig, state.site);
    const serverVersion = await this.checkServer(state, siteConfig, node);
    let binary: { path: string; version: number };
    try {
      binary = await findPgBinary(siteConfig, "pg_receivexlog", {
        wantedMajor: pgMajorFromNumber(serverVersion),
        siteName: state.site,
      });
    } catch (err) {
      siteLogger(this.log, state.site).error(
        `Site ${state.site}: ${(err as Error).message}; created alert file configuration_error`,
      );
      await this.raise(state, "configuration_error");
      throw new CheckFailed((err as Error).message);
    }
    if (Math.floor(binary.version / 100) !== Math.floor(serverVersion / 100)) {
      siteLogger(this.log, state.site).error(
        `Site ${state.site}: pg_receivewal version ${binary.version} (${binary.path}) does not match the server version ${serverVersion}; created alert file version_mismatch_error`,
      );
      await this.raise(state, "version_mismatch_error");
      throw new CheckFailed("version mismatch");
    }
    await this.clearAlerts(state, ["version_mismatch_error", "configuration_error"]);

    const slot = nodeSlot(node);
    if (slot && serverVersion >= 90400) await this.ensureSlot(state, node, slot);
    const { connectionString } = await connectionStringUsingPgpass(node, { replication: true });
    for (const pid of await findReceiversWritingTo(handle.spool.xlogIncoming)) {
      siteLogger(this.log, state.site).warn(
        `Site ${state.site}: terminating pg_receivewal PID ${pid} left over from an earlier run in ${handle.spool.xlogIncoming}`,
      );
      await terminateLeftoverReceiver(pid);
    }
    if (!this.wanted(state, "pg_receivexlog")) return;
    // A full disk while pg_receivewal pre-pads a segment leaves a .partial it refuses to continue.
    await repairPartialFiles(handle.spool.xlogIncoming, siteLogger(this.log, state.site));
    // A segment completed earlier in this run and then streamed again (from the slot's position)
    // may have left a short .partial just copied aside: the segment itself is already handled.
    await this.dropCompletedCopies(state, handle.spool.xlogIncoming);
    const pgConfig = siteConfig.pg_receivexlog;
    state.receivexlog = new PgReceiveXlog({
      site: state.site,
      binary: binary.path,
      connectionString,
      directory: handle.spool.xlogIncoming,
      slot,
      serverVersion,
      log: siteLogger(this.log, state.site).child({ name: "PGReceiveXLog" }),
      onOutputLine: (line) => this.receiverSaid(state, line),
      diskGuard: () => {
        const current = this.ctx.config.backup_sites[state.site]?.pg_receivexlog ?? pgConfig;
        return {
          minDiskFreeBytes: current.min_disk_free_bytes ?? null,
          resumeMultiplier: current.resume_multiplier ?? 1.5,
          checkIntervalMs: (current.disk_space_check_interval ?? 10) * 1000,
        };
      },
    });
    void state.receivexlog.exited.then(() => state.watcher?.scan());
    void state.receivexlog.checkDiskSpace(true);
  }

  /** pg_receivewal wrote again where the disk had been full: its disk_full_error report ends. */
  private spaceIsBack(state: SiteStreaming): void {
    state.fullDiskSegment = null;
    void this.ctx.diskFullAlert.clear(diskFullReporter(state.site)).then(
      (removed) =>
        removed &&
        siteLogger(this.log, state.site).info(
          `Site ${state.site}: pg_receivewal writes segments again, removed alert file disk_full_error`,
        ),
      () => undefined,
    );
  }

  /** Each main-loop round while the disk was full: a fully padded `.partial` also shows room again. */
  private async checkPaddedPartial(state: SiteStreaming, dir: string): Promise<void> {
    const files: Array<{ name: string; size: number }> = [];
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      if (!name.endsWith(".partial")) continue;
      const info = await stat(path.join(dir, name)).catch(() => null);
      if (info) files.push({ name, size: info.size });
    }
    if (paddedPartialShowsSpaceBack(state.fullDiskSegment, files, WAL_SEG_SIZE)) this.spaceIsBack(state);
  }

  /** Reacts to pg_receivewal's full-disk messages: an alert, and a restart where it would loop for ever. */
  private receiverSaid(state: SiteStreaming, line: string): void {
    if (NO_SPACE_LINE.test(line)) {
      state.fullDiskSegment = fullDiskSegmentAfter(state.fullDiskSegment, line);
      void this.ctx.diskFullAlert.raise(diskFullReporter(state.site)).then(
        (first) => {
          if (first)
            siteLogger(this.log, state.site).error(
              `Site ${state.site}: pg_receivewal found the disk full; created alert file disk_full_error`,
            );
        },
        (err: unknown) =>
          siteLogger(this.log, state.site).error(
            `Could not create alert file disk_full_error: ${(err as Error).message}`,
          ),
      );
    }
    if (STUCK_PARTIAL_LINE.test(line) && state.receivexlog?.isRunning) {
      siteLogger(this.log, state.site).warn(
        `Site ${state.site}: stopping pg_receivewal to truncate its incomplete .partial file`,
      );
      state.failures = 0; // an intended restart: back in 5 s, not after a growing back-off
      void state.receivexlog.stop();
    }
  }

  /** pg_receivewal only uses a slot; create it (reserving WAL) when it is missing. */
  private async ensureSlot(state: SiteStreaming, node: NodeConfig, slot: string): Promise<void> {
    let conn: ReplicationConnection | null = null;
    try {
      conn = await ReplicationConnection.connect(replicationConnectionInfo(node));
      if (await conn.createPhysicalSlot(slot))
        siteLogger(this.log, state.site).info(`Site ${state.site}: created physical replication slot ${slot}`);
    } catch (err) {
      siteLogger(this.log, state.site).warn(
        `Site ${state.site}: could not create replication slot ${slot}: ${(err as Error).message}`,
      );
    } finally {
      await conn?.close();
    }
  }

  private async ensureWalReceiver(state: SiteStreaming, handle: WalStreamingSiteHandle): Promise<void> {
    if (state.walreceiver || state.starting || Date.now() < state.nextStartAt) return;
    state.starting = true;
    void this.startWalReceiver(state, handle).finally(() => {
      state.starting = false;
    });
  }

  private async startWalReceiver(state: SiteStreaming, handle: WalStreamingSiteHandle): Promise<void> {
    try {
      const siteConfig = handle.siteConfig;
      const node = this.pickNode(siteConfig, state.site);
      await this.checkServer(state, siteConfig, node);
      if (!this.wanted(state, "walreceiver")) return;
      const receiver = new WalReceiver({
        site: state.site,
        connectionInfo: replicationConnectionInfo(node),
        slot: nodeSlot(node),
        startLsn: state.lastFlushedLsn,
        sink: new DaemonWalSink(this.ctx, state.site),
        log: siteLogger(this.log, state.site).child({ name: "WALReceiver" }),
        partialIntervalMs: this.hooks.partialIntervalMs,
      });
      state.walreceiver = receiver;
      state.walreceiverStartedAt = Date.now();
      state.walreceiverRun = receiver.run().then(
        () => this.walreceiverEnded(state, receiver, null),
        (err: unknown) => this.walreceiverEnded(state, receiver, err as Error),
      );
    } catch (err) {
      if (!(err instanceof CheckFailed))
        siteLogger(this.log, state.site).error(
          `Site ${state.site}: could not start the walreceiver: ${(err as Error).message}`,
        );
      this.scheduleRestart(state, 0);
    }
  }

  private walreceiverEnded(state: SiteStreaming, receiver: WalReceiver, err: Error | null): void {
    state.lastFlushedLsn = receiver.lastFlushedLsn;
    state.latestActivity = receiver.latestActivity;
    if (state.walreceiver !== receiver) return; // stopped on purpose
    state.walreceiver = null;
    state.walreceiverRun = null;
    if (this.stopped) return;
    if (err) {
      this.repeatedErrors.log(
        `${state.site}:walreceiver:${err.message}`,
        `Site ${state.site}: walreceiver failed: ${err.message}`,
        (text) => siteLogger(this.log, state.site).error(text),
      );
      this.ctx.metrics.unexpectedException(err, "walreceiver_run");
      // The resume position is gone from the server: start over from what it still has (a gap in the archive).
      if (/has already been removed/.test(err.message)) {
        siteLogger(this.log, state.site).error(
          `Site ${state.site}: WAL from ${state.lastFlushedLsn} is no longer on the server; resuming from the server's position`,
        );
        state.lastFlushedLsn = null;
      }
    } else {
      siteLogger(this.log, state.site).warn(`Site ${state.site}: walreceiver stopped`);
    }
    this.scheduleRestart(state, Date.now() - state.walreceiverStartedAt);
  }
}

/** Puts walreceiver output through the daemon's compressors and transfer agents. */
export class DaemonWalSink implements WalSink {
  constructor(
    private readonly ctx: WalStreamingContext,
    private readonly site: string,
  ) {}

  private async compressAndStore(
    filetype: "xlog" | "timeline",
    name: string,
    data: Buffer,
    partial = false,
  ): Promise<void> {
    const spool = this.ctx.spoolPaths(this.site);
    const result = await this.ctx.archive({
      site: this.site,
      filetype,
      // Only names the file: the data is in memory and nothing is written to the spool.
      fullPath: path.join(filetype === "xlog" ? spool.xlog : spool.timeline, name),
      inputData: data,
      compressToMemory: true,
      deleteFileAfterCompression: false,
      partial,
    });
    const what = `storing ${name}${partial ? ".partial" : ""}`;
    if (!result.success)
      throw new Error(
        `${what}: ${result.error instanceof Error ? result.error.message : String(result.error ?? "failed")}`,
      );
  }

  storeSegment(name: string, data: Buffer): Promise<void> {
    return this.compressAndStore("xlog", name, data);
  }

  storeHistory(name: string, data: Buffer): Promise<void> {
    return this.compressAndStore("timeline", name, data);
  }

  async storePartial(name: string, data: Buffer): Promise<void> {
    // Checked here, not by the compressors: a bad partial is only logged, never a critical failure.
    if (data.length >= 20) verifyWalHeader(data, name);
    await this.compressAndStore("xlog", name, data, true);
  }

  async deletePartial(name: string): Promise<void> {
    const storage = await this.ctx.getStorage(this.site);
    try {
      await storage.deleteKey(walKey(this.ctx.site(this.site).prefix, `${name}.partial`));
      siteLogger(this.ctx.log, this.site).info(
        `Deleted ${name}.partial of site ${this.site}: the complete segment is stored`,
      );
    } catch (err) {
      if (!(err instanceof StorageNotFoundError)) throw err;
    }
  }
}

/**
 * The daemon's plugin factory. The daemon calls it before its start-up walk of the spool
 * (§6.6), so pg_receivewal processes a killed daemon left behind are stopped first: the walk then
 * sees a directory nobody writes to, and the watcher can take what it finds as already queued.
 */
export async function createWalStreamingPlugin(ctx: WalStreamingContext): Promise<WalStreamingPlugin> {
  for (const [site, siteConfig] of Object.entries(ctx.config.backup_sites)) {
    if (siteConfig.active_backup_mode !== "pg_receivexlog") continue;
    const dir = ctx.spoolPaths(site).xlogIncoming;
    for (const pid of await findReceiversWritingTo(dir)) {
      siteLogger(ctx.log, site).warn(
        `Site ${site}: terminating pg_receivewal PID ${pid} left over from an earlier run in ${dir}`,
      );
      await terminateLeftoverReceiver(pid);
    }
  }
  return new WalStreamingPlugin(ctx, {
    partialIntervalMs: process.env.PGHOARD_TEST_PARTIAL_INTERVAL_MS
      ? Number(process.env.PGHOARD_TEST_PARTIAL_INTERVAL_MS)
      : undefined,
  });
}
