/**
 * The backup catalogue of a site: its `basebackup/` objects, listed the same way for retention,
 * delta bookkeeping, the daemon's state and `pghoard_restore`, and its preservation requests.
 */
import path from "node:path";
import type { Metadata, StorageBackend, StoredObject } from "../storage/types.js";
import { StorageNotFoundError } from "../storage/types.js";
import { objectKey } from "./keys.js";

/** One site's store; a `moved_from` chain is several of these, the current site first. */
export interface SiteStore {
  site: string;
  /** The site prefix (`backup_sites.<site>.prefix`). */
  prefix: string;
  storage: StorageBackend;
}

/** One `basebackup/` object as listed. */
export interface BasebackupEntry {
  /**
   * Key relative to the store root, e.g. `site/basebackup/2024-05-01_13-56_0.00000000.pghoard`
   * (what `pghoard_restore` prints and matches); from a daemon's HTTP API, the name it reports.
   */
  name: string;
  /** Stored size of the main object. */
  size: number;
  metadata: Metadata;
  /** Site whose store holds it (the site itself or one of its `moved_from` sites). */
  site?: string;
  lastModified?: Date;
  /** The backend's checksum of the stored bytes, when it keeps one (`StoredObject.md5`). */
  md5?: string;
}

/** A listed backup with its schedule and preservation fields parsed (retention, scheduling, state). */
export interface BasebackupInfo {
  /** Basename, e.g. `2024-05-01_13-56_0` or `2024-05-01_13-56_0.00000000.pghoard`. */
  name: string;
  /** Site whose storage listed it (differs from the current site for `moved_from` chains). */
  site: string;
  size: number;
  lastModified: Date;
  /** Stored metadata (strings, as listed). */
  metadata: Metadata;
  startTime: Date;
  backupDecisionTime: Date;
  backupReason: string;
  normalizedBackupTime: string | null;
  preserveUntil: Date | null;
}

/** Lists `<prefix>/basebackup/` of each store, in store order (no sorting, nothing skipped). */
export async function listBasebackups(
  stores: readonly SiteStore[],
): Promise<Array<BasebackupEntry & { site: string; lastModified: Date }>> {
  const result: Array<BasebackupEntry & { site: string; lastModified: Date }> = [];
  for (const store of stores) {
    for (const obj of await store.storage.list(objectKey(store.prefix, "basebackup"))) {
      result.push({
        name: obj.name,
        size: obj.size,
        metadata: obj.metadata,
        site: store.site,
        lastModified: obj.lastModified,
        ...(obj.md5 ? { md5: obj.md5 } : {}),
      });
    }
  }
  return result;
}

/** The basename the daemon's bookkeeping and preservation requests use. */
export function entryBasename(entry: Pick<BasebackupEntry, "name">): string {
  return path.posix.basename(entry.name);
}

/** `<prefix>/preservation_request/` objects; none when the directory does not exist. */
export async function listPreservationRequests(store: Pick<SiteStore, "prefix" | "storage">): Promise<StoredObject[]> {
  return listOrEmpty(store.storage, objectKey(store.prefix, "preservation_request"));
}

/**
 * Preservation requests (`preserve-backup`, `preserve-until` metadata): backup basename → the
 * latest `preserve-until`; `parseTime` is the caller's timestamp reader.
 */
export function latestPreservations(
  requests: ReadonlyArray<{ metadata: Metadata }>,
  parseTime: (text: string) => Date,
): Map<string, Date> {
  const result = new Map<string, Date>();
  for (const request of requests) {
    const name = request.metadata["preserve-backup"];
    const until = request.metadata["preserve-until"];
    if (!name || !until) continue;
    const date = parseTime(until);
    const existing = result.get(name);
    if (!existing || existing < date) result.set(name, date);
  }
  return result;
}

/** The WAL archive of one store: `xlog/` (segments, `.partial` files) and `timeline/` (history files). */
export interface WalArchiveListing {
  site: string;
  xlog: StoredObject[];
  timeline: StoredObject[];
}

async function listOrEmpty(storage: StorageBackend, key: string): Promise<StoredObject[]> {
  try {
    return await storage.list(key);
  } catch (err) {
    if (err instanceof StorageNotFoundError) return [];
    throw err;
  }
}

/** Lists `<prefix>/xlog/` and `<prefix>/timeline/` of a store (empty when a directory does not exist). */
export async function listWalArchive(store: SiteStore): Promise<WalArchiveListing> {
  return {
    site: store.site,
    xlog: await listOrEmpty(store.storage, objectKey(store.prefix, "xlog")),
    timeline: await listOrEmpty(store.storage, objectKey(store.prefix, "timeline")),
  };
}
