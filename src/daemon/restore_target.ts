/**
 * Which files a restore GET (`x-pghoard-target-path`) may write. PostgreSQL's restore_command only
 * ever asks for files directly in the WAL directory: `RECOVERYXLOG`, `RECOVERYHISTORY`, or (pg_rewind)
 * the requested segment or history name itself; the daemon adds its own prefetch and temp names.
 * Anything else in PGDATA (global/pg_control, configs, relation files) is refused.
 */
import { lstatSync, realpathSync } from "node:fs";
import path from "node:path";
import { isErrno } from "../common/errors.js";
import { HttpResponse } from "./http.js";

const RECOVERY_NAMES = new Set(["RECOVERYXLOG", "RECOVERYHISTORY"]);

/** Whether `base` is a name PostgreSQL or the daemon itself uses in the WAL directory for `requested`. */
export function isRestoreTargetName(base: string, requested: string): boolean {
  if (RECOVERY_NAMES.has(base) || base === requested || base === `${requested}.pghoard.prefetch`) return true;
  // Temp names of downloads and copies: `<requested>.<hex>.pghoard.tmp` / `.<target name>.<hex>.pghoard.tmp`.
  const temp = /^\.?(.+)\.[0-9a-f]{12}\.pghoard\.tmp$/.exec(base);
  return temp !== null && (temp[1] === requested || RECOVERY_NAMES.has(temp[1]));
}

/**
 * Throws a 400 unless `target` is a regular file (or nothing yet) directly in `walDir` with a name
 * from isRestoreTargetName. Runs after the data-directory check, so the parent exists. Synchronous:
 * three metadata calls, cheaper than three trips through libuv's thread pool (wal_restore.ts).
 */
export function checkRestoreTarget(target: string, walDir: string, requested: string): void {
  const base = path.basename(target);
  if (!isRestoreTargetName(base, requested)) {
    throw new HttpResponse(
      400,
      `Invalid xlog file path ${target}, the file name must be RECOVERYXLOG, RECOVERYHISTORY or ${requested}`,
    );
  }
  const parent = realpathSync.native(path.dirname(target));
  let wal = walDir;
  try {
    wal = realpathSync.native(walDir);
  } catch {
    // compared as configured
  }
  if (parent !== wal) {
    throw new HttpResponse(400, `Invalid xlog file path ${target}, it should be in the WAL directory ${walDir}`);
  }
  try {
    if (!lstatSync(target).isFile()) {
      throw new HttpResponse(400, `Invalid xlog file path ${target}, it exists and is not a regular file`);
    }
  } catch (err) {
    if (!isErrno(err, "ENOENT")) throw err;
  }
}
