/**
 * Turns a selected basebackup into the list of things to fetch, by format
 * (storage-layout.md §5–6): the main object itself (no format, v1), or the control tar plus
 * chunks (v2), or the control tar plus hash objects, bundles and embedded files (delta v1/v2).
 */
import path from "node:path";
import tarStream from "tar-stream";

import type { ObjectStorageConfig } from "../storage/index.js";
import type { StorageBackend, Metadata } from "../storage/types.js";
import { RestoreError } from "./errors.js";
import { BASEBACKUP_FORMATS } from "./tar-extract.js";

/** One unit of restore work; `size` is the stored size used for progress. */
export type RestoreItem =
  /** A stored tar (main object, chunk or bundle), decoded per its own metadata and extracted. */
  | { kind: "tar-object"; key: string; size: number; storage: StorageBackend; storageConfig?: ObjectStorageConfig }
  /** The already decoded control tar of a v2/delta backup (pg_control, backup_label, fixed dirs). */
  | { kind: "tar-memory"; label: string; data: Buffer; format: string; size: 0 }
  /** A delta hash object written as one file. */
  | { kind: "file-object"; key: string; size: number; relativePath: string; storage: StorageBackend; storageConfig?: ObjectStorageConfig }
  /** A delta file embedded in the manifest (base64). */
  | { kind: "file-memory"; relativePath: string; data: Buffer; size: 0 };

export interface TablespaceInfo {
  path: string;
  oid: number;
}

export interface RestorePlan {
  format: string | undefined;
  tablespaces: Record<string, TablespaceInfo>;
  items: RestoreItem[];
  /** Directories (relative to `$PGDATA`) to create before fetching (delta `empty_dirs`). */
  emptyDirs: string[];
}

export interface ControlMetadata {
  tablespaces?: Record<string, { path: string; oid: number | string }>;
  chunks?: Array<{ chunk_filename: string; result_size: number; input_size?: number }>;
  manifest?: DeltaManifest;
  [key: string]: unknown;
}

interface DeltaFile {
  relative_path: string;
  file_size: number;
  stored_file_size: number;
  hexdigest: string;
  content_b64: string | null;
  should_be_bundled?: boolean;
}

interface DeltaManifest {
  snapshot_result: { state: { files: DeltaFile[]; empty_dirs?: string[] } };
}

/** Reads `.pghoard_tar_metadata.json` out of a decoded control tar (scanning by name, as upstream). */
export async function readControlMetadata(decodedTar: Buffer, label: string): Promise<ControlMetadata> {
  const extract = tarStream.extract();
  let found: Buffer | undefined;
  const done = new Promise<void>((resolve, reject) => {
    extract.on("entry", (header, stream, next) => {
      const base = header.name.split("/").pop();
      const chunks: Buffer[] = [];
      stream.on("data", (c: unknown) => {
        if (base === ".pghoard_tar_metadata.json") chunks.push(c as Buffer);
      });
      stream.on("end", () => {
        if (base === ".pghoard_tar_metadata.json" && found === undefined) found = Buffer.concat(chunks);
        next();
      });
      stream.resume();
    });
    extract.on("finish", () => resolve());
    extract.on("error", (err: Error) => reject(new RestoreError(`Invalid control tar in ${label}: ${err.message}`)));
  });
  extract.end(decodedTar);
  await done;
  if (found === undefined) {
    throw new RestoreError(`Basebackup control object ${label} has no .pghoard_tar_metadata.json`);
  }
  try {
    return JSON.parse(found.toString("utf8")) as ControlMetadata;
  } catch (err) {
    throw new RestoreError(`Basebackup control object ${label}: invalid .pghoard_tar_metadata.json: ${(err as Error).message}`);
  }
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
function chunkItems(input: PlanInput, control: ControlMetadata, typeDirectory: string): RestoreItem[] {
  return (control.chunks ?? []).map((chunk) => ({
    kind: "tar-object" as const,
    key: path.posix.join(input.sitePrefix, typeDirectory, chunk.chunk_filename),
    size: Number(chunk.result_size) || 0,
    storage: input.storage,
    storageConfig: input.storageConfig,
  }));
}

export async function planRestore(input: PlanInput): Promise<RestorePlan> {
  const format = input.metadata.format || undefined;
  if (format !== undefined && !(BASEBACKUP_FORMATS as readonly string[]).includes(format)) {
    throw new RestoreError(`Unrecognized basebackup format '${format}'`);
  }
  if (format === undefined) {
    return { format, tablespaces: {}, items: [{ kind: "tar-object", key: input.name, size: input.size, storage: input.storage, storageConfig: input.storageConfig }], emptyDirs: [] };
  }
  if (format === "pghoard-bb-v1") {
    return {
      format,
      tablespaces: tablespacesFromV1Metadata(input.metadata),
      items: [{ kind: "tar-object", key: input.name, size: input.size, storage: input.storage, storageConfig: input.storageConfig }],
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
          key: path.posix.join(input.sitePrefix, "basebackup_delta", file.hexdigest),
          size: Number(file.stored_file_size) || 0,
          relativePath: file.relative_path,
          storage: input.storage,
        });
      } else if (file.content_b64 !== null && file.content_b64 !== undefined && !file.should_be_bundled) {
        items.push({ kind: "file-memory", relativePath: file.relative_path, data: Buffer.from(file.content_b64, "base64"), size: 0 });
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
