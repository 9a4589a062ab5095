/**
 * pghoard_archive_cleanup (cli.md §3): deletes WAL segments in storage that no basebackup needs.
 *
 * Upstream deletes every `xlog/` object whose name sorts below the smallest `start-wal-segment`;
 * because the timeline leads the name, that also removes segments of an older timeline that a
 * kept backup of that timeline still needs, and keeps segments of a newer timeline that nothing
 * needs. Here each segment is judged by (timeline, position): a segment on timeline T at position P
 * is kept when some basebackup started on timeline B at position S ≤ P, and T is B itself or a
 * timeline that branched off B's line at or after S (from the `timeline/*.history` files; a
 * timeline without a readable history file counts as a possible descendant, so nothing is
 * deleted on a guess). `.partial` objects count as their segment; other names are left alone.
 */
import path from "node:path";
import { listBasebackups, objectKey } from "../catalog/index.js";
import {
  ConfigError,
  getSiteFromConfig,
  loadConfig,
  privateKeyLookup,
  type PghoardConfig,
  type SiteConfig,
} from "../config/index.js";
import { decodeBuffer, type Metadata as FileMetadata } from "../fileformat/index.js";
import { createStorage, StorageNotFoundError, type StorageBackend, type StoredObject } from "../storage/index.js";
import {
  WAL_SEG_SIZE,
  isHistoryName,
  isWalName,
  parseTimelineHistory,
  parseWalName,
  timelineOfHistoryName,
  walNameToLsn,
  type TimelineHistoryEntry,
} from "../wal/index.js";
import { EXIT_FAIL, EXIT_OK, configPathOrNull, runCli, toolLogger } from "./cli.js";
import { ARCHIVE_CLEANUP_SPEC } from "./cli_specs.js";
import type { Logger } from "../common/logger.js";

export interface BackupStart {
  name: string;
  /** `start-wal-segment` metadata. */
  startWal: string;
  /** `pg-version` metadata when present (segment arithmetic of servers before 9.3). */
  pgVersion?: number;
}

export interface WalObject {
  key: string;
  /** Basename as stored (`SEG` or `SEG.partial`). */
  name: string;
  size: number;
}

export interface CleanupPlan {
  /** Smallest start segment in plain string order: upstream's "first required" (for the log line). */
  firstRequired: string;
  orphans: WalObject[];
  kept: WalObject[];
  /** Objects in `xlog/` whose name is not a WAL segment: never touched. */
  ignored: WalObject[];
}

/** Histories by timeline; null = the history file exists but could not be read. */
export type HistoryMap = Map<number, TimelineHistoryEntry[] | null>;

function positionKey(name: string): [number, number] {
  const { log, seg } = parseWalName(name);
  return [log, seg];
}

function positionAtOrAfter(a: [number, number], b: [number, number]): boolean {
  return a[0] > b[0] || (a[0] === b[0] && a[1] >= b[1]);
}

/**
 * Whether WAL of `timeline` can belong to a restore of a backup that started on `backupTli` at
 * `backupStartLsn` (start of its first segment).
 */
function timelineReachable(
  timeline: number,
  backupTli: number,
  backupStartLsn: bigint,
  histories: HistoryMap,
): boolean {
  if (timeline === backupTli) return true;
  if (timeline < backupTli) return false;
  const history = histories.get(timeline);
  if (!history) return true; // unknown ancestry: keep rather than guess
  const fork = history.find((entry) => entry.tli === backupTli);
  // The timeline contains the backup's start only if it left backupTli after that point.
  return fork !== undefined && fork.switchpoint > backupStartLsn;
}

export function planArchiveCleanup(
  backups: readonly BackupStart[],
  walObjects: readonly WalObject[],
  histories: HistoryMap,
): CleanupPlan {
  if (backups.length === 0) throw new Error("no basebackups");
  const starts = backups.map((b) => {
    if (!isWalName(b.startWal))
      throw new Error(`basebackup '${b.name}' has an invalid start-wal-segment '${b.startWal}'`);
    const { timeline } = parseWalName(b.startWal);
    return {
      timeline,
      position: positionKey(b.startWal),
      lsn: walNameToLsn(b.startWal, WAL_SEG_SIZE, b.pgVersion ?? null),
    };
  });
  const firstRequired = backups.map((b) => b.startWal).sort()[0] as string;
  const plan: CleanupPlan = { firstRequired, orphans: [], kept: [], ignored: [] };
  for (const obj of walObjects) {
    const segment = obj.name.endsWith(".partial") ? obj.name.slice(0, -".partial".length) : obj.name;
    if (!isWalName(segment)) {
      plan.ignored.push(obj);
      continue;
    }
    const { timeline } = parseWalName(segment);
    const position = positionKey(segment);
    const needed = starts.some(
      (s) => positionAtOrAfter(position, s.position) && timelineReachable(timeline, s.timeline, s.lsn, histories),
    );
    (needed ? plan.kept : plan.orphans).push(obj);
  }
  return plan;
}

export interface CleanupResult extends CleanupPlan {
  totalOrphanBytes: number;
  deleted: number;
}

export class ArchiveCleanup {
  constructor(
    private readonly storage: StorageBackend,
    private readonly site: SiteConfig,
    private readonly log: Logger,
    private readonly siteName: string,
  ) {}

  async listBackups(): Promise<BackupStart[]> {
    const objects = await listBasebackups([{ site: this.siteName, prefix: this.site.prefix, storage: this.storage }]);
    return objects.map((obj) => {
      const startWal = obj.metadata["start-wal-segment"];
      if (!startWal) {
        throw new ConfigError(
          `basebackup '${obj.name}' has no start-wal-segment metadata; refusing to guess which WAL it needs`,
        );
      }
      const pgVersion = obj.metadata["pg-version"] ? Number.parseInt(obj.metadata["pg-version"], 10) : undefined;
      return { name: obj.name, startWal, pgVersion: Number.isNaN(pgVersion) ? undefined : pgVersion };
    });
  }

  /** Histories of the timelines above the oldest backup timeline that have segments in storage. */
  async readHistories(timelines: Iterable<number>): Promise<HistoryMap> {
    const histories: HistoryMap = new Map();
    const wanted = new Set(timelines);
    if (wanted.size === 0) return histories;
    const stored = await this.storage.list(objectKey(this.site.prefix, "timeline"));
    const keys = privateKeyLookup(this.site);
    for (const obj of stored) {
      const name = path.posix.basename(obj.name);
      if (!isHistoryName(name)) continue;
      const tli = timelineOfHistoryName(name);
      if (!wanted.has(tli)) continue;
      try {
        const { data, metadata } = await this.storage.getContentsToMemory(obj.name);
        const text = await decodeBuffer(data, metadata as FileMetadata, keys);
        histories.set(tli, parseTimelineHistory(text));
      } catch (err) {
        this.log.warn(
          `Cannot read timeline history ${name} (${(err as Error).message}); keeping every segment of timeline ${tli} that may descend from a backup`,
        );
        histories.set(tli, null);
      }
    }
    return histories;
  }

  async run(dryRun: boolean): Promise<CleanupResult> {
    const backups = await this.listBackups();
    if (backups.length === 0) throw new NoBasebackupsError();
    const walObjects: WalObject[] = (await this.storage.list(objectKey(this.site.prefix, "xlog"))).map(
      (o: StoredObject) => ({
        key: o.name,
        name: path.posix.basename(o.name),
        size: o.size,
      }),
    );
    const minBackupTli = Math.min(...backups.map((b) => parseWalName(b.startWal).timeline));
    const timelines = new Set<number>();
    for (const w of walObjects) {
      const seg = w.name.slice(0, 24);
      if (isWalName(seg)) {
        const tli = parseWalName(seg).timeline;
        if (tli > minBackupTli) timelines.add(tli);
      }
    }
    const histories = await this.readHistories(timelines);
    const plan = planArchiveCleanup(backups, walObjects, histories);
    this.log.info(`First required WAL segment is '${plan.firstRequired}'`);
    for (const b of backups)
      this.log.debug(`Basebackup '${b.name}' needs WAL from '${b.startWal}' on its timeline and descendants`);
    let total = 0;
    let deleted = 0;
    for (const orphan of plan.orphans) {
      this.log.info(`Orphan WAL segment '${orphan.name}' needs to be deleted${dryRun ? " (dry run)" : ""}`);
      total += orphan.size;
      if (dryRun) continue;
      try {
        await this.storage.deleteKey(orphan.key);
        deleted += 1;
      } catch (err) {
        if (err instanceof StorageNotFoundError)
          this.log.error(`Storage report segment '${orphan.name}' is not available`);
        else throw err;
      }
    }
    for (const ignored of plan.ignored) this.log.debug(`Not a WAL segment, left alone: '${ignored.name}'`);
    this.log.info(`Total orphan WAL segments size is ${total} bytes`);
    if (dryRun) this.log.info(`Dry run: ${plan.orphans.length} orphan segment(s) found, nothing deleted`);
    return { ...plan, totalOrphanBytes: total, deleted };
  }
}

export class NoBasebackupsError extends Error {
  constructor() {
    super("No basebackups found in storage: cannot tell which WAL is needed, nothing deleted");
    this.name = "NoBasebackupsError";
  }
}

interface CleanupOptions {
  site?: string;
  config?: string;
  dryRun?: boolean;
}

export async function main(argv: string[]): Promise<number> {
  let log: Logger | undefined;
  return runCli(
    ARCHIVE_CLEANUP_SPEC,
    argv,
    async (inv) => {
      const opts = inv.opts as CleanupOptions;
      log = toolLogger("ArchiveCleanup");
      const configPath = configPathOrNull(opts.config);
      if (configPath === null) return EXIT_FAIL;
      let storage: StorageBackend | undefined;
      try {
        const config: PghoardConfig = await loadConfig(configPath, {
          tool: "archive_cleanup",
          warn: (m) => log?.warn(m),
        });
        const siteName = getSiteFromConfig(config, opts.site);
        const site = config.backup_sites[siteName] as SiteConfig;
        storage = await createStorage(site.object_storage);
        await new ArchiveCleanup(storage, site, log, siteName).run(opts.dryRun === true);
        return EXIT_OK;
      } finally {
        await storage?.close().catch(() => undefined);
      }
    },
    { exitOnInterrupt: true, fatal: () => ({ write: (line) => log?.error(line) }) },
  );
}
