/**
 * pg_receivexlog mode (operations.md §6.1): one pg_receivewal child per site writing into the
 * site's `xlog_incoming` spool. Its output is logged (and counts as activity); a disk-space guard
 * pauses it with SIGSTOP below `pg_receivexlog.min_disk_free_bytes` and continues it with SIGCONT
 * once free space is back above `min × resume_multiplier`. A paused child is always continued
 * before it is terminated, otherwise SIGTERM would stay pending forever.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { copyFile, readdir, readFile, stat, statfs, truncate, unlink } from "node:fs/promises";
import path from "node:path";
import type { Logger } from "pino";
import { isDiskFull } from "../common/errors.js";
import { processExists } from "../common/pid_lock.js";
import { isPartialName, isWalName, WAL_SEG_SIZE } from "./names.js";

export interface DiskGuardConfig {
  minDiskFreeBytes: number | null;
  resumeMultiplier: number;
  checkIntervalMs: number;
}

export interface PgReceiveXlogOptions {
  site: string;
  binary: string;
  /** Replication conninfo without a password (that went to ~/.pgpass). */
  connectionString: string;
  directory: string;
  slot?: string | undefined;
  serverVersion: number;
  log: Logger;
  /** Read at every check so a SIGHUP reload takes effect on the running child. */
  diskGuard: () => DiskGuardConfig;
  env?: NodeJS.ProcessEnv;
  /** Each line pg_receivewal prints (after it is logged). */
  onOutputLine?: (line: string) => void;
}

/**
 * pg_receivewal retries in-process for ever on a `.partial` of the wrong size (left by a failed
 * pre-padding on a full disk): only stopping it and truncating the file gets it going again.
 */
export const STUCK_PARTIAL_LINE = /write-ahead log file "[^"]+\.partial" has \d+ bytes, should be 0 or \d+/;
export const NO_SPACE_LINE = /No space left on device|Disk quota exceeded/i;

/**
 * The full-disk state after one line of pg_receivewal's output: the earliest segment it could not
 * write ("" when its messages named none), or `current` when the line is not about a full disk.
 */
export function fullDiskSegmentAfter(current: string | null, line: string): string | null {
  if (!NO_SPACE_LINE.test(line)) return current;
  const segment = /\b([0-9A-F]{24})(?:\.partial)?\b/.exec(line)?.[1] ?? "";
  if (current === null || (segment !== "" && (current === "" || segment < current))) return segment;
  return current;
}

/**
 * Whether pg_receivewal completing `name` shows the disk has room again: the segment that did not
 * fit, or a later one. One it had allocated before the disk filled up still completes meanwhile.
 */
export function showsSpaceBack(fullDiskSegment: string | null, name: string): boolean {
  return !fullDiskSegment || (isWalName(name) && name >= fullDiskSegment);
}

/**
 * Whether pg_receivewal's files in its directory show the disk has room again before any segment
 * completes: it pre-pads each new `<segment>.partial` to the full segment size, so a full-size
 * `.partial` of the segment that did not fit (or a later one) was written after the disk filled.
 * Without this an idle cluster, whose next segment may take hours to complete, would keep the
 * alert long after the space came back.
 */
export function paddedPartialShowsSpaceBack(
  fullDiskSegment: string | null,
  files: Array<{ name: string; size: number }>,
  segmentSize: number,
): boolean {
  if (fullDiskSegment === null) return false;
  return files.some(
    (f) =>
      isPartialName(f.name) &&
      f.size === segmentSize &&
      showsSpaceBack(fullDiskSegment, f.name.slice(0, -".partial".length)),
  );
}

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** Free bytes of the file system holding `dir`, as upstream computes it (f_bfree × f_bsize). */
export async function diskBytesFree(dir: string): Promise<number> {
  const st = await statfs(dir);
  return st.bfree * st.bsize;
}

/**
 * PIDs of pg_receivewal/pg_receivexlog processes writing into `directory` (Linux /proc). A daemon
 * that was killed leaves its child running; a second one on the same spool and slot would fail
 * ("replication slot is active") and two writers would fight over the same files.
 */
export async function findReceiversWritingTo(directory: string): Promise<number[]> {
  let entries: string[];
  try {
    entries = await readdir("/proc");
  } catch {
    return []; // no procfs: nothing we can find
  }
  const wanted = path.resolve(directory);
  const pids: number[] = [];
  for (const entry of entries) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const argv = (await readFile(`/proc/${entry}/cmdline`, "utf8")).split("\0");
      const prog = path.basename(argv[0] ?? "");
      if (prog !== "pg_receivewal" && prog !== "pg_receivexlog") continue;
      const dirIndex = argv.indexOf("--directory");
      if (dirIndex >= 0 && path.resolve(argv[dirIndex + 1] ?? "") === wanted) pids.push(Number(entry));
    } catch {
      // exited meanwhile, or not ours to read
    }
  }
  return pids;
}

/** Continues, terminates and (after `killAfterMs`) kills a leftover receiver. */
export async function terminateLeftoverReceiver(pid: number, killAfterMs = 5000): Promise<void> {
  try {
    process.kill(pid, "SIGCONT");
    process.kill(pid, "SIGTERM");
  } catch {
    return;
  }
  const deadline = Date.now() + killAfterMs;
  while (processExists(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  if (processExists(pid)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // gone
    }
  }
}

/**
 * pg_receivewal only continues a `.partial` of 0 bytes or a full segment; any other size (left by a
 * crash, or by a full disk while it pre-pads the file) makes every start fail. Such a file is kept
 * as `<name>_incomplete` for inspection and truncated to 0 bytes. On a full disk the copy is
 * skipped and earlier copies are removed: the space is needed more than the forensic copy, and a
 * half-written copy would turn every start-up into an ENOSPC failure. Copies of segments
 * pg_receivewal has completed since are removed. Returns the files repaired.
 */
export async function repairPartialFiles(directory: string, log: Logger): Promise<string[]> {
  let names: string[];
  try {
    names = (await readdir(directory)).sort();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
  const repaired: string[] = [];
  for (const name of names) {
    if (!isPartialName(name)) continue;
    const fullPath = path.join(directory, name);
    const size = (await stat(fullPath)).size;
    if (size === 0 || size === WAL_SEG_SIZE) {
      log.info(`Found partial file ${fullPath}, size ${size} bytes`);
      continue;
    }
    log.warn(`Found partial file ${fullPath} with unexpected size ${size}, truncating to zero bytes`);
    const copy = fullPath.slice(0, -".partial".length) + COPY_SUFFIX;
    try {
      await copyFile(fullPath, copy);
    } catch (err) {
      if (!isDiskFull(err)) throw err;
      log.warn(`No space to keep a copy of ${fullPath} (${(err as Error).message}); removing partial copies instead`);
      for (const other of names.filter((n) => n.endsWith(COPY_SUFFIX)).concat(path.basename(copy))) {
        await unlink(path.join(directory, other)).catch(() => undefined);
      }
    }
    await truncate(fullPath, 0);
    repaired.push(fullPath);
  }
  // A copy is kept only while pg_receivewal has not moved past its segment: once a later segment
  // is being received, the segment itself arrived complete and the copy is of no further use.
  const current = names.filter(isPartialName).sort().at(-1);
  for (const name of names) {
    if (name.endsWith(COPY_SUFFIX) && current && name < current) {
      await unlink(path.join(directory, name)).catch(() => undefined);
    }
  }
  // Nor once its segment (or a later one) lies here complete, as after a run killed on a full disk
  // whose receiver finished the segment before this run started.
  const completed = names.filter(isWalName).at(-1);
  if (completed) await removeCopiesUpTo(directory, completed);
  return repaired;
}

/** The suffix repairPartialFiles gives the copy of a short `.partial` it kept aside. */
const COPY_SUFFIX = ".partial_incomplete";

/**
 * Removes the copies repairPartialFiles kept of `segment` and of every earlier segment: once
 * pg_receivewal has completed a segment, a short copy of it or of an earlier one is of no further
 * use. Called for each segment pg_receivewal completes, so a copy an earlier daemon run made (one
 * killed while the disk was full, whose segment completed before this run watched) goes as well.
 * Returns the copies removed.
 */
export async function removeCopiesUpTo(directory: string, segment: string): Promise<string[]> {
  if (!isWalName(segment)) return [];
  const names = await readdir(directory).catch(() => [] as string[]);
  const removed: string[] = [];
  for (const name of names) {
    if (!name.endsWith(COPY_SUFFIX) || name.slice(0, -COPY_SUFFIX.length) > segment) continue;
    await unlink(path.join(directory, name)).then(
      () => removed.push(name),
      () => undefined,
    );
  }
  return removed;
}

export class PgReceiveXlog {
  latestActivity = new Date();
  paused = false;
  readonly startedAt = Date.now();
  readonly exited: Promise<ExitStatus>;
  private readonly child: ChildProcess;
  private running = true;
  private diskTimer: NodeJS.Timeout | null = null;
  private lastDiskCheck = 0;
  private checkingDisk = false;

  constructor(private readonly options: PgReceiveXlogOptions) {
    const args = [
      "--status-interval",
      "1",
      "--verbose",
      "--directory",
      options.directory,
      "--dbname",
      options.connectionString,
    ];
    if (options.serverVersion >= 90400 && options.slot) args.push("--slot", options.slot);
    const log = options.log;
    this.child = spawn(options.binary, args, { stdio: ["ignore", "pipe", "pipe"], env: options.env ?? process.env });
    // The conninfo holds no password (moved to ~/.pgpass), so the command line can be logged.
    log.info(`Started: ${JSON.stringify([options.binary, ...args])}, running as PID: ${this.child.pid ?? "?"}`);
    this.exited = new Promise((resolve) => {
      const finished = (code: number | null, signal: NodeJS.Signals | null): void => {
        if (!this.running) return;
        this.running = false;
        if (this.diskTimer) clearInterval(this.diskTimer);
        this.diskTimer = null;
        const took = ((Date.now() - this.startedAt) / 1000).toFixed(3);
        log.info(`pg_receivewal of site ${options.site} exited after ${took}s: code ${code}, signal ${signal}`);
        resolve({ code, signal });
      };
      this.child.once("error", (err) => {
        log.error(`Could not run ${options.binary} for site ${options.site}: ${err.message}`);
        finished(null, null);
      });
      this.child.once("close", finished);
    });
    for (const stream of [this.child.stdout, this.child.stderr]) {
      let pending = "";
      stream?.on("data", (chunk: Buffer) => {
        this.latestActivity = new Date();
        pending += chunk.toString("utf8");
        const lines = pending.split("\n");
        pending = lines.pop() ?? "";
        for (const line of lines) {
          if (!line.trim()) continue;
          log.info(line);
          options.onOutputLine?.(line);
        }
      });
      stream?.on("end", () => {
        if (pending.trim()) log.info(pending);
      });
    }
    const interval = Math.max(100, Math.min(1000, options.diskGuard().checkIntervalMs));
    this.diskTimer = setInterval(() => void this.checkDiskSpace(), interval);
    this.diskTimer.unref();
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get isRunning(): boolean {
    return this.running;
  }

  /** Pauses or continues the child depending on free disk space; `force` ignores the interval. */
  async checkDiskSpace(force = false): Promise<void> {
    const guard = this.options.diskGuard();
    if (!this.running || this.checkingDisk) return;
    if (!guard.minDiskFreeBytes) {
      if (this.paused) this.continue("the free disk space limit was removed");
      return;
    }
    const now = Date.now();
    if (!force && now - this.lastDiskCheck < guard.checkIntervalMs) return;
    this.lastDiskCheck = now;
    this.checkingDisk = true;
    try {
      const free = await diskBytesFree(this.options.directory);
      const mib = (n: number): string => (n / 1024 / 1024).toFixed(1);
      if (!this.paused && free < guard.minDiskFreeBytes) {
        this.options.log.warn(
          `Free disk space ${mib(free)} MiB is below configured minimum ${mib(guard.minDiskFreeBytes)} MiB, pausing pg_receivewal of site ${this.options.site}`,
        );
        this.pause();
      } else if (this.paused) {
        const resumeAt = Math.floor(guard.minDiskFreeBytes * guard.resumeMultiplier);
        if (free >= resumeAt) {
          this.continue(`free disk space ${mib(free)} MiB is above configured resume threshold ${mib(resumeAt)} MiB`);
        }
      }
    } catch (err) {
      this.options.log.error({ err }, `Could not check free disk space of ${this.options.directory}`);
    } finally {
      this.checkingDisk = false;
    }
  }

  private pause(): void {
    if (this.paused || !this.running || !this.child.pid) return;
    this.child.kill("SIGSTOP");
    this.paused = true;
  }

  private continue(reason: string): void {
    if (!this.paused || !this.child.pid) return;
    this.options.log.info(`Resuming pg_receivewal of site ${this.options.site}: ${reason}`);
    if (this.running) this.child.kill("SIGCONT");
    this.paused = false;
  }

  /** SIGCONT (if paused), SIGTERM, then SIGKILL if it has not exited after `killAfterMs`. */
  async stop(killAfterMs = 5000): Promise<ExitStatus> {
    if (this.running) {
      this.continue("stopping it");
      this.child.kill("SIGTERM");
      const timer = setTimeout(() => {
        if (this.running) this.child.kill("SIGKILL");
      }, killAfterMs);
      timer.unref();
      const status = await this.exited;
      clearTimeout(timer);
      return status;
    }
    return this.exited;
  }
}
