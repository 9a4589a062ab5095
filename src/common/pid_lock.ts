/**
 * Exclusive lock files holding the owner's PID (and its start time, so a reused PID does not keep a
 * dead owner's lock alive). Node has no flock(2); instead the lock file is created complete via
 * link(2) (atomic, fails when the name exists), and a lock whose owner is gone is taken over. On a
 * full disk, where no file with content can be created, the lock is a symlink whose target is the
 * owner token (also atomic; a short symlink needs no data block), so a daemon can still start.
 */
import { randomBytes } from "node:crypto";
import { readFileSync, readlinkSync, unlinkSync } from "node:fs";
import { link, readFile, readlink, rename, symlink, unlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { isDiskFull, isErrno } from "./errors.js";

/** A lock file's owner token: the file's content, or the target of the full-disk symlink form. */
async function readLock(file: string): Promise<string> {
  try {
    return `${await readlink(file)}\n`;
  } catch (err) {
    if (!isErrno(err, "EINVAL")) throw err; // EINVAL: a regular file
    return await readFile(file, "utf8");
  }
}

function readLockSync(file: string): string {
  try {
    return `${readlinkSync(file)}\n`;
  } catch (err) {
    if (!isErrno(err, "EINVAL")) throw err;
    return readFileSync(file, "utf8");
  }
}

/** The lock is held by a live process; the message is one line naming the holder and the lock file. */
export class LockHeldError extends Error {
  constructor(
    message: string,
    readonly holderPid: number,
  ) {
    super(message);
    this.name = "LockHeldError";
  }
}

/** Start time (clock ticks since boot, /proc/<pid>/stat field 22); null where /proc is unavailable. */
function processStartTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name (field 2) may contain spaces; fields after it start at "state" (field 3).
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19] ?? null;
  } catch {
    return null;
  }
}

/** Whether a process with this PID exists (kill(pid, 0)). */
export function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return isErrno(err, "EPERM"); // exists, owned by another user
  }
}

function ownerToken(): string {
  return `${process.pid} ${processStartTime(process.pid) ?? "-"}\n`;
}

/** The PID of the live process a lock file's content names, or null when that process is gone. */
function liveHolder(content: string): number | null {
  const [pidText, startTime] = content.trim().split(/\s+/);
  const pid = Number(pidText);
  if (!Number.isSafeInteger(pid) || pid <= 0 || pid === process.pid || !processExists(pid)) return null;
  // A different start time means the PID was reused by an unrelated process after the owner died.
  const current = processStartTime(pid);
  if (startTime && startTime !== "-" && current !== null && current !== startTime) return null;
  return pid;
}

export class PidLock {
  private released = false;
  private readonly onExit = (): void => this.releaseSync();

  private constructor(
    readonly file: string,
    private readonly token: string,
  ) {
    // Also released when the process exits without release() (process.exit after SIGINT).
    process.once("exit", this.onExit);
  }

  /**
   * Takes the lock at `file`; throws LockHeldError when a live process holds it. `what` describes
   * the locked thing in the error (e.g. "backup_location /var/lib/pghoard").
   */
  static async acquire(file: string, what: string): Promise<PidLock> {
    const token = ownerToken();
    const temp = path.join(
      path.dirname(file),
      `.${path.basename(file)}.${process.pid}-${randomBytes(4).toString("hex")}`,
    );
    let asSymlink = false;
    try {
      await writeFile(temp, token, { mode: 0o644 });
    } catch (err) {
      if (!isDiskFull(err)) throw err;
      asSymlink = true;
    }
    try {
      for (let attempt = 0; attempt < 5; attempt++) {
        try {
          if (asSymlink) await symlink(token.trim(), file);
          else await link(temp, file);
          return new PidLock(file, token);
        } catch (err) {
          if (!isErrno(err, "EEXIST")) throw err;
        }
        let content: string;
        try {
          content = await readLock(file);
        } catch (err) {
          if (isErrno(err, "ENOENT")) continue; // released meanwhile
          throw err;
        }
        const holder = liveHolder(content);
        if (holder !== null) {
          throw new LockHeldError(
            `another pghoard (PID ${holder}) is already running with ${what} (lock file ${file})`,
            holder,
          );
        }
        await PidLock.removeStale(file, content);
      }
      throw new Error(`could not take the lock file ${file}: it keeps changing`);
    } finally {
      await unlink(temp).catch(() => undefined);
    }
  }

  /**
   * Moves a stale lock aside under a unique name (only one contender can do that), then checks it
   * really was the stale one: if a live process took the lock meanwhile, its file is linked back.
   */
  private static async removeStale(file: string, staleContent: string): Promise<void> {
    const aside = `${file}.stale-${process.pid}-${randomBytes(4).toString("hex")}`;
    try {
      await rename(file, aside);
    } catch (err) {
      if (isErrno(err, "ENOENT")) return;
      throw err;
    }
    try {
      if ((await readLock(aside)) !== staleContent) await link(aside, file).catch(() => undefined);
    } finally {
      await unlink(aside).catch(() => undefined);
    }
  }

  /** Removes the lock file if it is still ours. */
  release(): void {
    this.releaseSync();
  }

  private releaseSync(): void {
    if (this.released) return;
    this.released = true;
    process.off("exit", this.onExit);
    try {
      if (readLockSync(this.file) === this.token) unlinkSync(this.file);
    } catch {
      // already gone
    }
  }
}
