/**
 * Object keys of a site's store (storage-layout.md §1–2): `<site prefix>/<type directory>/<name>`.
 * Keys are joined like upstream's `os.path.join`, so duplicate and trailing slashes collapse.
 */
import path from "node:path";

/** The type directories below a site prefix that hold backup data. */
export type ObjectFileType =
  "xlog" | "timeline" | "basebackup" | "basebackup_chunk" | "basebackup_delta" | "basebackup_delta_chunk";

/** Every type directory, including the metadata-only preservation requests. */
export type StoreDirectory = ObjectFileType | "preservation_request";

/** `<prefix>/<directory>/<name>`; without `name`, the directory itself (for listings). */
export function objectKey(prefix: string, directory: StoreDirectory, name?: string): string {
  return name === undefined ? path.posix.join(prefix, directory) : path.posix.join(prefix, directory, name);
}

export const walKey = (prefix: string, segment: string): string => objectKey(prefix, "xlog", segment);
export const timelineKey = (prefix: string, historyName: string): string => objectKey(prefix, "timeline", historyName);
/** `basebackup/NAME` (single-object backups) or `basebackup/NAME.00000000.pghoard` (control objects). */
export const basebackupKey = (prefix: string, objectName: string): string =>
  objectKey(prefix, "basebackup", objectName);
export const deltaObjectKey = (prefix: string, hexdigest: string): string =>
  objectKey(prefix, "basebackup_delta", hexdigest);
export const preservationRequestKey = (prefix: string, requestName: string): string =>
  objectKey(prefix, "preservation_request", requestName);

/** Where the chunks of a backup live: local-tar data chunks or delta bundles. */
export type ChunkDirectory = "basebackup_chunk" | "basebackup_delta_chunk";

/** `<prefix>/<chunk directory>/<chunk_filename>`; `chunk_filename` as the control JSON stores it. */
export const chunkKey = (prefix: string, directory: ChunkDirectory, chunkFilename: string): string =>
  objectKey(prefix, directory, chunkFilename);

/** `NAME.NNNNNNNN.pghoard`: 8 decimal digits; 0 is the control object, data chunks start at 1. */
export function chunkFileName(backupName: string, index: number): string {
  return `${backupName}.${String(index).padStart(8, "0")}.pghoard`;
}

/** `NAME/NAME.NNNNNNNN.pghoard`, the chunk's name below its chunk directory. */
export function chunkObjectName(backupName: string, index: number): string {
  return `${backupName}/${chunkFileName(backupName, index)}`;
}

/** `NAME.00000000.pghoard`, the control object's name below `basebackup/`. */
export function controlObjectName(backupName: string): string {
  return chunkFileName(backupName, 0);
}

const CONTROL_SUFFIX = /\.00000000\.pghoard$/;

/** The backup name of a `basebackup/` entry (key or basename), without the control suffix. */
export function backupNameOf(keyOrName: string): string {
  return path.posix.basename(keyOrName).replace(CONTROL_SUFFIX, "");
}
