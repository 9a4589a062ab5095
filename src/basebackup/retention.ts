/**
 * Retention (operations.md §4, storage-layout.md §7): listing a site's backups with preservation
 * requests applied, choosing which to delete (pure), and deleting them together with the WAL no
 * remaining backup needs and, for chunked/delta formats, their data objects.
 */
import {
  basebackupKey,
  chunkKey,
  deltaObjectKey,
  deltaReferences,
  DELTA_FORMATS,
  entryBasename,
  listBasebackups as listStoredBasebackups,
  latestPreservations,
  listPreservationRequests,
  parseBasebackupMetadata,
  readControlMetadata,
  walKey,
  type BasebackupInfo,
} from "../catalog/index.js";
import { privateKeyLookup } from "../config/sites.js";
import type { SiteConfig } from "../config/types.js";
import type { Metadata, StorageBackend } from "../storage/types.js";
import { StorageNotFoundError } from "../storage/types.js";
import { previousWalName, timelineOfWalName, walNameOnTimeline } from "../wal/index.js";
import { parseTimestamp, pyJsonUtc } from "../common/pycompat.js";
import { parseLabelTime } from "./label.js";
import { normalizedBackupTime } from "./schedule.js";
import type { BasebackupLogger, BasebackupMetrics } from "./types.js";

/**
 * Stored timestamps as upstream's dateutil reads them (zone-less = UTC); forms only backup_label
 * uses (a zone abbreviation such as `CEST`) fall back to its rules.
 */
export function parseStoredTime(text: string): Date {
  try {
    return new Date(parseTimestamp(text).epochMs);
  } catch {
    return parseLabelTime(text);
  }
}

/** Preservation requests: backup basename → latest `preserve-until`. */
export function parsePreservationRequests(requests: ReadonlyArray<{ metadata: Metadata }>): Map<string, Date> {
  return latestPreservations(requests, parseStoredTime);
}

/** `get_remote_basebackups_info` for one site: sorted by start-time. */
export async function listBasebackups(
  storage: StorageBackend,
  site: SiteConfig,
  siteName: string,
): Promise<BasebackupInfo[]> {
  const objects = await listStoredBasebackups([{ site: siteName, prefix: site.prefix, storage }]);
  const requests = parsePreservationRequests(await listPreservationRequests({ prefix: site.prefix, storage }));
  const result: BasebackupInfo[] = [];
  for (const obj of objects) {
    const name = entryBasename(obj);
    const md = obj.metadata;
    if (!md["start-time"]) continue; // not a backup (upstream would fail on it)
    const startTime = parseStoredTime(md["start-time"]);
    result.push({
      name,
      site: siteName,
      size: obj.size,
      lastModified: obj.lastModified,
      metadata: md,
      startTime,
      backupDecisionTime: md["backup-decision-time"] ? parseStoredTime(md["backup-decision-time"]) : startTime,
      backupReason: md["backup-reason"] ?? "scheduled",
      normalizedBackupTime: md["normalized-backup-time"] ?? normalizedBackupTime(site, startTime),
      preserveUntil: requests.get(name) ?? null,
    });
  }
  result.sort((a, b) => a.startTime.getTime() - b.startTime.getTime());
  return result;
}

/** A listing entry as the state file shows it (operations.md §7: metadata with parsed times). */
export function basebackupStateEntry(info: BasebackupInfo): Record<string, unknown> {
  return {
    name: info.name,
    size: info.size,
    last_modified: info.lastModified.toISOString().replace(/\.000Z$/, "Z"),
    metadata: {
      ...info.metadata,
      "start-time": pyJsonUtc(info.startTime),
      "backup-decision-time": pyJsonUtc(info.backupDecisionTime),
      "backup-reason": info.backupReason,
      "normalized-backup-time": info.normalizedBackupTime,
      "preserve-until": info.preserveUntil ? pyJsonUtc(info.preserveUntil) : null,
    },
  };
}

export interface RetentionSettings {
  basebackup_count: number | null;
  basebackup_count_min: number;
  basebackup_age_days_max?: number | null;
  basebackup_interval_hours: number | null;
}

export function isPreserved(backup: Pick<BasebackupInfo, "preserveUntil">, now: Date): boolean {
  return backup.preserveUntil !== null && backup.preserveUntil.getTime() > now.getTime();
}

/**
 * operations.md §4.3 (`determine_backups_to_delete`). `backups` sorted oldest first; returns
 * `{ toDelete, remaining }` without modifying the input.
 */
export function selectBackupsToDelete<T extends Pick<BasebackupInfo, "preserveUntil" | "startTime">>(
  backups: readonly T[],
  settings: RetentionSettings,
  now: Date,
): { toDelete: T[]; remaining: T[] } {
  const remaining = backups.slice();
  const toDelete: T[] = [];
  const limit = settings.basebackup_count ?? remaining.length;
  while (remaining.length > limit) {
    if (isPreserved(remaining[0], now)) break;
    toDelete.push(remaining.shift() as T);
  }
  const maxAge = settings.basebackup_age_days_max;
  const minCount = settings.basebackup_count_min;
  if (maxAge && minCount > 0) {
    const intervalMs = (settings.basebackup_interval_hours || 0) * 3600 * 1000;
    while (remaining.length > 0 && remaining.length > minCount) {
      if (isPreserved(remaining[0], now)) break;
      const ageDays = (now.getTime() - (remaining[0].startTime.getTime() + intervalMs)) / 86400000;
      if (ageDays > maxAge) toDelete.push(remaining.shift() as T);
      else break;
    }
  }
  return { toDelete, remaining };
}

/** Storage, config and name of one site of a `moved_from` chain. */
export interface RetentionSite {
  name: string;
  config: SiteConfig;
  storage: StorageBackend;
}

export interface RetentionDeps {
  log: BasebackupLogger;
  metrics?: BasebackupMetrics & { unexpectedException?: (err: unknown, where: string) => void };
}

async function deleteKeyQuiet(storage: StorageBackend, key: string): Promise<boolean> {
  try {
    await storage.deleteKey(key);
    return true;
  } catch (err) {
    if (err instanceof StorageNotFoundError) return false;
    throw err;
  }
}

/**
 * operations.md §4.4 step 1 (`delete_remote_wal_before`): deletes `xlog/` segments before
 * `needed`, walking backwards until a gap; at a gap the same position on the previous timeline
 * is tried once. Returns the names deleted.
 */
export async function deleteWalBefore(args: {
  needed: string;
  sites: readonly RetentionSite[];
  pgVersion: number | null;
  deps: RetentionDeps;
}): Promise<string[]> {
  const { needed, sites, pgVersion, deps } = args;
  deps.log.info(
    `Starting WAL deletion from ${sites.map((s) => s.name).join(", ")} before ${needed}, pg_version ${pgVersion}`,
  );
  const deleted: string[] = [];
  let name: string | null = needed;
  let valid = true;
  for (;;) {
    if (valid) {
      name = previousWalName(name as string, undefined, pgVersion);
      if (name === null) break;
    }
    const current = name as string;
    let found = false;
    for (const site of sites) {
      const key = walKey(site.config.prefix, current);
      try {
        if (await deleteKeyQuiet(site.storage, key)) found = true;
      } catch (err) {
        deps.log.error(`Problem deleting ${key}: ${(err as Error).message}`);
        deps.metrics?.unexpectedException?.(err, "delete_remote_wal_before");
      }
    }
    if (found) {
      deleted.push(current);
      valid = true;
      continue;
    }
    const tli = timelineOfWalName(current);
    if (!valid || tli <= 1) {
      deps.log.info(`Could not delete WAL file ${current}, stopping`);
      break;
    }
    valid = false;
    name = walNameOnTimeline(current, tli - 1);
    deps.log.info(`Could not delete WAL file ${current}, trying the same segment on the previous timeline (${name})`);
  }
  return deleted;
}

/** Hexdigests referenced by a delta backup's manifest. */
async function deltaHexdigests(
  site: RetentionSite,
  backup: BasebackupInfo,
): Promise<{ hexdigests: Set<string>; chunks: string[] }> {
  const key = basebackupKey(site.config.prefix, backup.name);
  return deltaReferences(await readControlMetadata(site.storage, key, backup.metadata, privateKeyLookup(site.config)));
}

/**
 * storage-layout.md §7 (`delete_remote_basebackup`): the main object plus chunks (v2), bundles and
 * hash objects no kept delta backup of the same site references (delta). Returns keys deleted.
 */
export async function deleteBasebackup(args: {
  site: RetentionSite;
  backup: BasebackupInfo;
  /** Backups that stay (all sites of the chain; only the same site's delta backups matter). */
  remaining: readonly BasebackupInfo[];
  deps: RetentionDeps;
}): Promise<string[]> {
  const { site, backup, remaining, deps } = args;
  const prefix = site.config.prefix;
  const mainKey = basebackupKey(prefix, backup.name);
  const keys = [mainKey];
  const format = backup.metadata.format;
  if (format === "pghoard-bb-v2") {
    const meta = await readControlMetadata(site.storage, mainKey, backup.metadata, privateKeyLookup(site.config));
    for (const chunk of meta.chunks ?? []) keys.push(chunkKey(prefix, "basebackup_chunk", chunk.chunk_filename));
  } else if (format && DELTA_FORMATS.has(format)) {
    const own = await deltaHexdigests(site, backup);
    const keep = new Set<string>();
    for (const other of remaining) {
      if (other.site !== backup.site || !DELTA_FORMATS.has(other.metadata.format ?? "")) continue;
      for (const h of (await deltaHexdigests(site, other)).hexdigests) keep.add(h);
    }
    for (const chunk of own.chunks) keys.push(chunkKey(prefix, "basebackup_delta_chunk", chunk));
    for (const h of own.hexdigests) if (!keep.has(h)) keys.push(deltaObjectKey(prefix, h));
  }
  // data objects first, the main object last: a half-deleted backup must not look complete
  const ordered = [...keys.slice(1), mainKey];
  const deleted: string[] = [];
  for (const key of ordered) {
    try {
      if (await deleteKeyQuiet(site.storage, key)) deleted.push(key);
      else deps.log.info(`Tried to delete non-existent basebackup object ${key}`);
    } catch (err) {
      deps.log.error(`Problem deleting ${key}: ${(err as Error).message}`);
      deps.metrics?.unexpectedException?.(err, "delete_remote_basebackup");
    }
  }
  deps.log.info(`Deleted basebackup ${backup.name}: ${deleted.length} objects`);
  return deleted;
}

export interface RetentionResult {
  /** Listing after deletion (the site's and its moved_from sites'), oldest first. */
  remaining: BasebackupInfo[];
  deleted: BasebackupInfo[];
  deletedWal: string[];
}

/**
 * `refresh_backup_list_and_delete_old`: lists the site and its `moved_from` chain, applies the
 * site's retention settings to the whole chain and deletes. Inactive sites delete nothing.
 * Must not run while a backup of the site is in progress.
 */
export async function refreshAndApplyRetention(args: {
  sites: readonly RetentionSite[];
  now?: Date;
  deps: RetentionDeps;
}): Promise<RetentionResult> {
  const { sites, deps } = args;
  const now = args.now ?? new Date();
  const main = sites[0];
  let all: BasebackupInfo[] = [];
  for (const site of sites) all = all.concat(await listBasebackups(site.storage, site.config, site.name));
  all.sort((a, b) => a.startTime.getTime() - b.startTime.getTime());
  if (!main.config.active) return { remaining: all, deleted: [], deletedWal: [] };
  const { toDelete, remaining } = selectBackupsToDelete(all, main.config, now);
  const siteByName = new Map(sites.map((s) => [s.name, s]));
  const deletedWal: string[] = [];
  for (const backup of toDelete) {
    const { pgVersion } = parseBasebackupMetadata(backup.metadata);
    const oldestRemaining = remaining[0];
    if (oldestRemaining?.metadata["start-wal-segment"]) {
      const order = [oldestRemaining.site, backup.site, ...(siteByName.get(backup.site)?.config.moved_from ?? [])];
      const walSites = [...new Set(order)]
        .map((n) => siteByName.get(n))
        .filter((s): s is RetentionSite => s !== undefined);
      deletedWal.push(
        ...(await deleteWalBefore({
          needed: oldestRemaining.metadata["start-wal-segment"],
          sites: walSites,
          pgVersion,
          deps,
        })),
      );
    }
    const site = siteByName.get(backup.site) ?? main;
    try {
      await deleteBasebackup({ site, backup, remaining, deps });
    } catch (err) {
      deps.log.error(`Problem deleting basebackup ${backup.name}: ${(err as Error).message}`);
      deps.metrics?.unexpectedException?.(err, "delete_remote_basebackup");
    }
  }
  return { remaining, deleted: toDelete, deletedWal };
}
