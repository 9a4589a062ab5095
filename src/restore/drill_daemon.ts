/**
 * Scheduled restore drills (site key `restore_drill_interval_hours`): a daemon plugin that runs
 * `pghoard_restore drill --json` as a child process at low priority (nice 19, best-effort I/O
 * class at its lowest level), one drill at a time across all sites, only for sites that have a
 * basebackup. The drill itself refuses when its scratch file system lacks room (bounded disk use)
 * and removes everything it wrote. The last result of every site goes into the state file
 * (`restore_drills`, hence `GET /status`), the `pghoard.restore_drill_*` metrics, and the
 * `restore_drill_error` alert file, which exists while any site's last drill failed.
 * The schedule survives restarts: the next drill is due `interval` after the last one's end as
 * recorded in the previous state file.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { setPriority } from "node:os";
import path from "node:path";
import type { Logger } from "pino";
import type { DaemonPlugin } from "../common/plugin.js";
import { installedCommandPath } from "../common/install_paths.js";
import { MetricNames, type Metrics } from "../monitoring/index.js";
import type { DrillReport } from "./drill.js";

const ALERT = "restore_drill_error";
/** Output kept from a drill child (its JSON report is a few KiB). */
const MAX_OUTPUT = 1024 * 1024;

/** The parts of the daemon's context this plugin uses (the daemon's DaemonContext satisfies it). */
export interface DrillDaemonContext {
  readonly log: Logger;
  readonly metrics: Pick<Metrics, "gauge">;
  /** The state file as it was when the daemon started. */
  previousState: Record<string, unknown>;
  createAlert(name: typeof ALERT): Promise<void>;
  removeAlert(name: typeof ALERT): Promise<boolean>;
}

/** The parts of the daemon's per-site handle this plugin uses. */
export interface DrillSiteHandle {
  site: string;
  siteConfig: { restore_drill_interval_hours?: number | null };
  /** backup_sites.<site> of the state file (filled by the basebackup plugin). */
  state: { basebackups: unknown[] };
}

export interface DrillPluginOptions {
  /** The daemon's config file: the drill reads the same one. */
  configPath: string;
  /** `bin/pghoard_restore.js`; default: the one of this installation. */
  restoreBin?: string;
}

/** A site's entry in the state file's `restore_drills`. */
export interface DrillState {
  running: boolean;
  /** When the running drill started (ISO 8601). */
  started_at: string | null;
  /** The last finished drill: its report (or what is known when it produced none). */
  last_result: (Partial<DrillReport> & { success: boolean; error: string | null; finished_at: string }) | null;
  next_drill_at: string | null;
}

interface Running {
  site: string;
  child: ChildProcess;
  done: Promise<void>;
}

function which(program: string): string | null {
  for (const dir of (process.env.PATH ?? "").split(path.delimiter).filter(Boolean)) {
    const candidate = path.join(dir, program);
    if (existsSync(candidate)) return candidate;
  }
  return null;
}

/** argv prefix that lowers CPU and I/O priority, with what this machine has. */
function lowPriorityPrefix(): string[] {
  const prefix: string[] = [];
  const ionice = which("ionice");
  if (ionice) prefix.push(ionice, "-c", "2", "-n", "7");
  const nice = which("nice");
  if (nice) prefix.push(nice, "-n", "19");
  return prefix;
}

function tailOf(text: string, lines = 3): string {
  return text.trim().split("\n").slice(-lines).join(" | ");
}

export function createRestoreDrillPlugin(
  ctx: DrillDaemonContext,
  options: DrillPluginOptions,
): DaemonPlugin<DrillSiteHandle> {
  const restoreBin = options.restoreBin ?? installedCommandPath("pghoard_restore");
  const states = new Map<string, DrillState>();
  let running: Running | undefined;
  let stopping = false;

  // Resume the schedule and the last results from the previous state file.
  const previous = ctx.previousState.restore_drills;
  if (previous && typeof previous === "object") {
    for (const [site, value] of Object.entries(previous as Record<string, DrillState>)) {
      if (!value?.last_result) continue;
      states.set(site, { running: false, started_at: null, last_result: value.last_result, next_drill_at: null });
      emitMetrics(site, value.last_result);
    }
  }

  function emitMetrics(site: string, result: NonNullable<DrillState["last_result"]>): void {
    const tags = { site };
    ctx.metrics.gauge(MetricNames.RESTORE_DRILL_SUCCESS, result.success ? 1 : 0, tags);
    ctx.metrics.gauge(MetricNames.RESTORE_DRILL_LAST_RUN, Date.parse(result.finished_at) / 1000, tags);
    const t = result.timings;
    if (t) {
      ctx.metrics.gauge(MetricNames.RESTORE_DRILL_SECONDS, t.total_seconds, tags);
      if (t.download_extract_seconds !== null)
        ctx.metrics.gauge(MetricNames.RESTORE_DRILL_DOWNLOAD_SECONDS, t.download_extract_seconds, tags);
      if (t.wal_replay_seconds !== null)
        ctx.metrics.gauge(MetricNames.RESTORE_DRILL_WAL_REPLAY_SECONDS, t.wal_replay_seconds, tags);
    }
    if (result.wal) ctx.metrics.gauge(MetricNames.RESTORE_DRILL_WAL_SEGMENTS, result.wal.segments_replayed, tags);
  }

  async function updateAlert(): Promise<void> {
    const failing = [...states.values()].some((s) => s.last_result && !s.last_result.success);
    try {
      if (failing) await ctx.createAlert(ALERT);
      else await ctx.removeAlert(ALERT);
    } catch (err) {
      ctx.log.warn(`Could not update the ${ALERT} alert file: ${(err as Error).message}`);
    }
  }

  function dueAt(site: string, intervalHours: number): number {
    const last = states.get(site)?.last_result;
    return last ? Date.parse(last.finished_at) + intervalHours * 3_600_000 : 0;
  }

  function start(site: string): void {
    const argv = [
      ...lowPriorityPrefix(),
      process.execPath,
      restoreBin,
      "drill",
      "--config",
      options.configPath,
      "--site",
      site,
      "--json",
    ];
    const state: DrillState = {
      ...(states.get(site) ?? { last_result: null, next_drill_at: null }),
      running: true,
      started_at: new Date().toISOString(),
    };
    states.set(site, state);
    ctx.log.info(`Starting a restore drill of site ${site}`);
    const child = spawn(argv[0], argv.slice(1), { stdio: ["ignore", "pipe", "pipe"] });
    // Without the wrapper programs, lower the CPU priority directly (the server it starts inherits it).
    if (argv[0] === process.execPath && child.pid) {
      try {
        setPriority(child.pid, 19);
      } catch {
        // not permitted: run at normal priority
      }
    }
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (d: Buffer) => {
      if (stdout.length < MAX_OUTPUT) stdout += d.toString();
    });
    child.stderr?.on("data", (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-65536);
    });
    const done = new Promise<void>((resolve) => {
      child.once("error", (err) => {
        stderr += `\n${err.message}`;
      });
      child.once("close", (code, signal) => {
        void finish(site, code, signal, stdout, stderr).finally(resolve);
      });
    });
    running = { site, child, done };
  }

  async function finish(
    site: string,
    code: number | null,
    signal: NodeJS.Signals | null,
    stdout: string,
    stderr: string,
  ): Promise<void> {
    running = undefined;
    const finishedAt = new Date().toISOString();
    let result: NonNullable<DrillState["last_result"]>;
    try {
      const report = JSON.parse(stdout.slice(stdout.indexOf("{"))) as DrillReport;
      result = { ...report, finished_at: report.finished_at || finishedAt };
    } catch {
      const how = signal ? `signal ${signal}` : `exit code ${code}`;
      const detail = tailOf(`${stdout}\n${stderr}`) || "no output";
      result = { success: false, error: `pghoard_restore drill ended with ${how}: ${detail}`, finished_at: finishedAt };
    }
    const state = states.get(site);
    if (stopping && !result.success) {
      // Interrupted because the daemon stops: no result.
      if (state) state.running = false;
      return;
    }
    states.set(site, {
      running: false,
      started_at: state?.started_at ?? null,
      last_result: result,
      next_drill_at: null,
    });
    if (result.success) {
      ctx.log.info(
        `Restore drill of site ${site} succeeded in ${result.timings?.total_seconds ?? "?"} s (${result.wal?.segments_replayed ?? 0} WAL segments replayed)`,
      );
    } else {
      ctx.log.error(`Restore drill of site ${site} failed: ${result.error}`);
    }
    emitMetrics(site, result);
    await updateAlert();
  }

  return {
    name: "restore_drill",

    async handleSite(handle: DrillSiteHandle): Promise<void> {
      const interval = handle.siteConfig.restore_drill_interval_hours;
      if (typeof interval !== "number" || interval <= 0) {
        // Drills turned off: forget the site's last result (and its alert).
        if (states.has(handle.site) && running?.site !== handle.site) {
          states.delete(handle.site);
          await updateAlert();
        }
        return;
      }
      if (stopping) return;
      const due = dueAt(handle.site, interval);
      const state = states.get(handle.site);
      if (state) state.next_drill_at = new Date(Math.max(due, Date.now())).toISOString();
      if (running || Date.now() < due) return;
      // Nothing to drill before the first basebackup (and no false alert on a new site).
      if (handle.state.basebackups.length === 0) return;
      start(handle.site);
    },

    writeState(state: Record<string, unknown>): void {
      state.restore_drills = Object.fromEntries(states);
    },

    async stop(graceful: boolean): Promise<void> {
      stopping = true;
      const current = running;
      if (!current) return;
      // The drill stops its server and removes its scratch directory on SIGTERM.
      current.child.kill("SIGTERM");
      const waitMs = graceful ? 60_000 : 5000;
      await Promise.race([current.done, new Promise((r) => setTimeout(r, waitMs).unref())]);
    },
  };
}
