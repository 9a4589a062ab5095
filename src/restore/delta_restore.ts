/**
 * `get-basebackup --delta` (as pgBackRest's): restore over an existing, stopped data directory,
 * rewriting only what differs from the backup and removing what the backup does not have, so the
 * result equals a fresh restore. The writing itself is RestoreTarget's delta mode; this module
 * prepares the directories before and prunes them after.
 *
 * Crash safety: `global/pg_control` is removed (durably) before anything else changes and only
 * the very last step of the restore puts the backup's one in place, so a delta restore that
 * failed or was interrupted leaves a directory PostgreSQL refuses to start; running it again
 * finishes the job.
 */
import { lstat, readdir, rm, chmod, access } from "node:fs/promises";
import path from "node:path";

import { DELTA_FILE_HASH_ALGORITHM } from "../catalog/control.js";
import { fsyncDirectory } from "../common/fs.js";
import { hashLocalFile, nodeHashName } from "../fileformat/hash.js";
import { RestoreError } from "./errors.js";
import { meaningfulEntries, PG_CONTROL_INCOMPLETE, type RestoreTarget } from "./target.js";

const PG_CONTROL = "global/pg_control";

/** True when the local file has exactly the manifest's size and digest (hashed in the calling worker). */
export async function hasContent(absolute: string, size: number, hexdigest: string): Promise<boolean> {
  try {
    const st = await lstat(absolute);
    if (!st.isFile() || st.size !== size) return false;
    return (await hashLocalFile(absolute, nodeHashName(DELTA_FILE_HASH_ALGORITHM), size)) === hexdigest;
  } catch {
    return false;
  }
}

/**
 * Refuses a non-empty directory that does not look like a data directory: a delta restore
 * deletes every file the backup does not have, so a mistyped path must not lose someone's files.
 */
export async function checkDeltaTarget(pgdata: string, shownAs: string): Promise<void> {
  try {
    await access(path.join(pgdata, "PG_VERSION"));
  } catch {
    throw new RestoreError(
      `$PGDATA target directory '${shownAs}' is not empty and has no PG_VERSION, so it is not a PostgreSQL data directory; --delta would delete its files, aborting.`,
    );
  }
}

/**
 * Before any data is written: `global/pg_control` goes first (so the directory cannot be
 * started until the restore completes), then every symlink, socket or other special file in the
 * trees (a fresh restore has none; the backup's symlinks are created at the end, so no write can
 * follow an old one out of the target).
 */
export async function prepareDeltaTarget(target: RestoreTarget): Promise<void> {
  const pgControl = path.join(target.pgdata, PG_CONTROL);
  await rm(pgControl, { force: true });
  await fsyncDirectory(path.dirname(pgControl)).catch(() => undefined);
  for (const root of [target.pgdata, ...target.tablespaces.map((ts) => ts.path)]) {
    await walk(root, async (absolute, isDirectory, isFile) => {
      if (isDirectory || isFile) return isDirectory;
      await rm(absolute, { force: true });
      return false;
    });
  }
}

/**
 * After every object was restored, before symlinks and directory modes are applied: removes
 * every file and directory the backup did not supply and gives the directories a fresh restore
 * creates implicitly its mode (0700). Returns the number of entries removed.
 */
export async function pruneDeltaTarget(target: RestoreTarget): Promise<number> {
  let removed = 0;
  for (const root of [target.pgdata, ...target.tablespaces.map((ts) => ts.path)]) {
    await walk(root, async (absolute, isDirectory) => {
      if (!target.supplies(absolute)) {
        await rm(absolute, { recursive: true, force: true });
        removed += 1;
        return false;
      }
      if (isDirectory && !target.hasDirectoryMode(absolute)) await chmod(absolute, 0o700);
      return isDirectory;
    });
  }
  return removed;
}

/** After a failed delta restore: the held-back pg_control must not survive either. */
export async function abandonDeltaRestore(pgdata: string): Promise<void> {
  await rm(path.join(pgdata, PG_CONTROL_INCOMPLETE), { force: true });
  await rm(path.join(pgdata, PG_CONTROL), { force: true });
}

/**
 * Visits every entry below `root` (not following symlinks; `lost+found` at the root is left
 * alone, as restores treat it); `visit` returns whether to descend into a directory.
 */
async function walk(
  root: string,
  visit: (absolute: string, isDirectory: boolean, isFile: boolean) => Promise<boolean>,
): Promise<void> {
  const names = await meaningfulEntries(root).catch(() => [] as string[]);
  const stack = names.map((name) => path.join(root, name));
  while (stack.length > 0) {
    const absolute = stack.pop()!;
    const st = await lstat(absolute).catch(() => undefined);
    if (st === undefined) continue;
    if (await visit(absolute, st.isDirectory(), st.isFile())) {
      for (const name of await readdir(absolute)) stack.push(path.join(absolute, name));
    }
  }
}
