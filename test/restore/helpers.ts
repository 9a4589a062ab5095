/** Shared helpers of the restore tests: directory manifests, fixture configs, running the CLI. */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { lstat, readdir, readFile, readlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";

import { main } from "../../src/commands/restore.js";
import { repoRoot, sharedDir } from "../helpers/paths.js";

const execFileAsync = promisify(execFile);

export interface ManifestEntry {
  path: string;
  size?: number;
  sha256?: string;
  empty_dir?: boolean;
  symlink?: string;
  /** Permission bits in octal, with `{ modes: true }`. */
  mode?: string;
  /** With `{ modes: true }`: every directory is listed (path with a trailing `/`). */
  dir?: boolean;
}

/**
 * Same shape as the fixtures' restored manifests: files, empty dirs (trailing `/`), symlinks.
 * `modes` adds permission bits and lists every directory.
 */
export async function directoryManifest(root: string, options: { modes?: boolean } = {}): Promise<ManifestEntry[]> {
  const entries: ManifestEntry[] = [];
  async function walk(rel: string): Promise<void> {
    const names = (await readdir(path.join(root, rel))).sort();
    if (names.length === 0 && rel !== "") entries.push({ path: rel + "/", empty_dir: true });
    for (const name of names) {
      const childRel = rel ? `${rel}/${name}` : name;
      const abs = path.join(root, childRel);
      const st = await lstat(abs);
      const mode = options.modes ? { mode: (st.mode & 0o7777).toString(8) } : {};
      if (st.isSymbolicLink()) entries.push({ path: childRel, symlink: await readlink(abs) });
      else if (st.isDirectory()) {
        if (options.modes) entries.push({ path: childRel + "/", dir: true, ...mode });
        await walk(childRel);
      } else {
        const data = await readFile(abs);
        const sha256 = createHash("sha256").update(data).digest("hex");
        entries.push({ path: childRel, size: data.length, sha256, ...mode });
      }
    }
  }
  await walk("");
  return entries.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

export function sortManifest(entries: ManifestEntry[]): ManifestEntry[] {
  return [...entries]
    .map((e) => Object.fromEntries(Object.entries(e).sort(([a], [b]) => (a < b ? -1 : 1))) as unknown as ManifestEntry)
    .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

export const pghoardMadeDir = path.join(sharedDir, "fixtures", "pghoard-made");
export const FIXTURE_SETS = ["snappy-enc-localtar", "zstd-plain-localtar", "snappy-plain-basic"] as const;

/**
 * A config for one pghoard-made set: its pghoard.json with `object_storage.directory` pointed at
 * the set's store and the paths of the machine that made it dropped.
 */
export async function writeFixtureConfig(
  set: string,
  dir: string,
  overrides: Record<string, unknown> = {},
): Promise<string> {
  const config = JSON.parse(await readFile(path.join(pghoardMadeDir, set, "pghoard.json"), "utf8")) as Record<
    string,
    unknown
  >;
  const sites = config.backup_sites as Record<string, Record<string, unknown>>;
  for (const site of Object.values(sites)) {
    site.object_storage = { storage_type: "local", directory: path.join(pghoardMadeDir, set, "store") };
    delete site.pg_data_directory;
    delete site.nodes;
  }
  config.backup_location = path.join(dir, "backup_location");
  config.alert_file_dir = dir;
  config.json_state_file_path = path.join(dir, "state.json");
  config.maintenance_mode_file = path.join(dir, "maintenance_mode_file");
  Object.assign(config, overrides);
  const file = path.join(dir, `${set}.json`);
  await writeFile(file, JSON.stringify(config, null, 2));
  return file;
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `node bin/pghoard_restore.js ...` as a user would. */
export async function runRestoreCli(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  try {
    const { stdout, stderr } = await execFileAsync(
      process.execPath,
      [path.join(repoRoot, "bin", "pghoard_restore.js"), ...args],
      {
        env: { ...process.env, ...env },
        maxBuffer: 64 * 1024 * 1024,
      },
    );
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    if (typeof e.code !== "number") throw err;
    return { code: e.code, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
  }
}

/** Runs `pghoard_restore <args>` in-process, capturing stdout. */
export async function restoreCli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const io = {
    stdout: { write: (s: string) => ((stdout += s), true) } as unknown as NodeJS.WritableStream,
    stderr: { write: (s: string) => ((stderr += s), true) } as unknown as NodeJS.WritableStream,
  };
  const code = await main(args, io);
  return { code, stdout, stderr };
}

/**
 * `get-basebackup` of a site's latest backup with the given config and the default (direct)
 * restore_command, recovering to a restore point and promoting; fails the test on a non-zero exit.
 */
export async function restoreToRestorePoint(
  config: string,
  site: string,
  targetDir: string,
  restorePoint: string,
): Promise<CliResult> {
  const result = await runRestoreCli([
    "get-basebackup",
    "--config",
    config,
    "--site",
    site,
    "--target-dir",
    targetDir,
    "--recovery-target-name",
    restorePoint,
    "--recovery-target-action",
    "promote",
    "--restore-to-primary",
  ]);
  if (result.code !== 0) throw new Error(`get-basebackup exited ${result.code}:\n${result.stdout}${result.stderr}`);
  return result;
}
