/**
 * The frame shared by the modes that read $PGDATA themselves (local-tar, local-tar-delta-stats,
 * delta): work directory, one session holding a non-exclusive backup, the mode's data upload,
 * pg_control read after the data, pg_backup_stop, the end segment switch, and the control
 * object uploaded last (storage-layout.md §5.3).
 */
import { readFile, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { removeIfExists } from "../common/fs.js";
import {
  BackupFailure,
  BackupSession,
  createBackupWorkDir,
  encodeOptions,
  hostnameOf,
  removeWorkDir,
  throwIfAborted,
  uploaderOf,
} from "./common.js";
import {
  basebackupKey,
  controlObjectMetadata,
  controlObjectName,
  type ControlMetadata,
  type TablespaceInfo,
} from "../catalog/index.js";
import { buildControlTar } from "./control.js";
import { endSegmentCheckOf, waitForEndSegment } from "./end_segment.js";
import { parseBackupLabel } from "./label.js";
import { BackupProgress } from "./progress.js";
import { siteConfigOf, type BasebackupContext, type BasebackupResult } from "./types.js";
import { PGHOARD_VERSION } from "./version.js";

export interface ChunkedBackupRun {
  name: string;
  workDir: string;
  pgdata: string;
  tablespaces: Record<string, TablespaceInfo>;
  session: BackupSession;
  progress: BackupProgress;
  /** For chunk builders: throws when the session died or the daemon is stopping. */
  checkAlive: () => void;
  /** Registers cleanup for a failed attempt (e.g. deleting newly uploaded delta objects). */
  onFailure: (cleanup: () => Promise<void>) => void;
  /**
   * Called by a body once every data file has been read (only uploads left): the backup then
   * stops (pg_control read, pg_backup_stop, end segment switch) while the uploads go on. A body
   * that never calls it is stopped after it returned.
   */
  dataRead: () => void;
}

export interface ChunkedBackupData {
  /** `chunks`, `delta_stats`, `manifest` of the control JSON. */
  extra: Partial<ControlMetadata>;
  format: "pghoard-bb-v2" | "pghoard-delta-v2";
  totalSizePlain: number;
  totalSizeEnc: number;
  /** Stored bytes of the data objects this backup uploaded. */
  uploadedBytes: number;
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

interface ControlUpload {
  name: string;
  workDir: string;
  pgdata: string;
  tablespaces: Record<string, TablespaceInfo>;
  backupLabel: string;
  pgControl: Buffer;
  endWalSegment: string | null;
  endTime: { metadata: string; json: string };
  data: ChunkedBackupData;
  /** The backup is complete only once this resolved (its end segment is stored). */
  beforeUpload: () => Promise<void>;
}

/** Builds, encodes and uploads `basebackup/NAME.00000000.pghoard`. */
async function uploadControlObject(
  ctx: BasebackupContext,
  c: ControlUpload,
): Promise<{ key: string; metadata: Record<string, string>; storedSize: number }> {
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
    ...c.data.extra,
  };
  const tar = buildControlTar({ metadata, pgControl: c.pgControl, backupLabel: Buffer.from(c.backupLabel, "utf8") });
  const fileName = controlObjectName(c.name);
  const plainPath = path.join(c.workDir, `${fileName}.tar`);
  const localPath = path.join(c.workDir, fileName);
  await writeFile(plainPath, tar);
  const encoding = encodeOptions(ctx);
  const result = await ctx.pool.encodeFile(plainPath, localPath, encoding);
  await removeIfExists(plainPath);
  const objectMetadata = controlObjectMetadata({
    encoding,
    format: c.data.format,
    originalSize: tar.length,
    host: hostnameOf(ctx),
    decision: ctx.decision,
    endTime: c.endTime.metadata,
    endWalSegment: c.endWalSegment,
    pgVersion: ctx.pgVersion,
    activeBackupMode: site.active_backup_mode,
    basebackupMode: site.basebackup_mode,
    startTime: label.startTime,
    startWalSegment: label.startWalSegment,
    totalSizePlain: c.data.totalSizePlain,
    totalSizeEnc: c.data.totalSizeEnc,
  });
  await c.beforeUpload();
  await uploaderOf(ctx).upload({
    filetype: "basebackup",
    objectName: fileName,
    localPath,
    metadata: objectMetadata,
    fileSize: result.storedSize,
  });
  return { key: basebackupKey(site.prefix, fileName), metadata: objectMetadata, storedSize: result.storedSize };
}

export async function runChunkedBackup(
  ctx: BasebackupContext,
  body: (run: ChunkedBackupRun) => Promise<ChunkedBackupData>,
): Promise<BasebackupResult> {
  const site = siteConfigOf(ctx);
  const pgdata = await checkPgdata(ctx);
  const { name, workDir } = await createBackupWorkDir(ctx);
  const progress = new BackupProgress(name, site.basebackup_mode, ctx.log, ctx.onProgress);
  const cleanups: Array<() => Promise<void>> = [];
  let success = false;
  const endWait = new AbortController();
  try {
    const session = await BackupSession.connect(ctx);
    let data: ChunkedBackupData;
    let backupLabel = "";
    let pgControl = Buffer.alloc(0);
    let tablespaces: Record<string, TablespaceInfo> = {};
    let end: Awaited<ReturnType<BackupSession["endSegmentAndTime"]>>;
    let endStored: Promise<void> = Promise.resolve();
    let endSegment: string | undefined;
    try {
      progress.setPhase("waiting for checkpoint (fast)");
      await session.startBackup();
      let stopped = false;
      try {
        tablespaces = await session.tablespaces(pgdata);
        ctx.log.info(`Starting to backup ${pgdata} and ${Object.keys(tablespaces).length} tablespaces to ${name}`);
        const stopAndSwitch = async (): Promise<Awaited<ReturnType<BackupSession["endSegmentAndTime"]>>> => {
          session.checkAlive();
          const check = await endSegmentCheckOf(ctx, async (sql) => (await session.client.query(sql)).rows);
          progress.setPhase(
            check.kind === "server"
              ? "stopping backup (waiting for the WAL end segment to be archived)"
              : "stopping backup",
          );
          // the newest pg_control, read after every data file
          pgControl = await readFile(path.join(pgdata, "global", "pg_control"));
          const stop = await session.stopBackup({ waitForArchive: check.kind === "server" });
          backupLabel = stop.labelfile;
          stopped = true;
          if (check.kind === "storage") {
            endSegment = await session.segmentBefore(stop.lsn);
            endStored = waitForEndSegment(ctx, endSegment, endWait.signal);
            // awaited before the control object goes up; a failure meanwhile is not unhandled
            endStored.catch(() => undefined);
          }
          return await session.endSegmentAndTime();
        };
        let markRead!: () => void;
        const read = new Promise<void>((resolve) => (markRead = resolve));
        const bodyDone = body({
          name,
          workDir,
          pgdata,
          tablespaces,
          session,
          progress,
          checkAlive: () => {
            session.checkAlive();
            throwIfAborted(ctx);
          },
          onFailure: (cleanup) => cleanups.push(cleanup),
          dataRead: markRead,
        });
        // awaited below; a failure while the backup stops is not unhandled meanwhile
        bodyDone.catch(() => undefined);
        // Stop as soon as the data is read, so the stop and the end segment's archiving overlap
        // the last uploads; the control object still waits for every upload (bodyDone).
        await Promise.race([read, bodyDone]);
        try {
          end = await stopAndSwitch();
        } catch (err) {
          // nothing of a failed backup may still be uploading when its cleanup runs
          await bodyDone.catch(() => undefined);
          throw err;
        }
        data = await bodyDone;
      } finally {
        if (!stopped && session.alive) await session.stopBackup({ waitForArchive: false }).catch(() => undefined);
      }
    } finally {
      await session.close();
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
      data,
      beforeUpload: async () => {
        if (endSegment) progress.setPhase(`waiting for WAL segment ${endSegment} to be stored`);
        await endStored;
        progress.setPhase("uploading control object");
      },
    });
    success = true;
    progress.finish();
    return {
      name,
      key: control.key,
      metadata: control.metadata,
      uploadedBytes: data.uploadedBytes + control.storedSize,
      plainBytes: data.totalSizePlain,
    };
  } finally {
    endWait.abort();
    if (!success) {
      for (const cleanup of cleanups)
        await cleanup().catch((err: unknown) => ctx.log.warn(`Cleanup after a failed backup failed: ${String(err)}`));
    }
    await removeWorkDir(workDir);
  }
}
