/**
 * Pieces shared by the modes: backup names and work directories, encode options from the
 * configuration, the default uploader, and the SQL of a non-exclusive backup on one session.
 */
import { mkdir, readlink, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import { nodeConnectionInfo } from "../config/connection.js";
import type { PghoardConfig, SiteConfig } from "../config/types.js";
import type { EncodeOptions } from "../fileformat/index.js";
import {
  backupNameOf,
  listBasebackups,
  objectKey as storeObjectKey,
  siteEncodeOptions,
  type ObjectFileType,
} from "../catalog/index.js";
import { removeIfExists } from "../common/fs.js";
import { BASEBACKUP_LABEL } from "./control.js";
import { pyJsonUtc, pyStrUtc } from "../common/pycompat.js";
import { siteConfigOf, type BasebackupContext, type BasebackupUploader, type UploadRequest } from "./types.js";

export class BackupFailure extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "BackupFailure";
  }
}

export function hostnameOf(ctx: BasebackupContext): string {
  return ctx.hostname ?? os.hostname();
}

/** `<backup_location>/<prefix>/basebackup_incoming`. */
export function incomingDir(ctx: BasebackupContext): string {
  return siteIncomingDir(ctx.config, siteConfigOf(ctx));
}

export function siteIncomingDir(
  config: Pick<PghoardConfig, "backup_location">,
  site: Pick<SiteConfig, "prefix">,
): string {
  const location = config.backup_location ?? path.join(os.tmpdir(), "pghoard");
  return path.join(location, site.prefix, "basebackup_incoming");
}

function pad(n: number): string {
  return String(n).padStart(2, "0");
}

/**
 * storage-layout.md §3: `YYYY-MM-DD_HH-MM_<n>` (UTC). Upstream picks `<n>` so that the local work
 * directory is new and never removes work directories; we remove them, so names already in the
 * store are skipped too (otherwise two backups in the same minute would share a name).
 */
export async function createBackupWorkDir(
  ctx: BasebackupContext,
  now = new Date(),
): Promise<{ name: string; workDir: string }> {
  const base = incomingDir(ctx);
  await mkdir(base, { recursive: true });
  const stamp = `${now.getUTCFullYear()}-${pad(now.getUTCMonth() + 1)}-${pad(now.getUTCDate())}_${pad(now.getUTCHours())}-${pad(now.getUTCMinutes())}`;
  const taken = new Set<string>();
  for (const entry of await listBasebackups([
    { site: ctx.site, prefix: siteConfigOf(ctx).prefix, storage: ctx.storage },
  ])) {
    taken.add(backupNameOf(entry.name));
  }
  for (let i = 0; ; i++) {
    const name = `${stamp}_${i}`;
    if (taken.has(name)) continue;
    const workDir = path.join(base, name);
    try {
      await mkdir(workDir);
      return { name, workDir };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
  }
}

export async function removeWorkDir(workDir: string): Promise<void> {
  await rm(workDir, { recursive: true, force: true });
}

export function encodeOptions(ctx: BasebackupContext): EncodeOptions {
  const site = siteConfigOf(ctx);
  const opts = siteEncodeOptions(ctx.config, site);
  if (opts.encryptionKeyId && !opts.publicKeyPem)
    throw new BackupFailure(`No public key for encryption_key_id ${opts.encryptionKeyId}`);
  if (site.basebackup_compression_threads) opts.zstdThreads = site.basebackup_compression_threads;
  return opts;
}

/** `<site prefix>/<filetype>/<objectName>` of the backup's site. */
export function objectKey(ctx: BasebackupContext, filetype: ObjectFileType, objectName: string): string {
  return storeObjectKey(siteConfigOf(ctx).prefix, filetype, objectName);
}

/** Uploads straight to the site's storage, then deletes the local file. */
export class DirectUploader implements BasebackupUploader {
  constructor(private readonly ctx: BasebackupContext) {}

  async upload(request: UploadRequest): Promise<void> {
    const key = objectKey(this.ctx, request.filetype, request.objectName);
    await this.ctx.storage.storeFileFromDisk(key, request.localPath, {
      ...request.metadata,
      "Content-Length": String(request.fileSize),
    });
    request.onProgress?.(request.fileSize);
    await removeIfExists(request.localPath);
  }
}

export function uploaderOf(ctx: BasebackupContext): BasebackupUploader {
  return ctx.uploader ?? new DirectUploader(ctx);
}

export function throwIfAborted(ctx: BasebackupContext): void {
  if (ctx.signal?.aborted) throw new BackupFailure("thread termination requested");
}

/** pg.Client settings for a node's normal (non-replication) connection. */
export function pgClientConfig(ctx: BasebackupContext): pg.ClientConfig {
  const info = nodeConnectionInfo(ctx.node);
  const cfg: pg.ClientConfig = {};
  if (info.host) cfg.host = info.host;
  if (info.hostaddr && !info.host) cfg.host = info.hostaddr;
  if (info.port) cfg.port = Number(info.port);
  if (info.user) cfg.user = info.user;
  if (info.password) cfg.password = info.password;
  cfg.database = info.dbname ?? "postgres";
  if (info.sslmode && info.sslmode !== "disable" && info.sslmode !== "allow" && info.sslmode !== "prefer") {
    cfg.ssl = { rejectUnauthorized: info.sslmode === "verify-full" || info.sslmode === "verify-ca" };
  }
  cfg.application_name = "pghoard";
  return cfg;
}

/** One open session holding a non-exclusive backup; `alive` turns false if the session dies. */
export class BackupSession {
  alive = true;
  private error: Error | undefined;

  private constructor(
    readonly client: pg.Client,
    readonly pgVersion: number,
  ) {
    client.on("error", (err) => {
      this.alive = false;
      this.error = err;
    });
    client.on("end", () => {
      this.alive = false;
    });
  }

  static async connect(ctx: BasebackupContext): Promise<BackupSession> {
    const client = new pg.Client(pgClientConfig(ctx));
    await client.connect();
    return new BackupSession(client, ctx.pgVersion);
  }

  checkAlive(): void {
    if (!this.alive)
      throw new BackupFailure(`Database session for the backup died${this.error ? `: ${this.error.message}` : ""}`);
  }

  async startBackup(label = BASEBACKUP_LABEL): Promise<void> {
    if (this.pgVersion >= 150000) await this.client.query("SELECT pg_backup_start($1, true)", [label]);
    else await this.client.query("SELECT pg_start_backup($1, true, false)", [label]);
  }

  /**
   * Returns backup_label's content and the stop LSN. `waitForArchive: false` returns as soon as
   * the end segment is switched (PostgreSQL ≥ 10); the caller then checks the archive itself
   * (end_segment.ts). 9.6 has no such parameter and always waits.
   */
  async stopBackup(opts: { waitForArchive: boolean } = { waitForArchive: true }): Promise<{
    labelfile: string;
    lsn: string;
  }> {
    const wait = opts.waitForArchive;
    let sql: string;
    if (this.pgVersion >= 150000) sql = `SELECT lsn::text AS lsn, labelfile FROM pg_backup_stop(${wait})`;
    else if (this.pgVersion >= 100000) sql = `SELECT lsn::text AS lsn, labelfile FROM pg_stop_backup(false, ${wait})`;
    else sql = "SELECT lsn::text AS lsn, labelfile FROM pg_stop_backup(false)";
    const res = await this.client.query<{ labelfile: string; lsn: string }>(sql);
    return res.rows[0];
  }

  /** The WAL segment holding the last byte before `lsn` (what pg_backup_stop waits for). */
  async segmentBefore(lsn: string): Promise<string> {
    const res = await this.client.query<{ seg: string }>("SELECT pg_walfile_name($1::pg_lsn) AS seg", [lsn]);
    return res.rows[0].seg;
  }

  async tablespaces(pgdata: string): Promise<Record<string, { path: string; oid: number }>> {
    const res = await this.client.query<{ oid: number; spcname: string }>(
      "SELECT oid::int AS oid, spcname FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global')",
    );
    const result: Record<string, { path: string; oid: number }> = {};
    for (const row of res.rows) {
      result[row.spcname] = {
        path: await readlink(path.join(pgdata, "pg_tblspc", String(row.oid))),
        oid: Number(row.oid),
      };
    }
    return result;
  }

  /**
   * operations.md §3.5 step 6: end time and last WAL segment needed, then a segment switch so that
   * segment gets archived (pg_switch_wal as superuser, else another start/stop backup).
   */
  async endSegmentAndTime(): Promise<{ endWalSegment: string | null; endTime: { metadata: string; json: string } }> {
    const res = await this.client.query<{ epoch_us: string; in_recovery: boolean; is_superuser: boolean | null }>(
      "SELECT (extract(epoch from date_trunc('microseconds', now())) * 1000000)::bigint::text AS epoch_us, pg_is_in_recovery() AS in_recovery, " +
        "(SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) AS is_superuser",
    );
    const row = res.rows[0];
    const us = BigInt(row.epoch_us);
    const date = new Date(Number(us / 1000n));
    const micros = Number(us % 1000000n);
    const endTime = { metadata: pyStrUtc(date, micros), json: pyJsonUtc(date, micros) };
    if (row.in_recovery) return { endWalSegment: null, endTime };
    const sql =
      this.pgVersion >= 100000
        ? "SELECT pg_walfile_name(pg_current_wal_lsn()) AS seg, txid_current()"
        : "SELECT pg_xlogfile_name(pg_current_xlog_location()) AS seg, txid_current()";
    const seg = (await this.client.query<{ seg: string }>(sql)).rows[0].seg;
    if (row.is_superuser) {
      await this.client.query(this.pgVersion >= 100000 ? "SELECT pg_switch_wal()" : "SELECT pg_switch_xlog()");
    } else {
      // only for the switch: nothing needs this segment archived before we go on
      await this.startBackup("pghoard_end_of_backup");
      await this.stopBackup({ waitForArchive: false });
    }
    return { endWalSegment: seg, endTime };
  }

  async close(): Promise<void> {
    await this.client.end().catch(() => undefined);
  }
}
