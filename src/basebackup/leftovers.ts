/**
 * What an interrupted basebackup (a crash, SIGKILL, power loss) leaves behind, removed again: its
 * work directory in the spool (`basebackup_incoming/<NAME>/`, chunks, bundles and delta files
 * waiting for upload), its uploaded chunks with no control object in the store, the delta hash
 * objects it uploaded that no completed backup references, and temp files of writes the crash
 * cut off in a local store. Backups cannot be resumed, so none of it is of use.
 *
 * Only call it while no backup of the site (nor of another site with the same prefix) runs in
 * this process: every work directory and every chunk directory without a control object is then
 * a leftover (the daemon's lock guarantees no other daemon uses this spool). Delta hash objects
 * are shared between backups: a delta backup skips uploading the hashes that completed backups
 * reference, so an unreferenced one is never reused, and the next backup that needs its content
 * uploads it again. Only objects last modified before `startedAt` go, so an upload of this
 * process is never taken for a leftover.
 */
import { readdir, rm } from "node:fs/promises";
import path from "node:path";
import {
  findOrphanChunkDirectories,
  findOrphanDeltaObjects,
  HASH_OBJECT_NAME,
  type DeltaReferenceCache,
  type OrphanChunkDirectory,
} from "../catalog/orphans.js";
import { isErrno } from "../common/errors.js";
import { privateKeyLookup } from "../config/sites.js";
import type { PghoardConfig, SiteConfig } from "../config/types.js";
import { StorageNotFoundError, type StorageBackend } from "../storage/types.js";
import { siteIncomingDir } from "./common.js";
import type { BasebackupLogger } from "./types.js";

export interface LeftoverCleanup {
  /** Work directories removed from the spool. */
  workDirs: string[];
  /** Chunk directories removed from the store. */
  chunkDirectories: OrphanChunkDirectory[];
  /** Temp files removed from a local store (keys). */
  tempFiles: string[];
  /** Delta hash objects no completed backup references, removed from the store. */
  deltaObjects: { count: number; bytes: number };
}

async function removeOrphanDeltaObjects(
  store: { site: string; prefix: string; storage: StorageBackend },
  siteConfig: SiteConfig,
  olderThan: Date,
  cache: DeltaReferenceCache | undefined,
  log: BasebackupLogger,
): Promise<{ count: number; bytes: number }> {
  const orphans = await findOrphanDeltaObjects(store, { olderThan, keys: privateKeyLookup(siteConfig), cache });
  let count = 0;
  let bytes = 0;
  for (const obj of orphans) {
    try {
      await store.storage.deleteKey(obj.name);
    } catch (err) {
      if (err instanceof StorageNotFoundError) continue;
      throw err;
    }
    count += 1;
    bytes += obj.size;
  }
  // a local store's hash objects whose sidecar the crash cut off: never listed, so never referenced
  for (const file of (await store.storage.removeUnpublishedObjects?.(
    path.posix.join(store.prefix, "basebackup_delta"),
    olderThan,
    (name) => HASH_OBJECT_NAME.test(name),
  )) ?? []) {
    count += 1;
    bytes += file.size;
  }
  if (count > 0)
    log.info(
      `Deleted ${count} delta objects (${bytes} bytes) from ${path.posix.join(store.prefix, "basebackup_delta")} that no completed basebackup references, left by interrupted delta basebackups`,
    );
  return { count, bytes };
}

async function removeWorkDirs(dir: string, log: BasebackupLogger): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if (isErrno(err, "ENOENT")) return [];
    throw err;
  }
  const removed: string[] = [];
  for (const name of names) {
    const full = path.join(dir, name);
    await rm(full, { recursive: true, force: true });
    log.info(`Removed ${full} left by an interrupted basebackup`);
    removed.push(full);
  }
  return removed;
}

export async function removeInterruptedBackupLeftovers(args: {
  config: Pick<PghoardConfig, "backup_location">;
  site: string;
  siteConfig: SiteConfig;
  storage: StorageBackend;
  /** Store temp files and delta objects modified since then may belong to an upload of this process and are kept. */
  startedAt: Date;
  /** Manifests read on an earlier call (the daemon keeps one per site). */
  deltaReferenceCache?: DeltaReferenceCache;
  log: BasebackupLogger;
}): Promise<LeftoverCleanup> {
  const { siteConfig, storage, log } = args;
  const workDirs = await removeWorkDirs(siteIncomingDir(args.config, siteConfig), log);
  const store = { site: args.site, prefix: siteConfig.prefix, storage };
  const chunkDirectories = await findOrphanChunkDirectories(store);
  for (const orphan of chunkDirectories) {
    await storage.deleteTree(orphan.key);
    log.info(
      `Deleted ${orphan.key} (${orphan.objects} chunks, ${orphan.bytes} bytes) of basebackup ${orphan.backupName}, which was never completed`,
    );
  }
  const tempFiles = (await storage.removeInterruptedWrites?.(siteConfig.prefix, args.startedAt)) ?? [];
  for (const key of tempFiles) log.info(`Deleted ${key}, left in the store by an interrupted upload`);
  // last: an unreadable manifest stops only this step
  const deltaObjects = await removeOrphanDeltaObjects(store, siteConfig, args.startedAt, args.deltaReferenceCache, log);
  return { workDirs, chunkDirectories, tempFiles, deltaObjects };
}
