/**
 * The control object of chunked backups (`basebackup/NAME.00000000.pghoard`, storage-layout.md
 * §5.3/§5.6): its tar members, and reading its `.pghoard_tar_metadata.json` back from storage
 * (retention and the next delta backup need the chunk lists and manifests of existing backups).
 */
import { decodeBuffer } from "../fileformat/index.js";
import type { PrivateKeyLookup } from "../fileformat/index.js";
import type { Metadata, StorageBackend } from "../storage/types.js";
import { jsonCompact } from "./label.js";
import { BLOCK_SIZE, TarBuffer } from "./tar.js";

export const TAR_METADATA_FILENAME = ".pghoard_tar_metadata.json";
/** Delta manifests embed files up to this size (rohmu `EMBEDDED_FILE_SIZE`). */
export const EMBEDDED_FILE_SIZE = 150;
export const BASEBACKUP_LABEL = "pghoard_base_backup";

/** Directories recreated empty on restore; never read from $PGDATA (upstream `EMPTY_DIRS`). */
export const EMPTY_DIRS = [
  "pg_dynshmem",
  "pg_log",
  "pg_replslot",
  "pg_snapshot",
  "pg_stat_tmp",
  "pg_tblspc",
  "pg_wal",
  "pg_wal/archive_status",
  "pg_xlog",
  "pg_xlog/archive_status",
];

export interface TablespaceInfo {
  path: string;
  oid: number;
}

export interface ChunkRecord {
  chunk_filename: string;
  input_size: number;
  result_size: number;
  files: string[];
}

/** Control JSON in upstream's key order (storage-layout.md §5.6). */
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

/** The uncompressed control tar: metadata JSON, pg_control, backup_label, fixed empty dirs. */
export function buildControlTar(args: { metadata: ControlMetadata; pgControl: Buffer; backupLabel: Buffer; mtime?: number }): Buffer {
  const mtime = args.mtime ?? Date.now() / 1000;
  const tar = new TarBuffer(64 * 1024);
  const json = Buffer.from(jsonCompact(args.metadata), "utf8");
  tar.addEntry({ name: TAR_METADATA_FILENAME, type: "file", size: json.length, mode: 0o644, mtime }, json);
  tar.addEntry({ name: "pgdata/global/pg_control", type: "file", size: args.pgControl.length, mode: 0o644, mtime }, args.pgControl);
  tar.addEntry({ name: "pgdata/backup_label", type: "file", size: args.backupLabel.length, mode: 0o644, mtime }, args.backupLabel);
  for (const dir of EMPTY_DIRS) tar.addEntry({ name: `pgdata/${dir}`, type: "directory", mode: 0o700, mtime });
  return Buffer.concat([...tar.takeFull(), ...tar.finish()]);
}

function parseOctal(buf: Buffer, offset: number, width: number): number {
  const text = buf.toString("ascii", offset, offset + width).replace(/\0.*$/s, "").trim();
  return text ? parseInt(text, 8) : 0;
}

/** Finds one member of an in-memory tar (ustar, pax `x`/`g`, GNU `L`); null when absent. */
export function findTarMember(tar: Buffer, wanted: string): Buffer | null {
  let offset = 0;
  let longName: string | null = null;
  while (offset + BLOCK_SIZE <= tar.length) {
    const header = tar.subarray(offset, offset + BLOCK_SIZE);
    if (header.every((b) => b === 0)) return null;
    let name = header.toString("utf8", 0, 100).replace(/\0.*$/s, "");
    const prefix = header.toString("utf8", 345, 500).replace(/\0.*$/s, "");
    if (prefix && header.toString("ascii", 257, 262) === "ustar") name = `${prefix}/${name}`;
    let size = parseOctal(header, 124, 12);
    const type = String.fromCharCode(header[156]);
    const dataStart = offset + BLOCK_SIZE;
    const next = dataStart + Math.ceil(size / BLOCK_SIZE) * BLOCK_SIZE;
    if (type === "x" || type === "g") {
      const text = tar.toString("utf8", dataStart, dataStart + size);
      for (const m of text.matchAll(/^\d+ ([^=]+)=(.*)$/gm)) {
        if (m[1] === "path" && type === "x") longName = m[2];
      }
      offset = next;
      continue;
    }
    if (type === "L") {
      longName = tar.toString("utf8", dataStart, dataStart + size).replace(/\0.*$/s, "");
      offset = next;
      continue;
    }
    if (longName !== null) {
      name = longName;
      longName = null;
    }
    if (name === wanted || name === `./${wanted}`) return tar.subarray(dataStart, dataStart + size);
    size = 0;
    offset = next;
  }
  return null;
}

/** Downloads a control object and returns its parsed `.pghoard_tar_metadata.json`. */
export async function readControlMetadata(
  storage: StorageBackend,
  key: string,
  metadata: Metadata,
  keys: PrivateKeyLookup,
): Promise<Record<string, unknown>> {
  const { data } = await storage.getContentsToMemory(key);
  const plain = await decodeBuffer(data, metadata, keys);
  const member = findTarMember(plain, TAR_METADATA_FILENAME);
  if (!member) throw new Error(`${key} has no ${TAR_METADATA_FILENAME}`);
  return JSON.parse(member.toString("utf8")) as Record<string, unknown>;
}
