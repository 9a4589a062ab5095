/**
 * archive_command work-ahead: for sites in `archive_command` mode the daemon watches
 * `<pg_wal>/archive_status/*.ready` and compresses, encrypts and uploads those files before
 * PostgreSQL runs archive_command for them, a few in parallel. The PUT for such a file then only
 * waits for (or finds) that upload. Work done ahead is trusted only while the file is the same
 * one: device, inode, size, mtime and ctime (nanoseconds) when the work started, when PostgreSQL
 * asks, and after the upload. Nothing is acknowledged here: the PUT answers 201 only once stored.
 * Uploads go from memory (no spool files), so a SIGKILL leaves nothing behind to clean; PostgreSQL
 * keeps the `.ready` files of everything not acknowledged and asks again.
 */
import { watch, type FSWatcher } from "node:fs";
import { lstat, readdir } from "node:fs/promises";
import path from "node:path";
import type { Logger } from "pino";
import { pgWalDirectory } from "../config/index.js";
import { isPartialName, verifyWalFile } from "../wal/index.js";
import type { DaemonContext } from "./context.js";
import type { FileType } from "./http.js";
import type { TransferResult } from "./types.js";

/** The identity of a file's contents as far as the file system tells without reading it. */
export type FileIdentity = string;

export async function fileIdentity(filePath: string): Promise<FileIdentity | null> {
  try {
    const st = await lstat(filePath, { bigint: true });
    if (!st.isFile()) return null;
    return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
  } catch {
    return null;
  }
}

export interface AheadEntry {
  identity: FileIdentity;
  result: Promise<TransferResult>;
  settled: boolean;
}

const READY_SUFFIX = ".ready";
const WORKABLE_NAME = /^(?:[0-9A-F]{24}(?:\.partial)?|[0-9A-F]{8}\.history)$/;
/** Rescan this often even without a watch event (a missed inotify event only delays the work). */
const RESCAN_MS = 1000;

export function workAheadFileType(name: string): FileType {
  return name.endsWith(".history") ? "timeline" : "xlog";
}

export class WalWorkAhead {
  /** `<site>/<name>` → the upload started ahead of PostgreSQL's call. */
  private entries = new Map<string, AheadEntry>();
  private watchers = new Map<string, FSWatcher>();
  private timer: NodeJS.Timeout | undefined;
  private scanning = false;
  private rescan = false;
  private stopped = true;

  constructor(
    private readonly ctx: DaemonContext,
    private readonly log: Logger,
  ) {}

  start(): void {
    this.stopped = false;
    this.timer = setInterval(() => this.kick(), RESCAN_MS);
    this.timer.unref();
    this.kick();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    for (const watcher of this.watchers.values()) watcher.close();
    this.watchers.clear();
  }

  /** Uploads started ahead that may run at once (the PUTs themselves are not limited). */
  private get limit(): number {
    return Math.max(2, this.ctx.config.compression.thread_count + this.ctx.config.transfer.thread_count);
  }

  /**
   * The upload started ahead for this file, if it is the same file now (identity) — else the entry
   * is dropped so a fresh archive is made. The caller checks the identity again after the upload.
   */
  take(site: string, name: string, identity: FileIdentity): AheadEntry | undefined {
    const key = `${site}/${name}`;
    const entry = this.entries.get(key);
    if (!entry) return undefined;
    if (entry.identity === identity) return entry;
    this.log.info(`${name} changed since it was archived ahead; archiving it again`);
    this.entries.delete(key);
    return undefined;
  }

  /** Forget an entry (its file was archived again, or the work failed). */
  forget(site: string, name: string, entry: AheadEntry): void {
    const key = `${site}/${name}`;
    if (this.entries.get(key) === entry) this.entries.delete(key);
  }

  /** Schedules a scan; scans never overlap, a request during one causes another after it. */
  kick(): void {
    if (this.stopped) return;
    if (this.scanning) {
      this.rescan = true;
      return;
    }
    this.scanning = true;
    void this.scan()
      .catch((err: unknown) => this.log.warn(`Archive work-ahead scan failed: ${String(err)}`))
      .finally(() => {
        this.scanning = false;
        if (this.rescan) {
          this.rescan = false;
          this.kick();
        }
      });
  }

  private statusDirs(): Array<{ site: string; walDir: string }> {
    const dirs: Array<{ site: string; walDir: string }> = [];
    for (const [site, siteConfig] of Object.entries(this.ctx.config.backup_sites)) {
      if (!siteConfig.active || siteConfig.active_backup_mode !== "archive_command") continue;
      if (siteConfig.archive_work_ahead === false) continue;
      if (!siteConfig.pg_data_directory) continue;
      try {
        dirs.push({ site, walDir: pgWalDirectory(siteConfig) });
      } catch {
        // no PG_VERSION yet: nothing to archive ahead
      }
    }
    return dirs;
  }

  private ensureWatcher(statusDir: string): void {
    if (this.watchers.has(statusDir)) return;
    try {
      const watcher = watch(statusDir, { persistent: false }, () => this.kick());
      watcher.on("error", () => {
        watcher.close();
        this.watchers.delete(statusDir);
      });
      this.watchers.set(statusDir, watcher);
    } catch {
      // the directory does not exist (yet): the periodic rescan covers it
    }
  }

  private async scan(): Promise<void> {
    const live = new Set<string>();
    let running = [...this.entries.values()].filter((e) => !e.settled).length;
    for (const { site, walDir } of this.statusDirs()) {
      const statusDir = path.join(walDir, "archive_status");
      this.ensureWatcher(statusDir);
      let names: string[];
      try {
        names = (await readdir(statusDir))
          .filter((n) => n.endsWith(READY_SUFFIX))
          .map((n) => n.slice(0, -READY_SUFFIX.length))
          .filter((n) => WORKABLE_NAME.test(n))
          .sort(); // PostgreSQL archives history files first, then segments oldest first
      } catch {
        continue;
      }
      names.sort((a, b) => Number(b.endsWith(".history")) - Number(a.endsWith(".history")));
      for (const name of names) {
        const key = `${site}/${name}`;
        live.add(key);
        if (this.entries.has(key) || running >= this.limit || this.stopped) continue;
        if (await this.startAhead(site, walDir, name)) running++;
      }
    }
    // Entries whose `.ready` is gone were acknowledged (or the file removed): forget them.
    for (const [key, entry] of this.entries) {
      if (entry.settled && !live.has(key)) this.entries.delete(key);
    }
  }

  private async startAhead(site: string, walDir: string, name: string): Promise<boolean> {
    const filePath = path.join(walDir, name);
    const identity = await fileIdentity(filePath);
    if (!identity) return false;
    const filetype = workAheadFileType(name);
    if (filetype === "xlog") {
      try {
        await verifyWalFile(filePath, isPartialName(name) ? name.slice(0, -".partial".length) : name);
      } catch {
        return false; // the PUT reports the reason (412); never hand a bad file to the compressors
      }
    }
    if (this.entries.has(`${site}/${name}`)) return false; // a PUT started it meanwhile
    this.log.debug(`Archiving ${site} ${name} ahead of archive_command`);
    this.begin(site, name, identity, filePath, filetype);
    return true;
  }

  /**
   * Starts archiving this file (as it is now: `identity`) and records it, for a PUT or ahead of
   * one. A segment's header must have been verified just before (both callers do).
   */
  begin(site: string, name: string, identity: FileIdentity, filePath: string, filetype: FileType): AheadEntry {
    const entry: AheadEntry = {
      identity,
      settled: false,
      result: this.ctx.archive({
        site,
        filetype,
        fullPath: filePath,
        compressToMemory: true,
        deleteFileAfterCompression: false,
        headerVerified: filetype === "xlog",
      }),
    };
    this.entries.set(`${site}/${name}`, entry);
    void entry.result.then((result) => {
      entry.settled = true;
      if (!result.success) this.forget(site, name, entry);
      this.kick();
    });
    return entry;
  }
}
