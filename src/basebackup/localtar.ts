/**
 * `local-tar` and `local-tar-delta-stats` modes (format `pghoard-bb-v2`): $PGDATA and every user
 * tablespace are read directly inside a non-exclusive backup held open on one session, split
 * into chunks uploaded as they are ready, and the control object is uploaded last.
 */
import { createHash } from "node:crypto";
import { createAndUploadChunks } from "./chunks.js";
import { runChunkedBackup } from "./chunked.js";
import { basebackupKey, readControlMetadata, type ControlMetadata } from "../catalog/index.js";
import { privateKeyLookup } from "../config/sites.js";
import { EMBEDDED_FILE_SIZE } from "./control.js";
import { findFilesToBackup, splitFilesToChunks, type WalkItem } from "./files.js";
import { listBasebackups } from "./retention.js";
import { siteConfigOf, type BasebackupContext, type BasebackupResult } from "./types.js";

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

/** local-tar-delta-stats: what a `delta` backup would upload now (the planned_delta_backup_* metrics). */
async function reportPlannedDelta(ctx: BasebackupContext, stats: DeltaStats): Promise<void> {
  const site = siteConfigOf(ctx);
  const existing = new Set<string>();
  try {
    const backups = ctx.listBasebackups
      ? await ctx.listBasebackups()
      : await listBasebackups(ctx.storage, site, ctx.site);
    for (const backup of backups) {
      if (backup.metadata.format !== "pghoard-bb-v2" || backup.site !== ctx.site) continue;
      const meta = await readControlMetadata(
        ctx.storage,
        basebackupKey(site.prefix, backup.name),
        backup.metadata,
        privateKeyLookup(site),
      );
      const hashes = meta.delta_stats?.hashes;
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

export async function runLocalTarBasebackup(
  ctx: BasebackupContext,
  options: { withDeltaStats: boolean },
): Promise<BasebackupResult> {
  const site = siteConfigOf(ctx);
  const deltaStats: DeltaStats | undefined = options.withDeltaStats
    ? {
        hexdigestsSizes: {},
        deltaFilesTotalSize: 0,
        deltaFilesTotalCount: 0,
        embedCount: 0,
        embedSize: 0,
        chunkedFilesCount: 0,
        chunkedFilesSize: 0,
      }
    : undefined;
  const minDeltaSize = site.basebackup_delta_mode_min_delta_file_size ?? 10 * 1024 * 1024;
  return await runChunkedBackup(ctx, async (run) => {
    const totals = { bytes: 0 };
    const { totalFileCount, chunks } = await splitFilesToChunks(
      sized(findFilesToBackup(run.pgdata, run.tablespaces, ctx.log), totals),
      site.basebackup_chunk_size,
    );
    run.progress.setTotal(totals.bytes);
    run.progress.setPhase(`uploading ${chunks.length} chunks of ${totalFileCount} entries`);
    // local-tar-delta-stats: hash data files while tarring them (what a delta backup would upload)
    const hashers = new Map<string, ReturnType<typeof createHash>>();
    const chunkFiles = await createAndUploadChunks(ctx, chunks, {
      filetype: "basebackup_chunk",
      backupName: run.name,
      workDir: run.workDir,
      progress: run.progress,
      delta: false,
      onDataRead: run.dataRead,
      tarOptions: {
        checkAlive: run.checkAlive,
        onProgress: (n) => run.progress.addDone(n),
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
    const extra: Partial<ControlMetadata> = { chunks: chunkFiles };
    if (deltaStats) {
      extra.delta_stats = { hashes: deltaStats.hexdigestsSizes };
      await reportPlannedDelta(ctx, deltaStats);
    }
    const totalSizeEnc = chunkFiles.reduce((a, c) => a + c.result_size, 0);
    return {
      extra,
      format: "pghoard-bb-v2",
      totalSizePlain: chunkFiles.reduce((a, c) => a + c.input_size, 0),
      totalSizeEnc,
      uploadedBytes: totalSizeEnc,
    };
  });
}
