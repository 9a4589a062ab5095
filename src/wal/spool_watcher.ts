/**
 * Watches a site's `xlog_incoming` spool for files pg_receivewal finished (operations.md §6.1).
 *
 * Node has no inotify binding with close-write events, so `fs.watch` only triggers a scan and a
 * periodic directory scan is the source of truth: nothing is missed when events are coalesced or
 * dropped. A WAL segment counts as complete once it carries its final name (pg_receivewal writes
 * `<SEG>.partial` and renames it when full) and is 16 MiB; history files are written as `.tmp` and
 * renamed. `.partial`, `.tmp` and other names are ignored.
 *
 * Each name is reported once while it exists; a name that disappears (deleted after compression)
 * and shows up again later is reported again. By default files present at `start()` are not
 * reported: the daemon's start-up walk (§6.6) already queued them.
 */
import { watch, type FSWatcher } from "node:fs";
import { readdir, stat } from "node:fs/promises";
import path from "node:path";
import { isHistoryName, isWalName, WAL_SEG_SIZE } from "./names.js";

export interface SpoolWatcherOptions {
  /** Full scan interval (also the upper bound on how late a missed event is noticed). */
  scanIntervalMs?: number;
  /** Report files present at start (default false: the start-up walk handled them). */
  reportExisting?: boolean;
  /** Names already reported, shared with an earlier watcher of the same directory. */
  known?: Set<string>;
  onError?: (err: unknown) => void;
  /** A segment name whose size is not 16 MiB (once per name): it is never reported. */
  onWrongSize?: (fullPath: string, size: number) => void;
}

export class SpoolWatcher {
  private readonly known: Set<string>;
  private readonly wrongSize = new Set<string>();
  private watcher: FSWatcher | null = null;
  private timer: NodeJS.Timeout | null = null;
  private scanning: Promise<void> | null = null;
  private rescan = false;
  private stopped = true;

  constructor(
    readonly directory: string,
    private readonly onFile: (fullPath: string, kind: "xlog" | "timeline") => void,
    private readonly options: SpoolWatcherOptions = {},
  ) {
    this.known = options.known ?? new Set();
  }

  async start(): Promise<void> {
    this.stopped = false;
    if (!this.options.reportExisting) {
      for (const name of await this.listCandidates()) this.known.add(name);
    }
    try {
      this.watcher = watch(this.directory, { persistent: false }, () => void this.scan());
      this.watcher.on("error", (err) => {
        // The periodic scan keeps working without events (e.g. the directory was recreated).
        this.options.onError?.(err);
        this.watcher?.close();
        this.watcher = null;
      });
    } catch (err) {
      this.options.onError?.(err);
    }
    const interval = this.options.scanIntervalMs ?? 1000;
    this.timer = setInterval(() => void this.scan(), interval);
    this.timer.unref();
    await this.scan();
  }

  stop(): void {
    this.stopped = true;
    this.watcher?.close();
    this.watcher = null;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** Scans now; concurrent calls coalesce into one follow-up scan. */
  scan(): Promise<void> {
    if (this.scanning) {
      this.rescan = true;
      return this.scanning;
    }
    this.scanning = (async () => {
      try {
        do {
          this.rescan = false;
          await this.scanOnce();
        } while (this.rescan && !this.stopped);
      } catch (err) {
        this.options.onError?.(err);
      } finally {
        this.scanning = null;
      }
    })();
    return this.scanning;
  }

  private async listCandidates(): Promise<string[]> {
    let names: string[];
    try {
      names = await readdir(this.directory);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
      throw err;
    }
    const out: string[] = [];
    for (const name of names.sort()) {
      if (isHistoryName(name)) {
        out.push(name);
      } else if (isWalName(name)) {
        try {
          const size = (await stat(path.join(this.directory, name))).size;
          if (size === WAL_SEG_SIZE) {
            out.push(name);
          } else if (!this.wrongSize.has(name)) {
            // pg_receivewal only renames full segments: another size means another --wal-segsize.
            this.wrongSize.add(name);
            this.options.onWrongSize?.(path.join(this.directory, name), size);
          }
        } catch {
          // vanished between readdir and stat
        }
      }
    }
    return out;
  }

  private async scanOnce(): Promise<void> {
    if (this.stopped) return;
    const present = await this.listCandidates();
    const presentSet = new Set(present);
    for (const name of [...this.known]) if (!presentSet.has(name)) this.known.delete(name);
    for (const name of present) {
      if (this.known.has(name)) continue;
      this.known.add(name);
      this.onFile(path.join(this.directory, name), isHistoryName(name) ? "timeline" : "xlog");
    }
  }
}
