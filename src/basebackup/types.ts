/**
 * What a basebackup run needs from the daemon (or a test, or the bench) and what it reports back.
 */
import type { PghoardConfig, SiteConfig, NodeConfig } from "../config/types.js";
import type { FileFormatPool } from "../fileformat/index.js";
import type { Metadata, StorageBackend } from "../storage/types.js";
import type { BasebackupInfo, ObjectFileType } from "../catalog/index.js";
import type { NewBackupMetadata } from "./schedule.js";

/** Logger subset used here (pino loggers and console-like objects fit). */
export interface BasebackupLogger {
  debug(msg: string): void;
  info(msg: string): void;
  warn(msg: string): void;
  error(msg: string): void;
}

export interface BasebackupMetrics {
  gauge(name: string, value: number, tags?: Record<string, string | number | boolean | null>): void;
  increase(name: string, incValue?: number, tags?: Record<string, string | number | boolean | null>): void;
}

export type BasebackupFileType = Exclude<ObjectFileType, "xlog" | "timeline">;

/** The running backup's progress as the daemon's state shows it (`progress.ts` maintains it). */
export interface ProgressState {
  name: string;
  mode: string;
  phase: string;
  /** Plaintext bytes processed so far. */
  bytes_done: number;
  /** Expected plaintext bytes (0 when unknown, e.g. pg_basebackup modes before it reports). */
  bytes_total: number;
  /** Stored bytes uploaded so far. */
  bytes_uploaded: number;
  /** 0–100, null when the total is unknown. */
  percent: number | null;
  started_at: string;
  updated_at: string;
}

export interface UploadRequest {
  filetype: BasebackupFileType;
  /** Name below `<site prefix>/<filetype>/`, e.g. `NAME/NAME.00000001.pghoard`. */
  objectName: string;
  /** Encoded file to upload; the uploader deletes it after a successful upload. */
  localPath: string;
  metadata: Metadata;
  /** Stored size in bytes. */
  fileSize: number;
  /** Called with bytes as they are uploaded, when the uploader can tell. */
  onProgress?: (bytes: number) => void;
}

/** How encoded backup files reach storage: the daemon can route them through its transfer agents. */
export interface BasebackupUploader {
  upload(request: UploadRequest): Promise<void>;
}

export interface BasebackupContext {
  config: PghoardConfig;
  site: string;
  /** PostgreSQL node to back up (libpq keywords). */
  node: NodeConfig;
  /** server_version_num of that node, e.g. 150004. */
  pgVersion: number;
  storage: StorageBackend;
  pool: FileFormatPool;
  /** Scheduling metadata from `decideNewBackup` (backup-decision-time, backup-reason, ...). */
  decision: NewBackupMetadata | Record<string, string>;
  /** `pg_basebackup --checkpoint=fast` (a requested backup; scheduled ones follow `basebackup_fast_checkpoint`). */
  fastCheckpoint?: boolean;
  log: BasebackupLogger;
  metrics?: BasebackupMetrics;
  /** Receives the running backup's progress (the daemon puts it into its state). */
  onProgress?: (state: ProgressState) => void;
  /** Aborts the backup (daemon shutdown). */
  signal?: AbortSignal;
  /** Default: direct `storage.storeFileFromDisk`. */
  uploader?: BasebackupUploader;
  /** Existing backups of the site (delta mode reads their manifests); default: listed from storage. */
  listBasebackups?: () => Promise<BasebackupInfo[]>;
  /** Path of pg_basebackup for basic/pipe modes; default `<pg_bin_directory>/pg_basebackup` or PATH. */
  pgBasebackupPath?: string;
  hostname?: string;
}

export interface BasebackupResult {
  /** Backup name, e.g. `2024-05-01_13-56_0`. */
  name: string;
  /** Key of the main object relative to the backend prefix. */
  key: string;
  metadata: Metadata;
  /** Stored bytes uploaded by this backup (new objects only). */
  uploadedBytes: number;
  /** Plaintext bytes read from $PGDATA / pg_basebackup. */
  plainBytes: number;
}

export function siteConfigOf(ctx: BasebackupContext): SiteConfig {
  const site = ctx.config.backup_sites[ctx.site];
  if (!site) throw new Error(`Unknown site ${ctx.site}`);
  return site;
}
