/**
 * Finding pg_basebackup and pg_receivewal/pg_receivexlog for a site (config.md §5), lazily: only
 * the code that spawns them calls this. `--version` results are cached per path.
 */
import { execFile } from "node:child_process";
import { existsSync, statSync } from "node:fs";
import path from "node:path";
import { pyRepr } from "../common/pycompat.js";
import { ConfigError } from "./errors.js";
import type { SiteConfig } from "./types.js";

export type PgCommand = "pg_basebackup" | "pg_receivexlog";

/** Versions searched when the site's PG_VERSION is unknown, newest first (upstream's order). */
export const SUPPORTED_PG_VERSIONS = ["18", "17", "16", "15", "14", "13", "12", "11", "10", "9.6", "9.5", "9.4", "9.3"];

/**
 * `pg_basebackup (PostgreSQL) 9.6.5` → 90605, `13.2` → 130002, `15devel` → 150000,
 * `9.5alpha1` → 90500, `16beta2` → 160000. Throws on anything else.
 */
export function parsePgCommandVersion(output: string): number {
  const match = / \(PostgreSQL\) (\d+(?:\.\d+)*)(devel|(?:alpha|beta|rc)\d*)?/.exec(output);
  if (!match || (!match[1]?.includes(".") && !match[2])) {
    throw new Error(`Unrecognized PostgreSQL version string ${pyRepr(output.trim())}`);
  }
  const parts = (match[1] ?? "").split(".").map((p) => Number(p));
  const [major = 0, second = 0, third = 0] = parts;
  if (major >= 10) return major * 10000 + second;
  return major * 10000 + second * 100 + third;
}

/** 150004 → "15", 90605 → "9.6": the form PG_VERSION files and the candidate list use. */
export function pgMajorFromNumber(version: number): string {
  const major = Math.floor(version / 10000);
  return major >= 10 ? String(major) : `${major}.${Math.floor(version / 100) % 100}`;
}

function programNames(command: PgCommand, version: string | undefined): string[] {
  if (command === "pg_basebackup") return ["pg_basebackup"];
  if (version === undefined) return ["pg_receivewal", "pg_receivexlog"];
  return parseFloat(version) >= 10 ? ["pg_receivewal"] : ["pg_receivexlog"];
}

const versionCache = new Map<string, Promise<number | null>>();

/** Runs `<binary> --version` once per path; null when it cannot be run or parsed. */
export function pgBinaryVersion(binary: string): Promise<number | null> {
  let cached = versionCache.get(binary);
  if (!cached) {
    cached = new Promise((resolve) => {
      execFile(binary, ["--version"], { timeout: 10_000 }, (err, stdout) => {
        if (err) return resolve(null);
        try {
          resolve(parsePgCommandVersion(String(stdout)));
        } catch {
          resolve(null);
        }
      });
    });
    versionCache.set(binary, cached);
  }
  return cached;
}

function isFile(p: string): boolean {
  try {
    return statSync(p).isFile();
  } catch {
    return false;
  }
}

export interface FindPgBinaryOptions {
  /** Major version wanted ("15", "9.6"); default: the site's PG_VERSION, else any supported one. */
  wantedMajor?: string;
  /** For the error message. */
  siteName?: string;
  /** Search path for the last-resort lookup; default `$PATH`. */
  searchPath?: string;
}

export interface PgBinary {
  path: string;
  /** Number as in parsePgCommandVersion (e.g. 150018). */
  version: number;
}

export async function findPgBinary(
  site: SiteConfig,
  command: PgCommand,
  options: FindPgBinaryOptions = {},
): Promise<PgBinary> {
  const siteLabel = pyRepr(options.siteName ?? "?");
  const explicit = site[`${command}_path`];
  if (typeof explicit === "string" && explicit) {
    const version = existsSync(explicit) ? await pgBinaryVersion(explicit) : null;
    if (version === null) {
      throw new ConfigError(`Site ${siteLabel} command ${pyRepr(command)} not found from path ${explicit}`);
    }
    return { path: explicit, version };
  }
  const known = options.wantedMajor ?? site.pg_data_directory_version;
  const versions = known ? [known] : SUPPORTED_PG_VERSIONS;
  for (const version of versions) {
    const candidates = site.pg_bin_directory
      ? programNames(command, version).map((prog) => path.join(site.pg_bin_directory as string, prog))
      : programNames(command, version).flatMap((prog) => [
          `/usr/pgsql-${version}/bin/${prog}`,
          `/usr/lib/postgresql/${version}/bin/${prog}`,
        ]);
    for (const candidate of candidates) {
      if (!isFile(candidate)) continue;
      const found = await pgBinaryVersion(candidate);
      if (found !== null && pgMajorFromNumber(found) === version) return { path: candidate, version: found };
    }
  }
  const searchPath = options.searchPath ?? process.env.PATH ?? "";
  for (const dir of searchPath.split(path.delimiter).filter(Boolean)) {
    for (const prog of programNames(command, undefined)) {
      const candidate = path.join(dir, prog);
      if (!isFile(candidate)) continue;
      const found = await pgBinaryVersion(candidate);
      if (found !== null && versions.includes(pgMajorFromNumber(found))) return { path: candidate, version: found };
    }
  }
  throw new ConfigError(`Site ${siteLabel} command ${pyRepr(command)} not found from path None`);
}
