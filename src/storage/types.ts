/**
 * The one interface every object-storage backend implements (local, s3, google, azure, swift, sftp).
 *
 * Keys are relative to the backend prefix (`object_storage.prefix`), which each backend applies
 * itself: callers pass and receive keys such as `default/xlog/000000010000000000000003`.
 * Metadata is a flat map of strings, as upstream pghoard/rohmu stores it.
 */
import type { Readable } from "node:stream";

export type Metadata = Record<string, string>;

export interface StoredObject {
  /** Key relative to the backend prefix. */
  name: string;
  /** Stored (compressed/encrypted) size in bytes. */
  size: number;
  lastModified: Date;
  metadata: Metadata;
  /** Backend checksum when known (local: sha256 `_hash`, S3: ETag). */
  md5?: string;
}

export interface ListOptions {
  /** false (default): only objects directly below `prefix`, like upstream's delimiter listing. */
  recursive?: boolean;
}

export interface StorageBackend {
  /** `local`, `s3`, `google`, `azure`, `swift` or `sftp`. */
  readonly storageType: string;
  /** Stores bytes; the object appears under `key` only once complete (never half-written). */
  storeFileFromMemory(key: string, data: Buffer, metadata: Metadata): Promise<void>;
  storeFileFromDisk(key: string, filePath: string, metadata: Metadata): Promise<void>;
  /** Streams `source` to `key`; if the stream errors, nothing is left under `key`. */
  storeFileObject(key: string, source: Readable, metadata: Metadata): Promise<void>;
  getContentsToMemory(key: string): Promise<{ data: Buffer; metadata: Metadata }>;
  /** Downloads to `filePath` atomically (temp file, fsync, rename). */
  getContentsToFile(key: string, filePath: string): Promise<Metadata>;
  getReadStream(key: string): Promise<{ stream: Readable; metadata: Metadata; size: number }>;
  getMetadataForKey(key: string): Promise<Metadata>;
  /** Objects below `prefix` (a "directory"; a trailing `/` is implied). Sorted by name. */
  list(prefix: string, options?: ListOptions): Promise<StoredObject[]>;
  /** Throws StorageNotFoundError when the key does not exist. */
  deleteKey(key: string): Promise<void>;
  /** Deletes every object below `prefix`; no error when nothing is there. */
  deleteTree(prefix: string): Promise<void>;
  copyFile(sourceKey: string, destinationKey: string, metadata?: Metadata): Promise<void>;
  /**
   * Removes the temp files that writes interrupted by a crash left below `prefix`, if modified
   * before `olderThan` (newer ones may belong to a write in progress); returns their keys. Only
   * backends whose writes can leave such files (local) implement it.
   */
  removeInterruptedWrites?(prefix: string, olderThan: Date): Promise<string[]>;
  /**
   * Removes the data files directly below the directory `prefix` whose sidecar was never written (a
   * crash between the two renames) or whose deletion stopped after the sidecar, if modified before
   * `olderThan` and named as `accept` allows; returns their keys and sizes. Only for directories no
   * process but this one writes (a writer of its own would publish the sidecar after the data is
   * gone). Local store only.
   */
  removeUnpublishedObjects?(
    prefix: string,
    olderThan: Date,
    accept: (name: string) => boolean,
  ): Promise<Array<{ key: string; size: number }>>;
  close(): Promise<void>;
}

export class StorageError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "StorageError";
  }
}

export class StorageNotFoundError extends StorageError {
  constructor(readonly key: string) {
    super(`Object not found: ${key}`);
    this.name = "StorageNotFoundError";
  }
}
