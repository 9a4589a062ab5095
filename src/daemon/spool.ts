/**
 * The local spool below `backup_location` (storage-layout.md §8):
 *   <backup_location>/<prefix>/{xlog_incoming,xlog,timeline,basebackup,basebackup_incoming}/
 * Compressed files waiting for upload sit in xlog/ and timeline/ with a `<name>.metadata` sidecar
 * (typed JSON, indent 4, sorted keys, trailing newline).
 */
import { readFile } from "node:fs/promises";
import path from "node:path";
import { mkdirp, writeFileAtomic } from "../common/fs.js";
import { stringifySorted } from "./json.js";

export type WalFileType = "xlog" | "timeline";

export interface SiteSpoolPaths {
  site: string;
  xlogIncoming: string;
  xlog: string;
  timeline: string;
  basebackup: string;
  basebackupIncoming: string;
}

export function siteSpoolPaths(
  backupLocation: string,
  prefix: string,
): Omit<SiteSpoolPaths, "site"> & { site: string } {
  const site = path.join(backupLocation, prefix);
  return {
    site,
    xlogIncoming: path.join(site, "xlog_incoming"),
    xlog: path.join(site, "xlog"),
    timeline: path.join(site, "timeline"),
    basebackup: path.join(site, "basebackup"),
    basebackupIncoming: path.join(site, "basebackup_incoming"),
  };
}

export async function createSiteSpoolDirs(paths: SiteSpoolPaths): Promise<void> {
  for (const dir of [
    paths.site,
    paths.xlogIncoming,
    paths.xlog,
    paths.timeline,
    paths.basebackup,
    paths.basebackupIncoming,
  ]) {
    await mkdirp(dir);
  }
}

/** Spool directory holding compressed files of this type. */
export function compressedDir(paths: SiteSpoolPaths, filetype: WalFileType): string {
  return filetype === "xlog" ? paths.xlog : paths.timeline;
}

export type SpoolMetadata = Record<string, string | number | boolean | null>;

export async function writeSpoolMetadata(filePath: string, metadata: SpoolMetadata): Promise<void> {
  await writeFileAtomic(`${filePath}.metadata`, `${stringifySorted(metadata)}\n`);
}

export async function readSpoolMetadata(filePath: string): Promise<SpoolMetadata> {
  const parsed: unknown = JSON.parse(await readFile(`${filePath}.metadata`, "utf8"));
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    throw new Error(`${filePath}.metadata is not a JSON object`);
  }
  return parsed as SpoolMetadata;
}
