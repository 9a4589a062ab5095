/**
 * Refusing restore targets that belong to a live cluster (issue 11): a directory in use by a
 * running PostgreSQL (its `postmaster.pid` names a live postgres process, or a running postmaster
 * has it as data directory or tablespace) or the `pg_data_directory` of an active site of the
 * config. Checked before anything is written, and `--overwrite`/`--delta` do not bypass it:
 * restoring over a live cluster destroys it while the postmaster keeps running.
 */
import { lstat, readdir, readFile, readlink, realpath } from "node:fs/promises";
import path from "node:path";

import type { PghoardConfig } from "../config/types.js";
import { RestoreError } from "./errors.js";

/** A directory a running or configured cluster uses, and why we know. */
export interface LiveDirectory {
  path: string;
  reason: string;
}

/**
 * The real path of `target` even when it does not exist yet: the real path of its nearest
 * existing ancestor plus the rest, so symlinked parents compare correctly.
 */
export async function realTargetPath(target: string): Promise<string> {
  const absolute = path.resolve(target);
  const rest: string[] = [];
  for (let dir = absolute; ; dir = path.dirname(dir)) {
    try {
      return path.join(await realpath(dir), ...rest.reverse());
    } catch {
      if (path.dirname(dir) === dir) return absolute;
      rest.push(path.basename(dir));
    }
  }
}

function overlaps(a: string, b: string): boolean {
  return a === b || a.startsWith(b + path.sep) || b.startsWith(a + path.sep);
}

/** True unless the pid certainly does not exist (EPERM: alive, but another user's). */
function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** `/proc/<pid>/comm`, or undefined where there is no procfs or we may not read it. */
async function processName(pid: number): Promise<string | undefined> {
  try {
    return (await readFile(`/proc/${pid}/comm`, "utf8")).trim();
  } catch {
    return undefined;
  }
}

const POSTGRES_NAMES = new Set(["postgres", "postmaster"]);

/** The working directory of a process (PostgreSQL runs in its data directory), if readable. */
async function processCwd(pid: number): Promise<string | undefined> {
  try {
    return await readlink(`/proc/${pid}/cwd`);
  } catch {
    return undefined;
  }
}

/**
 * The live process a `postmaster.pid` in `dir` names, or undefined for none or a stale file: its
 * pid is gone, or (where /proc tells) belongs to something that is not a postgres of this directory.
 */
export async function livePostmasterOf(dir: string): Promise<number | undefined> {
  let text: string;
  try {
    text = await readFile(path.join(dir, "postmaster.pid"), "utf8");
  } catch {
    return undefined;
  }
  const pid = Number(text.split("\n")[0].trim());
  if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid || !processExists(pid)) return undefined;
  const name = await processName(pid);
  if (name !== undefined && !POSTGRES_NAMES.has(name)) return undefined; // pid reused by another program
  const cwd = await processCwd(pid);
  if (cwd !== undefined && cwd !== (await realTargetPath(dir))) return undefined; // a postgres of another directory
  return pid;
}

/**
 * Data directories and tablespace directories of every running postmaster we can see (Linux
 * /proc; processes of other users are invisible unless we are root, then `postmaster.pid` is all
 * we have).
 */
export async function runningClusterDirectories(): Promise<LiveDirectory[]> {
  let entries: string[];
  try {
    entries = await readdir("/proc");
  } catch {
    return [];
  }
  const dataDirs = new Map<string, number>();
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    if (!POSTGRES_NAMES.has((await processName(pid)) ?? "")) continue;
    const cwd = await processCwd(pid);
    // Every backend runs in the data directory too; one entry per directory is enough.
    if (cwd !== undefined && cwd !== "/" && !dataDirs.has(cwd)) dataDirs.set(cwd, pid);
  }
  const result: LiveDirectory[] = [];
  for (const [dataDir, pid] of dataDirs) {
    result.push({ path: dataDir, reason: `the data directory of a running PostgreSQL (pid ${pid})` });
    const tblspc = path.join(dataDir, "pg_tblspc");
    for (const link of await readdir(tblspc).catch(() => [] as string[])) {
      try {
        const st = await lstat(path.join(tblspc, link));
        if (!st.isSymbolicLink()) continue;
        result.push({
          path: await realpath(path.join(tblspc, link)),
          reason: `tablespace ${link} of the running PostgreSQL (pid ${pid}) in '${dataDir}'`,
        });
      } catch {
        // a dangling link: nothing is there to protect
      }
    }
  }
  return result;
}

/** `pg_data_directory` of every active site of the config. */
async function activeSiteDirectories(config: PghoardConfig): Promise<LiveDirectory[]> {
  const result: LiveDirectory[] = [];
  for (const [name, site] of Object.entries(config.backup_sites)) {
    if (site.active === false || !site.pg_data_directory) continue;
    result.push({
      path: await realTargetPath(site.pg_data_directory),
      reason: `the pg_data_directory of active site '${name}' in the configuration`,
    });
  }
  return result;
}

/** Checks the restore targets, gathering what is live once; throws a RestoreError for the first conflict. */
export class TargetSafety {
  private constructor(private readonly live: LiveDirectory[]) {}

  static async load(config: PghoardConfig): Promise<TargetSafety> {
    return new TargetSafety([...(await activeSiteDirectories(config)), ...(await runningClusterDirectories())]);
  }

  /** `what`: "$PGDATA" or "Tablespace 'name'", as the other destination messages say it. */
  async check(dir: string, what: string): Promise<void> {
    const pid = await livePostmasterOf(dir);
    const suffix = "refusing to restore into it, even with --overwrite or --delta; stop that PostgreSQL first";
    if (pid !== undefined) {
      throw new RestoreError(
        `${what} target directory '${dir}' is in use by a running PostgreSQL (postmaster.pid names live process ${pid}), ${suffix}`,
      );
    }
    const real = await realTargetPath(dir);
    const conflict = this.live.find((d) => overlaps(d.path, real));
    if (conflict) {
      const where = conflict.path === real ? "is" : `overlaps '${conflict.path}',`;
      const fix = conflict.reason.startsWith("the pg_data_directory")
        ? "refusing to restore into it, even with --overwrite or --delta; restore elsewhere, or mark the site inactive"
        : suffix;
      throw new RestoreError(`${what} target directory '${dir}' ${where} ${conflict.reason}, ${fix}`);
    }
  }
}
