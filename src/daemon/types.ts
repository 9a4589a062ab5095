/**
 * Work items passed between the daemon's parts: the webserver, WAL sources (archive_command,
 * pg_receivexlog spool, walreceiver) and basebackups put CompressionEvents and TransferOps on the
 * two queues; compressors and transfer agents consume them (operations.md §1, §6.5, §9).
 */
import type { ObjectFileType } from "../catalog/index.js";
import type { Metadata, StoredObject } from "../storage/types.js";
import type { Deferred } from "../common/async.js";
import type { SpoolMetadata, WalFileType } from "./spool.js";

export interface TransferResult {
  success: boolean;
  error?: unknown;
  /** The object does not exist in storage. */
  notFound?: boolean;
  metadata?: Metadata;
  items?: StoredObject[];
  /** DOWNLOAD: where the decoded file was written. */
  targetPath?: string;
}

/** Compress (and encrypt) one WAL or history file, then queue its upload. */
export interface CompressionEvent {
  site: string;
  filetype: WalFileType;
  /** Source file; its basename is the WAL/history name. */
  fullPath: string;
  /** In-memory source (walreceiver); `fullPath` then only names the file. */
  inputData?: Buffer;
  /** true: keep the compressed bytes in memory (archive_command); false: write to the spool. */
  compressToMemory: boolean;
  /** Delete the source after compression (pg_receivexlog spool files; never pg_wal). */
  deleteFileAfterCompression: boolean;
  /** Extra metadata merged under the compressor's own keys. */
  metadata?: SpoolMetadata;
  /**
   * The walreceiver's incomplete segment (in memory): stored as `<name>.partial` without a hash;
   * its sender checks the header, since it may hold fewer bytes than one.
   */
  partial?: boolean;
  /**
   * The WAL header was verified right before this event was queued (archive_command and its
   * work-ahead): not read again. The stored copy is acknowledged only if the file's identity did
   * not change meanwhile, so a file replaced after the check is never acknowledged.
   */
  headerVerified?: boolean;
  /** Resolved with the upload result (or a compression failure). */
  callback?: Deferred<TransferResult>;
}

/** Object kinds below a site prefix (storage-layout.md §2). */
export type { ObjectFileType };

export interface UploadOp {
  type: "UPLOAD";
  site: string;
  filetype: ObjectFileType;
  /** Spool file to upload (deleted with its `.metadata` after success), or the source name for a blob. */
  localPath: string;
  /** In-memory payload; when set `localPath` only provides the object name. */
  blob?: Buffer;
  /**
   * Object name below `<prefix>/<filetype>/`; default = basename of `localPath`
   * (for `basebackup_chunk`: `<parent dir>/<basename>`, as upstream).
   */
  objectName?: string;
  metadata: SpoolMetadata;
  /** Stored size in bytes (statistics, Content-Length metadata). */
  fileSize: number;
  /** Delete `localPath` (and its sidecar) after a successful upload; default true for files. */
  deleteAfterUpload?: boolean;
  callback?: Deferred<TransferResult>;
  retryNumber?: number;
}

export interface DownloadOp {
  type: "DOWNLOAD";
  site: string;
  filetype: ObjectFileType;
  name: string;
  /** Decoded bytes are written here (an existing temp file is overwritten). */
  targetPath: string;
  /**
   * false: not fsync'd (a file a waiting restore request moves straight to PostgreSQL's target,
   * which PostgreSQL fetches again after a crash); default true (prefetch files outlive a crash).
   */
  durable?: boolean;
  callback: Deferred<TransferResult>;
}

export interface MetadataOp {
  type: "METADATA";
  site: string;
  filetype: ObjectFileType;
  name: string;
  callback: Deferred<TransferResult>;
}

export interface ListOp {
  type: "LIST";
  site: string;
  filetype: ObjectFileType;
  callback: Deferred<TransferResult>;
}

export type TransferOp = UploadOp | DownloadOp | MetadataOp | ListOp;
