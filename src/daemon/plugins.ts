/**
 * Hook points for the parts of the daemon that live in other areas.
 *
 * A DaemonPlugin is created once per daemon start (after the config is loaded) and is called from
 * the main loop. Plugins run in the order of `DAEMON_PLUGIN_FACTORIES`: WAL streaming
 * (pg_receivexlog / walreceiver, operations.md §2 steps 3–4) must come before basebackup scheduling
 * and retention (§2 steps 5–6).
 *
 * - Streaming: in `handleSite`, start/stop the receiver for `site.siteConfig.active_backup_mode`.
 *   Files written to `site.spool.xlogIncoming` are compressed and uploaded by calling
 *   `site.queueIncomingFile(path)` (deleted after compression, newest segment kept for
 *   pg_receivewal); in-memory segments (walreceiver) go through
 *   `ctx.compressionQueue.put({... inputData, compressToMemory: true})`. Report `pg_receivexlogs` /
 *   `walreceivers` entries in `writeState`. The previous state file is in `ctx.previousState`.
 * - Basebackups: in `handleSite`, consume `ctx.requestedBasebackupSites` (PUT
 *   /<site>/archive/basebackup), check `site.maintenanceMode()`, refresh the listing into
 *   `site.state.basebackups` (written to the state file as backup_sites.<site>.basebackups), apply
 *   retention, and upload through `ctx.transferQueue` (UploadOp with filetype basebackup*,
 *   `objectName`, a callback) or directly through `await ctx.getStorage(site)`. Report
 *   `pg_basebackups` in `writeState`.
 * - Metrics: `ctx.metrics` is the monitoring area's Metrics facade (GET /metrics uses its
 *   `httpResponse()`); it is reconfigured on SIGHUP.
 */
import { createBasebackupPlugin } from "../basebackup/daemon.js";
import type { SiteConfig } from "../config/types.js";
import type { DaemonContext } from "./context.js";
import type { SiteSpoolPaths } from "./spool.js";
import { createWalStreamingPlugin } from "../wal/streaming.js";
import { createMonitoringPlugin } from "../monitoring/daemon_plugin.js";

export interface SiteState {
  basebackups: unknown[];
  [key: string]: unknown;
}

export interface SiteHandle {
  site: string;
  siteConfig: SiteConfig;
  spool: SiteSpoolPaths;
  /** backup_sites.<site> of the state file. */
  state: SiteState;
  /** True while the maintenance-mode file exists (no new basebackups). */
  maintenanceMode(): boolean;
  /** Compress and upload a WAL/history file from xlog_incoming; the source is deleted afterwards. */
  queueIncomingFile(fullPath: string): void;
}

export interface DaemonPlugin {
  readonly name: string;
  /** Every main-loop iteration (≤ 5 s apart) for every active site. Exceptions are logged, the loop goes on. */
  handleSite?(site: SiteHandle): Promise<void>;
  /** Adds or fills top-level keys of the state file just before it is written. */
  writeState?(state: Record<string, unknown>): void;
  /** After a successful SIGHUP reload (`ctx.config` is already the new one). */
  configReloaded?(): void;
  /** graceful = SIGTERM (finish/stop cleanly); false = SIGINT (stop at once). */
  stop?(graceful: boolean): Promise<void>;
}

export type DaemonPluginFactory = (ctx: DaemonContext) => DaemonPlugin | Promise<DaemonPlugin>;

/** Other areas add their factory here (streaming first, then basebackup, then the WAL-lag probe). */
export const DAEMON_PLUGIN_FACTORIES: DaemonPluginFactory[] = [
  createWalStreamingPlugin,
  createBasebackupPlugin,
  (ctx) => createMonitoringPlugin(ctx),
];

/** For tests and embedders: add a plugin factory at runtime. */
export function registerDaemonPlugin(factory: DaemonPluginFactory): void {
  DAEMON_PLUGIN_FACTORIES.push(factory);
}
