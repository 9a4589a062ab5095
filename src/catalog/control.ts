/**
 * The control object of chunked backups (`basebackup/NAME.00000000.pghoard`, storage-layout.md
 * §5.3/§5.6) and the delta manifest inside it: types, and reading `.pghoard_tar_metadata.json`
 * back (retention, the next delta backup and restore all read it through here). Writing the
 * control tar stays with the basebackup tar writer (`basebackup/control.ts` `buildControlTar`).
 */
import { decodeBuffer } from "../fileformat/streams.js";
import type { PrivateKeyLookup } from "../fileformat/types.js";
import type { Metadata, StorageBackend } from "../storage/types.js";

export const TAR_METADATA_FILENAME = ".pghoard_tar_metadata.json";
const BLOCK_SIZE = 512;

export interface TablespaceInfo {
  path: string;
  oid: number;
}

/** One entry of `chunks` (data chunks of v2, bundles of delta-v2). */
export interface ChunkRecord {
  /** `NAME/NAME.NNNNNNNN.pghoard`, relative to the chunk directory. */
  chunk_filename: string;
  input_size: number;
  result_size: number;
  files: string[];
}

/** One file of a delta manifest (rohmu `SnapshotFile` plus upload fields). */
/** Hash of `hexdigest` in delta manifests (hashlib name, as upstream's delta backups use). */
export const DELTA_FILE_HASH_ALGORITHM = "blake2s";

export interface DeltaManifestFile {
  relative_path: string;
  file_size: number;
  stored_file_size: number;
  hexdigest: string;
  content_b64: string | null;
  should_be_bundled?: boolean;
  [key: string]: unknown;
}

export interface DeltaManifest {
  snapshot_result: {
    state: { files: DeltaManifestFile[]; empty_dirs?: string[]; [key: string]: unknown };
    [key: string]: unknown;
  };
  [key: string]: unknown;
}

/** Control JSON as we write it, in upstream's key order (storage-layout.md §5.6). */
export interface ControlMetadata {
  backup_end_time: string;
  backup_end_wal_segment: string | null;
  backup_start_time: string;
  backup_start_wal_segment: string;
  pgdata: string;
  pghoard_object: "basebackup";
  pghoard_version: string;
  tablespaces: Record<string, TablespaceInfo>;
  host: string;
  chunks?: ChunkRecord[];
  delta_stats?: { hashes: Record<string, number> };
  manifest?: unknown;
}

/**
 * Control JSON as read back: written by us or by upstream (any version), so every field is
 * optional and oids may be strings.
 */
export interface StoredControlMetadata {
  tablespaces?: Record<string, { path: string; oid: number | string }>;
  chunks?: Array<{ chunk_filename: string; result_size: number; input_size?: number; files?: string[] }>;
  manifest?: DeltaManifest;
  delta_stats?: { hashes?: Record<string, number> };
  [key: string]: unknown;
}

/** The tar is not a valid tar (bad header checksum). */
export class InvalidTarError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "InvalidTarError";
  }
}

function parseOctal(buf: Buffer, offset: number, width: number): number {
  const text = buf
    .toString("ascii", offset, offset + width)
    .replace(/\0.*$/s, "")
    .trim();
  return text ? parseInt(text, 8) : 0;
}

function checksumOk(header: Buffer): boolean {
  let sum = 8 * 0x20; // the checksum field counts as spaces
  for (let i = 0; i < BLOCK_SIZE; i++) if (i < 148 || i >= 156) sum += header[i];
  return parseOctal(header, 148, 8) === sum;
}

/**
 * The first member of an in-memory tar (ustar, pax `x`/`g`, GNU `L`) whose name `matches`, or
 * null. A string matches itself and `./itself`. Throws InvalidTarError on a corrupt header.
 */
export function findTarMember(tar: Buffer, matches: string | ((name: string) => boolean)): Buffer | null {
  const test = typeof matches === "string" ? (name: string) => name === matches || name === `./${matches}` : matches;
  let offset = 0;
  let longName: string | null = null;
  while (offset + BLOCK_SIZE <= tar.length) {
    const header = tar.subarray(offset, offset + BLOCK_SIZE);
    if (header.every((b) => b === 0)) return null;
    if (!checksumOk(header))
      throw new InvalidTarError("Invalid tar header. Maybe the tar is corrupted or it needs to be gunzipped?");
    let name = header.toString("utf8", 0, 100).replace(/\0.*$/s, "");
    const prefix = header.toString("utf8", 345, 500).replace(/\0.*$/s, "");
    if (prefix && header.toString("ascii", 257, 262) === "ustar") name = `${prefix}/${name}`;
    const size = parseOctal(header, 124, 12);
    const type = String.fromCharCode(header[156]);
    const dataStart = offset + BLOCK_SIZE;
    const next = dataStart + Math.ceil(size / BLOCK_SIZE) * BLOCK_SIZE;
    offset = next;
    if (type === "x" || type === "g") {
      const text = tar.toString("utf8", dataStart, dataStart + size);
      for (const m of text.matchAll(/^\d+ ([^=]+)=(.*)$/gm)) {
        if (m[1] === "path" && type === "x") longName = m[2];
      }
      continue;
    }
    if (type === "L") {
      longName = tar.toString("utf8", dataStart, dataStart + size).replace(/\0.*$/s, "");
      continue;
    }
    if (longName !== null) {
      name = longName;
      longName = null;
    }
    if (test(name)) return tar.subarray(dataStart, dataStart + size);
  }
  return null;
}

/** Any member named `.pghoard_tar_metadata.json`, at any depth (upstream scans by name). */
function isTarMetadata(name: string): boolean {
  return name.split("/").pop() === TAR_METADATA_FILENAME;
}

/**
 * The raw `.pghoard_tar_metadata.json` of a decoded control tar, or null when absent. Callers
 * word the errors (restore and the daemon report them differently).
 */
export function controlMetadataBytes(decodedTar: Buffer): Buffer | null {
  return findTarMember(decodedTar, isTarMetadata);
}

/** Parses a decoded control tar's metadata JSON; null when the tar has none. */
export function parseControlTar(decodedTar: Buffer): StoredControlMetadata | null {
  const bytes = controlMetadataBytes(decodedTar);
  return bytes === null ? null : (JSON.parse(bytes.toString("utf8")) as StoredControlMetadata);
}

/** Downloads and decodes a control object and returns its `.pghoard_tar_metadata.json`. */
export async function readControlMetadata(
  storage: StorageBackend,
  key: string,
  metadata: Metadata,
  keys: PrivateKeyLookup,
): Promise<StoredControlMetadata> {
  const { data } = await storage.getContentsToMemory(key);
  const control = parseControlTar(await decodeBuffer(data, metadata, keys));
  if (!control) throw new Error(`${key} has no ${TAR_METADATA_FILENAME}`);
  return control;
}

/** The files of a delta manifest (empty when there is none). */
export function manifestFiles(control: StoredControlMetadata): DeltaManifestFile[] {
  return control.manifest?.snapshot_result?.state?.files ?? [];
}

/** Hexdigests and bundle names a delta backup references (what retention must keep). */
export function deltaReferences(control: StoredControlMetadata): { hexdigests: Set<string>; chunks: string[] } {
  const hexdigests = new Set<string>();
  for (const f of manifestFiles(control)) if (f.hexdigest) hexdigests.add(f.hexdigest);
  return { hexdigests, chunks: (control.chunks ?? []).map((c) => c.chunk_filename) };
}
