/**
 * Turns a selected basebackup into the list of things to fetch, by format
 * (storage-layout.md §5–6): the main object itself (no format, v1), or the control tar plus
 * chunks (v2), or the control tar plus hash objects, bundles and embedded files (delta v1/v2).
 */
import {
  BASEBACKUP_FORMATS,
  chunkKey,
  deltaObjectKey,
  InvalidTarError,
  parseBasebackupMetadata,
  parseControlTar,
  type ChunkDirectory,
  type StoredControlMetadata,
  type TablespaceInfo,
} from "../catalog/index.js";
import type { ObjectStorageConfig } from "../storage/index.js";
import type { StorageBackend, Metadata } from "../storage/types.js";
import { RestoreError } from "./errors.js";

/** One unit of restore work; `size` is the stored size used for progress. */
export type RestoreItem =
  /** A stored tar (main object, chunk or bundle), decoded per its own metadata and extracted. */
  | { kind: "tar-object"; key: string; size: number; storage: StorageBackend; storageConfig?: ObjectStorageConfig }
  /** The already decoded control tar of a v2/delta backup (pg_control, backup_label, fixed dirs). */
  | { kind: "tar-memory"; label: string; data: Buffer; format: string; size: 0 }
  /** A delta hash object written as one file. */
  | {
      kind: "file-object";
      key: string;
      size: number;
      relativePath: string;
      /** The manifest's plaintext digest and size, so a delta restore can keep an identical file. */
      hexdigest?: string;
      fileSize?: number;
      storage: StorageBackend;
      storageConfig?: ObjectStorageConfig;
    }
  /** A delta file embedded in the manifest (base64). */
  | { kind: "file-memory"; relativePath: string; data: Buffer; size: 0 };

export type { TablespaceInfo };

export interface RestorePlan {
  format: string | undefined;
  tablespaces: Record<string, TablespaceInfo>;
  items: RestoreItem[];
  /** Directories (relative to `$PGDATA`) to create before fetching (delta `empty_dirs`). */
  emptyDirs: string[];
}

/** Control JSON as restore reads it (the catalog's type). */
export type ControlMetadata = StoredControlMetadata;

/** Reads `.pghoard_tar_metadata.json` out of a decoded control tar (scanning by name, as upstream). */
export async function readControlMetadata(decodedTar: Buffer, label: string): Promise<ControlMetadata> {
  let control: ControlMetadata | null;
  try {
    control = parseControlTar(decodedTar);
  } catch (err) {
    if (err instanceof InvalidTarError) throw new RestoreError(`Invalid control tar in ${label}: ${err.message}`);
    throw new RestoreError(
      `Basebackup control object ${label}: invalid .pghoard_tar_metadata.json: ${(err as Error).message}`,
    );
  }
  if (control === null) {
    throw new RestoreError(`Basebackup control object ${label} has no .pghoard_tar_metadata.json`);
  }
  return control;
}

function normalizeTablespaces(raw: ControlMetadata["tablespaces"]): Record<string, TablespaceInfo> {
  const result: Record<string, TablespaceInfo> = {};
  for (const [name, info] of Object.entries(raw ?? {})) {
    result[name] = { path: info.path, oid: Number(info.oid) };
  }
  return result;
}

/** `tablespace-name-<oid>` / `tablespace-path-<oid>` pairs of a v1 main object. */
export function tablespacesFromV1Metadata(metadata: Metadata): Record<string, TablespaceInfo> {
  const result: Record<string, TablespaceInfo> = {};
  for (const [key, value] of Object.entries(metadata)) {
    const m = /^tablespace-name-([0-9]+)$/.exec(key);
    if (!m) continue;
    const tsPath = metadata[`tablespace-path-${m[1]}`];
    if (tsPath === undefined) throw new RestoreError(`Backup metadata has ${key} but no tablespace-path-${m[1]}`);
    result[value] = { oid: Number(m[1]), path: tsPath };
  }
  return result;
}

export interface PlanInput {
  /** Full key of the main object. */
  name: string;
  /** Stored size of the main object. */
  size: number;
  metadata: Metadata;
  storage: StorageBackend;
  /** Config of `storage`, so object workers can open their own connection. */
  storageConfig?: ObjectStorageConfig;
  /** Site prefix of the site the backup belongs to (chunk keys are built from it). */
  sitePrefix: string;
  /** Decodes a small stored object fully into memory (decrypt + decompress per metadata). */
  decodeBuffer: (data: Buffer, metadata: Metadata, label: string) => Promise<Buffer>;
}

/** The data chunks (v2) or bundles (delta-v2) listed in the control JSON. */
function chunkItems(input: PlanInput, control: ControlMetadata, typeDirectory: ChunkDirectory): RestoreItem[] {
  return (control.chunks ?? []).map((chunk) => ({
    kind: "tar-object" as const,
    key: chunkKey(input.sitePrefix, typeDirectory, chunk.chunk_filename),
    size: Number(chunk.result_size) || 0,
    storage: input.storage,
    storageConfig: input.storageConfig,
  }));
}

/** basic/pipe and bb-v1 backups: the one tar object the backup is. */
function singleObjectItem(input: PlanInput): RestoreItem {
  return {
    kind: "tar-object",
    key: input.name,
    size: input.size,
    storage: input.storage,
    storageConfig: input.storageConfig,
  };
}

export async function planRestore(input: PlanInput): Promise<RestorePlan> {
  const { format } = parseBasebackupMetadata(input.metadata);
  if (format !== undefined && !(BASEBACKUP_FORMATS as readonly string[]).includes(format)) {
    throw new RestoreError(`Unrecognized basebackup format '${format}'`);
  }
  if (format === undefined) {
    return {
      format,
      tablespaces: {},
      items: [singleObjectItem(input)],
      emptyDirs: [],
    };
  }
  if (format === "pghoard-bb-v1") {
    return {
      format,
      tablespaces: tablespacesFromV1Metadata(input.metadata),
      items: [singleObjectItem(input)],
      emptyDirs: [],
    };
  }

  // v2 and delta: the main object is a small control tar; fetch and decode it whole.
  const { data: stored } = await input.storage.getContentsToMemory(input.name);
  const decoded = await input.decodeBuffer(stored, input.metadata, input.name);
  const control = await readControlMetadata(decoded, input.name);
  const tablespaces = normalizeTablespaces(control.tablespaces);
  const items: RestoreItem[] = [];
  const emptyDirs: string[] = [];

  if (format === "pghoard-bb-v2") {
    items.push(...chunkItems(input, control, "basebackup_chunk"));
  } else {
    const manifest = control.manifest;
    if (!manifest?.snapshot_result?.state) {
      throw new RestoreError(`Delta basebackup ${input.name} has no manifest in its control object`);
    }
    const state = manifest.snapshot_result.state;
    for (const file of state.files) {
      if (file.hexdigest) {
        items.push({
          kind: "file-object",
          key: deltaObjectKey(input.sitePrefix, file.hexdigest),
          size: Number(file.stored_file_size) || 0,
          relativePath: file.relative_path,
          hexdigest: file.hexdigest,
          fileSize: Number(file.file_size),
          storage: input.storage,
          storageConfig: input.storageConfig,
        });
      } else if (file.content_b64 !== null && file.content_b64 !== undefined && !file.should_be_bundled) {
        items.push({
          kind: "file-memory",
          relativePath: file.relative_path,
          data: Buffer.from(file.content_b64, "base64"),
          size: 0,
        });
      }
    }
    // delta-v2 bundles of small files
    items.push(...chunkItems(input, control, "basebackup_delta_chunk"));
    emptyDirs.push(...(state.empty_dirs ?? []));
  }
  // The control tar itself supplies global/pg_control, backup_label and the fixed empty directories.
  items.push({ kind: "tar-memory", label: input.name, data: decoded, format, size: 0 });
  return { format, tablespaces, items, emptyDirs };
}
