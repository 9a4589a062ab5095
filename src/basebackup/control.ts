/**
 * Writing the control object of chunked backups (`basebackup/NAME.00000000.pghoard`,
 * storage-layout.md §5.3/§5.6): its tar members. Its types and the reader live in the catalog.
 */
import { TAR_METADATA_FILENAME, type ControlMetadata } from "../catalog/index.js";
import { jsonCompact } from "./label.js";
import { TarBuffer } from "./tar.js";

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

/** The uncompressed control tar: metadata JSON, pg_control, backup_label, fixed empty dirs. */
export function buildControlTar(args: {
  metadata: ControlMetadata;
  pgControl: Buffer;
  backupLabel: Buffer;
  mtime?: number;
}): Buffer {
  const mtime = args.mtime ?? Date.now() / 1000;
  const tar = new TarBuffer(64 * 1024);
  const json = Buffer.from(jsonCompact(args.metadata), "utf8");
  tar.addEntry({ name: TAR_METADATA_FILENAME, type: "file", size: json.length, mode: 0o644, mtime }, json);
  tar.addEntry(
    { name: "pgdata/global/pg_control", type: "file", size: args.pgControl.length, mode: 0o644, mtime },
    args.pgControl,
  );
  tar.addEntry(
    { name: "pgdata/backup_label", type: "file", size: args.backupLabel.length, mode: 0o644, mtime },
    args.backupLabel,
  );
  for (const dir of EMPTY_DIRS) tar.addEntry({ name: `pgdata/${dir}`, type: "directory", mode: 0o700, mtime });
  return Buffer.concat([...tar.takeFull(), ...tar.finish()]);
}
