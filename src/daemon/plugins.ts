/**
 * The daemon's side of its plugins (the life cycle is `common/plugin.ts`). The command that
 * composes the daemon passes the factories in order: WAL streaming (pg_receivexlog / walreceiver,
 * operations.md §2 steps 3–4) before basebackup scheduling and retention (§2 steps 5–6), then
 * the monitoring WAL-position probe. A factory is called once per daemon start, after the config
 * is loaded and before the start-up walk of the spool.
 *
 * - Streaming: in `handleSite`, start/stop the receiver for `site.siteConfig.active_backup_mode`.
 *   Files written to `site.spool.xlogIncoming` are compressed and uploaded by calling
 *   `site.queueIncomingFile(path)`; in-memory segments (walreceiver) go through `ctx.archive(...)`.
 *   Report `pg_receivexlogs` / `walreceivers` entries in `writeState`. The previous state file is
 *   in `ctx.previousState`.
 * - Basebackups: in `handleSite`, consume `ctx.requestedBasebackupSites`, check
 *   `site.maintenanceMode()`, refresh the listing into `site.state.basebackups`, apply retention,
 *   and upload through `ctx.upload(...)` or directly through `await ctx.getStorage(site)`.
 *   Report `pg_basebackups` in `writeState`.
 * - Metrics: `ctx.metrics` is the monitoring area's Metrics facade; it is reconfigured on SIGHUP.
 */
import type { DaemonPlugin as PluginLifeCycle } from "../common/plugin.js";
import type { SiteConfig } from "../config/types.js";
import type { DaemonContext } from "./context.js";
import type { SiteSpoolPaths } from "./spool.js";

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

export type DaemonPlugin = PluginLifeCycle<SiteHandle>;

export type DaemonPluginFactory = (ctx: DaemonContext) => DaemonPlugin | Promise<DaemonPlugin>;
