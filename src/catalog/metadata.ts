/**
 * Object metadata per object kind (storage-layout.md §4–5), built in upstream's key order (the
 * local and SFTP sidecars keep it) and read back typed. Values are Python-`str()`-able; `null`
 * means "absent" and is dropped by `sanitizeMetadata` / the transfer agent.
 */
import { encodingMetadata } from "../fileformat/pipeline.js";
import type { EncodeOptions } from "../fileformat/types.js";
import type { Metadata } from "../storage/types.js";

/** Metadata before sanitising: what the writers pass, like upstream's Python dicts. */
export type RawMetadata = Record<string, string | number | null | undefined>;

/** rohmu's `sanitize_metadata`: values become strings, null/undefined are dropped. */
export function sanitizeMetadata(values: Record<string, unknown>): Metadata {
  const out: Metadata = {};
  for (const [key, value] of Object.entries(values)) {
    if (value === null || value === undefined) continue;
    out[key] = String(value);
  }
  return out;
}

export const BASEBACKUP_FORMATS = ["pghoard-bb-v1", "pghoard-bb-v2", "pghoard-delta-v1", "pghoard-delta-v2"] as const;
export type BasebackupFormat = (typeof BASEBACKUP_FORMATS)[number];
export const DELTA_FORMATS: ReadonlySet<string> = new Set<BasebackupFormat>(["pghoard-delta-v1", "pghoard-delta-v2"]);

/** WAL segments, `.partial` segments and timeline history files (`pghoard/compressor.py`). */
export function walObjectMetadata(args: {
  pgVersion: number | string | null;
  compression: { algorithm: string; level: number };
  originalSize: number;
  host: string;
  /** Only WAL segments carry a hash. */
  hash?: { algorithm: string; hexdigest: string };
  encryptionKeyId: string | null;
}): Record<string, string | number | null> {
  const metadata: Record<string, string | number | null> = {
    "pg-version": args.pgVersion,
    "compression-algorithm": args.compression.algorithm,
    "compression-level": args.compression.level,
    "original-file-size": args.originalSize,
    host: args.host,
  };
  if (args.hash) {
    metadata.hash = args.hash.hexdigest;
    metadata["hash-algorithm"] = args.hash.algorithm;
  }
  if (args.encryptionKeyId) metadata["encryption-key-id"] = args.encryptionKeyId;
  return metadata;
}

/** The encoding keys every basebackup object starts with (encryption-key-id null when plain). */
export function basebackupEncodingMetadata(opts: EncodeOptions): RawMetadata {
  return { "compression-algorithm": null, "encryption-key-id": null, ...encodingMetadata(opts) };
}

/** A data chunk (`pghoard-bb-v2`), a delta bundle or a delta hash object (`pghoard-delta-v2`). */
export function dataObjectMetadata(args: {
  encoding: EncodeOptions;
  format: "pghoard-bb-v2" | "pghoard-delta-v2";
  originalSize: number;
  host: string;
}): Metadata {
  return sanitizeMetadata({
    ...basebackupEncodingMetadata(args.encoding),
    format: args.format,
    "original-file-size": args.originalSize,
    host: args.host,
  });
}

/** The control object `basebackup/NAME.00000000.pghoard` of a chunked backup. */
export function controlObjectMetadata(args: {
  encoding: EncodeOptions;
  format: "pghoard-bb-v2" | "pghoard-delta-v2";
  originalSize: number;
  host: string;
  /** Scheduling keys (backup-decision-time, backup-reason, normalized-backup-time), in their order. */
  decision: object;
  endTime: string;
  endWalSegment: string | null;
  pgVersion: number;
  activeBackupMode: string | undefined;
  basebackupMode: string | undefined;
  startTime: string;
  startWalSegment: string;
  totalSizePlain: number;
  totalSizeEnc: number;
}): Metadata {
  // A control object starts with the keys of a data object, in the same order.
  return sanitizeMetadata({
    ...dataObjectMetadata(args),
    ...args.decision,
    "end-time": args.endTime,
    "end-wal-segment": args.endWalSegment,
    "pg-version": args.pgVersion,
    "active-backup-mode": args.activeBackupMode,
    "basebackup-mode": args.basebackupMode,
    "start-time": args.startTime,
    "start-wal-segment": args.startWalSegment,
    "total-size-plain": args.totalSizePlain,
    "total-size-enc": args.totalSizeEnc,
  });
}

/** The keys every single-object (basic/pipe) basebackup starts with; each mode appends its own. */
export function singleObjectCommonMetadata(args: {
  encoding: EncodeOptions;
  host: string;
  pgVersion: number;
  activeBackupMode: string | undefined;
  basebackupMode: string | undefined;
}): RawMetadata {
  return {
    ...basebackupEncodingMetadata(args.encoding),
    host: args.host,
    "pg-version": args.pgVersion,
    "active-backup-mode": args.activeBackupMode,
    "basebackup-mode": args.basebackupMode,
  };
}

/** `preservation_request/` objects: empty, metadata only. */
export function preservationRequestMetadata(backupName: string, preserveUntil: string): Metadata {
  return { "preserve-backup": backupName, "preserve-until": preserveUntil };
}

/** The metadata of a stored basebackup main object, as restore and retention read it. */
export interface BasebackupMetadataView {
  format: string | undefined;
  startTime: string | undefined;
  startWalSegment: string | undefined;
  pgVersion: number | null;
}

export function parseBasebackupMetadata(metadata: Metadata): BasebackupMetadataView {
  const pgVersionText = metadata["pg-version"];
  return {
    format: metadata.format || undefined,
    startTime: metadata["start-time"],
    startWalSegment: metadata["start-wal-segment"],
    pgVersion: pgVersionText ? Number(pgVersionText) : null,
  };
}
