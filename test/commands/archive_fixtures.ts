/**
 * Shared setup of the archive_cleanup / archive_sync tests: real PostgreSQL 15 clusters that
 * archive into a plain directory, and storing those files in a local store the way the daemon's
 * compressor does (snappy, upstream metadata), so the commands see real WAL and real history files.
 */
import { createHash } from "node:crypto";
import { spawn } from "node:child_process";
import { mkdir, readFile, readdir, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { encodeBuffer } from "../../src/fileformat/index.js";
import type { StorageBackend } from "../../src/storage/index.js";
import { isHistoryName, isWalName, previousWalName } from "../../src/wal/index.js";
import { repoRoot } from "../helpers/paths.js";
import type { PgCluster } from "../helpers/pgcluster.js";

export const PG_VERSION_NUM = "150000";

/** Stores one WAL or history file as the daemon does (snappy, metadata of storage-layout.md §4.3). */
export async function storeArchivedFile(
  storage: StorageBackend,
  sitePrefix: string,
  filePath: string,
  name: string,
): Promise<void> {
  const data = await readFile(filePath);
  const encoded = await encodeBuffer(data, {
    algorithm: "snappy",
    level: 0,
    encryptionKeyId: null,
    publicKeyPem: null,
  });
  const metadata: Record<string, string> = {
    "compression-algorithm": "snappy",
    "compression-level": "0",
    "original-file-size": String(data.length),
    host: os.hostname(),
    "pg-version": PG_VERSION_NUM,
  };
  const history = isHistoryName(name);
  if (!history) {
    metadata.hash = createHash("sha1").update(data).digest("hex");
    metadata["hash-algorithm"] = "sha1";
  }
  await storage.storeFileFromMemory(`${sitePrefix}/${history ? "timeline" : "xlog"}/${name}`, encoded, metadata);
}

/** Stores every WAL segment, `.partial` and history file of `archiveDir` (names filtered by `accept`). */
export async function storeArchiveDir(
  storage: StorageBackend,
  sitePrefix: string,
  archiveDir: string,
  accept: (name: string) => boolean = () => true,
): Promise<string[]> {
  const stored: string[] = [];
  for (const name of (await readdir(archiveDir)).sort()) {
    const isPartial = name.endsWith(".partial") && isWalName(name.slice(0, 24));
    if (!isWalName(name) && !isHistoryName(name) && !isPartial) continue;
    if (!accept(name)) continue;
    await storeArchivedFile(storage, sitePrefix, path.join(archiveDir, name), name);
    stored.push(name);
  }
  return stored;
}

/** `START WAL LOCATION: 0/6000028 (file 000000010000000000000006)` → the file name. */
export function startWalFromLabel(label: string): string {
  const m = /START WAL LOCATION: \S+ \(file ([0-9A-F]{24})\)/.exec(label);
  if (!m) throw new Error(`no START WAL LOCATION in backup_label:\n${label}`);
  return m[1] as string;
}

/**
 * Takes a real pg_basebackup (tar format, WAL fetched) of `cluster` into `dir` and stores a
 * basebackup object carrying upstream's metadata. Returns the backup's start segment.
 */
export async function takeBasebackup(
  cluster: PgCluster,
  storage: StorageBackend,
  sitePrefix: string,
  dir: string,
  name: string,
): Promise<string> {
  await cluster.exec("pg_basebackup", ["-D", dir, "-F", "t", "-X", "none", "-c", "fast", "--no-sync"], {
    timeoutMs: 120_000,
  });
  const tar = await readFile(path.join(dir, "base.tar"));
  const label = await extractFromTar(tar, "backup_label");
  const startWal = startWalFromLabel(label.toString("utf8"));
  const encoded = await encodeBuffer(tar, { algorithm: "snappy", level: 0, encryptionKeyId: null, publicKeyPem: null });
  const startTime = /START TIME: (.*)/.exec(label.toString("utf8"))?.[1] ?? new Date().toISOString();
  await storage.storeFileFromMemory(`${sitePrefix}/basebackup/${name}`, encoded, {
    "compression-algorithm": "snappy",
    "original-file-size": String(tar.length),
    host: os.hostname(),
    "pg-version": PG_VERSION_NUM,
    "start-time": new Date(startTime.replace(" UTC", "Z").replace(" ", "T")).toISOString().replace("Z", "+00:00"),
    "start-wal-segment": startWal,
    "active-backup-mode": "archive_command",
    "basebackup-mode": "basic",
    "backup-reason": "scheduled",
  });
  return startWal;
}

/** Minimal ustar reader for one member (the backup_label of a pg_basebackup tar). */
async function extractFromTar(tar: Buffer, member: string): Promise<Buffer> {
  let offset = 0;
  while (offset + 512 <= tar.length) {
    const header = tar.subarray(offset, offset + 512);
    const name = header.subarray(0, 100).toString("utf8").replace(/\0.*$/s, "");
    if (name === "") break;
    const size = Number.parseInt(header.subarray(124, 136).toString("utf8").replace(/\0.*$/s, "").trim() || "0", 8);
    if (name === member || name === `./${member}`) return tar.subarray(offset + 512, offset + 512 + size);
    offset += 512 + Math.ceil(size / 512) * 512;
  }
  throw new Error(`${member} not found in tar`);
}

/** Forces `count` new WAL segments (some data in each, then pg_switch_wal). */
export async function makeSegments(cluster: PgCluster, count: number): Promise<void> {
  await cluster.query("CREATE TABLE IF NOT EXISTS filler (id serial, payload text)");
  for (let i = 0; i < count; i++) {
    await cluster.query("INSERT INTO filler (payload) SELECT repeat('x', 100) FROM generate_series(1, 100)");
    await cluster.query("SELECT pg_switch_wal()");
  }
}

/** Waits until the segment before the current one is in `archiveDir` (PostgreSQL archived it). */
export async function waitForArchived(cluster: PgCluster, archiveDir: string, timeoutMs = 60_000): Promise<void> {
  const [row] = await cluster.query<{ name: string }>("SELECT pg_walfile_name(pg_current_wal_lsn()) AS name");
  const previous = previousWalName(row?.name as string);
  const deadline = Date.now() + timeoutMs;
  while (previous && Date.now() < deadline) {
    if ((await readdir(archiveDir)).includes(previous)) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  if (previous) throw new Error(`${previous} was not archived in time`);
}

export interface CommandResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs one of our bin/ scripts with node; `env` adds to the environment. */
export async function runBin(script: string, args: string[], env: Record<string, string> = {}): Promise<CommandResult> {
  return await new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(repoRoot, "bin", script), ...args], {
      env: { ...process.env, NOTIFY_SOCKET: "", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.once("error", reject);
    child.once("close", (code) => resolve({ code, stdout, stderr }));
  });
}

/** Writes a pghoard.json for one site with a local store; returns its path. */
export async function writeConfig(
  dir: string,
  site: Record<string, unknown>,
  extra: Record<string, unknown> = {},
): Promise<string> {
  await mkdir(dir, { recursive: true });
  const configPath = path.join(dir, "pghoard.json");
  await writeFile(
    configPath,
    JSON.stringify({ backup_location: path.join(dir, "spool"), backup_sites: { default: site }, ...extra }, null, 4),
  );
  return configPath;
}
