/**
 * `local-tar` and `local-tar-delta-stats` modes (format `pghoard-bb-v2`): $PGDATA and every user
 * tablespace are read directly inside a non-exclusive backup held open on one session, split
 * into chunks uploaded as they are ready, and the control object is uploaded last.
 */
import { createHash } from "node:crypto";
import { readFile, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { removeIfExists } from "../common/fs.js";
import {
  BackupFailure,
  BackupSession,
  createBackupWorkDir,
  encodeOptions,
  encodingMetadata,
  hostnameOf,
  removeWorkDir,
  sanitizeMetadata,
  uploaderOf,
} from "./common.js";
import { createAndUploadChunks } from "./chunks.js";
import { buildControlTar, readControlMetadata, type ChunkRecord, type ControlMetadata, type TablespaceInfo } from "./control.js";
import { keyLookupForSite, listBasebackups } from "./retention.js";
import { EMBEDDED_FILE_SIZE } from "./delta.js";
import { findFilesToBackup, splitFilesToChunks, type WalkItem } from "./files.js";
import { parseBackupLabel } from "./label.js";
import { BackupProgress } from "./progress.js";
import { siteConfigOf, type BasebackupContext, type BasebackupResult } from "./types.js";
import { PGHOARD_VERSION } from "./version.js";

export interface DeltaStats {
  hexdigestsSizes: Record<string, number>;
  deltaFilesTotalSize: number;
  deltaFilesTotalCount: number;
  embedCount: number;
  embedSize: number;
  chunkedFilesCount: number;
  chunkedFilesSize: number;
}

async function* sized(items: AsyncIterable<WalkItem>, totals: { bytes: number }): AsyncGenerator<WalkItem> {
  for await (const item of items) {
    if (item.op === "add") totals.bytes += item.size;
    yield item;
  }
}

/** Everything the control object needs once the data is uploaded. */
export interface ControlUpload {
  name: string;
  workDir: string;
  pgdata: string;
  tablespaces: Record<string, TablespaceInfo>;
  backupLabel: string;
  pgControl: Buffer;
  endWalSegment: string | null;
  endTime: { metadata: string; json: string };
  extra: Partial<ControlMetadata>;
  format: "pghoard-bb-v2" | "pghoard-delta-v2";
  totalSizePlain: number;
  totalSizeEnc: number;
}

/** Builds, encodes and uploads `basebackup/NAME.00000000.pghoard`; returns its key and metadata. */
export async function uploadControlObject(ctx: BasebackupContext, c: ControlUpload): Promise<{ key: string; metadata: Record<string, string>; storedSize: number }> {
  const site = siteConfigOf(ctx);
  const label = parseBackupLabel(c.backupLabel);
  const metadata: ControlMetadata = {
    backup_end_time: c.endTime.json,
    backup_end_wal_segment: c.endWalSegment,
    backup_start_time: label.startTime,
    backup_start_wal_segment: label.startWalSegment,
    pgdata: c.pgdata,
    pghoard_object: "basebackup",
    pghoard_version: PGHOARD_VERSION,
    tablespaces: c.tablespaces,
    host: hostnameOf(ctx),
    ...c.extra,
  };
  const tar = buildControlTar({ metadata, pgControl: c.pgControl, backupLabel: Buffer.from(c.backupLabel, "utf8") });
  const fileName = `${c.name}.00000000.pghoard`;
  const plainPath = path.join(c.workDir, `${fileName}.tar`);
  const localPath = path.join(c.workDir, fileName);
  await writeFile(plainPath, tar);
  const result = await ctx.pool.encodeFile(plainPath, localPath, encodeOptions(ctx));
  await removeIfExists(plainPath);
  const objectMetadata = sanitizeMetadata({
    ...encodingMetadata(ctx),
    format: c.format,
    "original-file-size": tar.length,
    host: hostnameOf(ctx),
    ...ctx.decision,
    "end-time": c.endTime.metadata,
    "end-wal-segment": c.endWalSegment,
    "pg-version": ctx.pgVersion,
    "active-backup-mode": site.active_backup_mode,
    "basebackup-mode": site.basebackup_mode,
    "start-time": label.startTime,
    "start-wal-segment": label.startWalSegment,
    "total-size-plain": c.totalSizePlain,
    "total-size-enc": c.totalSizeEnc,
  });
  await uploaderOf(ctx).upload({ filetype: "basebackup", objectName: fileName, localPath, metadata: objectMetadata, fileSize: result.storedSize });
  return { key: path.posix.join(site.prefix, "basebackup", fileName), metadata: objectMetadata, storedSize: result.storedSize };
}

/** local-tar-delta-stats: what a `delta` backup would upload now (the planned_delta_backup_* metrics). */
async function reportPlannedDelta(ctx: BasebackupContext, stats: DeltaStats): Promise<void> {
  const site = siteConfigOf(ctx);
  const existing = new Set<string>();
  try {
    const backups = ctx.listBasebackups ? await ctx.listBasebackups() : await listBasebackups(ctx.storage, site, ctx.site);
    for (const backup of backups) {
      if (backup.metadata.format !== "pghoard-bb-v2" || backup.site !== ctx.site) continue;
      const meta = await readControlMetadata(ctx.storage, path.posix.join(site.prefix, "basebackup", backup.name), backup.metadata, keyLookupForSite(site));
      const hashes = (meta.delta_stats as { hashes?: Record<string, number> } | undefined)?.hashes;
      for (const h of Object.keys(hashes ?? {})) existing.add(h);
    }
  } catch (err) {
    ctx.log.warn(`Could not read delta stats of existing backups: ${(err as Error).message}`);
    return;
  }
  const newHashes = Object.entries(stats.hexdigestsSizes).filter(([h]) => !existing.has(h));
  const plannedChunks = Math.ceil(stats.chunkedFilesSize / (site.basebackup_delta_mode_chunk_size || 1));
  const newHashesSize = newHashes.reduce((a, [, size]) => a + size, 0);
  const uploadSize = newHashesSize + stats.chunkedFilesSize;
  const uploadCount = newHashes.length + plannedChunks;
  const totalSize = stats.deltaFilesTotalSize + stats.chunkedFilesSize;
  const totalCount = stats.deltaFilesTotalCount + plannedChunks;
  ctx.log.info(
    `Current backup in \`delta\` mode would upload ${uploadCount} files of ${uploadSize} bytes (including ${newHashes.length} delta ` +
      `files of ${newHashesSize} bytes) out of ${totalCount} files of ${totalSize} bytes`,
  );
  const m = ctx.metrics;
  if (!m) return;
  if (existing.size > 0) {
    if (totalCount) m.gauge("pghoard.planned_delta_backup_changed_data_files_ratio", uploadCount / totalCount);
    if (totalSize) m.gauge("pghoard.planned_delta_backup_changed_data_size_ratio", uploadSize / totalSize);
    m.gauge("pghoard.planned_delta_backup_remained_data_size_raw", totalSize - uploadSize);
  }
  m.increase("pghoard.planned_delta_backup_total_size", uploadSize);
  m.gauge("pghoard.planned_delta_backup_upload_size", uploadSize);
  m.increase("pghoard.planned_delta_backup_total_files", uploadCount);
  m.gauge("pghoard.planned_delta_backup_upload_files", uploadCount);
}

export async function checkPgdata(ctx: BasebackupContext): Promise<string> {
  const pgdata = siteConfigOf(ctx).pg_data_directory;
  if (!pgdata) throw new BackupFailure("pg_data_directory is not set");
  try {
    if (!(await stat(pgdata)).isDirectory()) throw new Error("not a directory");
  } catch {
    throw new BackupFailure(`pg_data_directory '${pgdata}' does not exist`);
  }
  if (ctx.pgVersion < 90600) throw new BackupFailure("Postgresql < 9.6 is not supported");
  return pgdata;
}

export async function runLocalTarBasebackup(ctx: BasebackupContext, options: { withDeltaStats: boolean }): Promise<BasebackupResult> {
  const site = siteConfigOf(ctx);
  const pgdata = await checkPgdata(ctx);
  const { name, workDir } = await createBackupWorkDir(ctx);
  const progress = new BackupProgress(name, site.basebackup_mode, ctx.log, ctx.onProgress);
  const deltaStats: DeltaStats | undefined = options.withDeltaStats
    ? { hexdigestsSizes: {}, deltaFilesTotalSize: 0, deltaFilesTotalCount: 0, embedCount: 0, embedSize: 0, chunkedFilesCount: 0, chunkedFilesSize: 0 }
    : undefined;
  const minDeltaSize = site.basebackup_delta_mode_min_delta_file_size ?? 10 * 1024 * 1024;
  try {
    const session = await BackupSession.connect(ctx);
    let tablespaces: Record<string, TablespaceInfo> = {};
    let chunkFiles: ChunkRecord[] = [];
    let backupLabel: string;
    let pgControl: Buffer;
    let end: Awaited<ReturnType<BackupSession["endSegmentAndTime"]>>;
    try {
      progress.setPhase("starting backup (checkpoint)");
      await session.startBackup();
      let stopped = false;
      try {
        tablespaces = await session.tablespaces(pgdata);
        ctx.log.info(`Starting to backup ${pgdata} and ${Object.keys(tablespaces).length} tablespaces to ${name}`);
        const totals = { bytes: 0 };
        const { totalFileCount, chunks } = await splitFilesToChunks(
          sized(findFilesToBackup(pgdata, tablespaces, ctx.log), totals),
          site.basebackup_chunk_size,
        );
        progress.setTotal(totals.bytes);
        progress.setPhase(`uploading ${chunks.length} chunks of ${totalFileCount} entries`);
        // local-tar-delta-stats: hash data files while tarring them (what a delta backup would upload)
        const hashers = new Map<string, ReturnType<typeof createHash>>();
        chunkFiles = await createAndUploadChunks(ctx, chunks, {
          filetype: "basebackup_chunk",
          backupName: name,
          workDir,
          progress,
          delta: false,
          tarOptions: {
            checkAlive: () => {
              session.checkAlive();
              if (ctx.signal?.aborted) throw new BackupFailure("thread termination requested");
            },
            onProgress: (n) => progress.addDone(n),
            onFile: deltaStats
              ? (archivePath, size) => {
                  if (size <= EMBEDDED_FILE_SIZE) {
                    deltaStats.embedCount += 1;
                    deltaStats.embedSize += size;
                    return undefined;
                  }
                  if (minDeltaSize && size < minDeltaSize) {
                    deltaStats.chunkedFilesCount += 1;
                    deltaStats.chunkedFilesSize += size;
                    return undefined;
                  }
                  const hash = createHash("blake2s256");
                  hashers.set(archivePath, hash);
                  return (data: Buffer) => hash.update(data);
                }
              : undefined,
            onFileDone: deltaStats
              ? (archivePath, size) => {
                  const hash = hashers.get(archivePath);
                  if (!hash) return;
                  hashers.delete(archivePath);
                  deltaStats.hexdigestsSizes[hash.digest("hex")] = size;
                  deltaStats.deltaFilesTotalSize += size;
                  deltaStats.deltaFilesTotalCount += 1;
                }
              : undefined,
          },
        });
        session.checkAlive();
        progress.setPhase("stopping backup");
        pgControl = await readFile(path.join(pgdata, "global", "pg_control"));
        backupLabel = await session.stopBackup();
        stopped = true;
      } finally {
        if (!stopped && session.alive) await session.stopBackup().catch(() => undefined);
      }
      end = await session.endSegmentAndTime();
    } finally {
      await session.close();
    }
    const totalSizePlain = chunkFiles.reduce((a, c) => a + c.input_size, 0);
    const totalSizeEnc = chunkFiles.reduce((a, c) => a + c.result_size, 0);
    const extra: Partial<ControlMetadata> = { chunks: chunkFiles };
    if (deltaStats) {
      extra.delta_stats = { hashes: deltaStats.hexdigestsSizes };
      await reportPlannedDelta(ctx, deltaStats);
    }
    progress.setPhase("uploading control object");
    const control = await uploadControlObject(ctx, {
      name,
      workDir,
      pgdata,
      tablespaces,
      backupLabel,
      pgControl,
      endWalSegment: end.endWalSegment,
      endTime: end.endTime,
      extra,
      format: "pghoard-bb-v2",
      totalSizePlain,
      totalSizeEnc,
    });
    progress.finish();
    return { name, key: control.key, metadata: control.metadata, uploadedBytes: totalSizeEnc + control.storedSize, plainBytes: totalSizePlain };
  } finally {
    await removeWorkDir(workDir);
  }
}
