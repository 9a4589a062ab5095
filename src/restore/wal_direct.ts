/**
 * The daemonless restore_command (`pghoard_postgres_command --mode restore --config FILE`):
 * PostgreSQL's call reads the site's object storage itself and writes the WAL or history file
 * to `%p`. The read-ahead of the daemon (http-api.md §7) is kept: after a segment is served, a
 * detached `--mode prefetch` process downloads the next `restore_prefetch` segments into
 * `<name>.pghoard.prefetch` files next to `%p`, so later calls are a checked local rename.
 * `--mode cleanup` (written as recovery_end_command) stops such processes and removes the
 * leftovers. File names, checks and the download are restore/wal_file.ts, shared with the daemon.
 *
 * Loaded by a dynamic import only in the direct mode; storage backends and the decode worker
 * are imported only when something has to be downloaded.
 */
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { readdir, readFile, rename, stat, unlink, writeFile } from "node:fs/promises";
import path from "node:path";

import { installedCommandPath } from "../common/install_paths.js";
import { fsyncDirectory } from "../common/fs.js";
import { isErrno } from "../common/errors.js";
import { relatedSites } from "../catalog/sites.js";
import { objectKey } from "../catalog/keys.js";
import { getSiteFromConfig } from "../config/sites.js";
import { nextWalName } from "../wal/names.js";
import { loadConfig } from "../config/load.js";
import type { PghoardConfig } from "../config/types.js";
import {
  downloadObjectTo,
  downloadTempPathFor,
  invalidWalFileReason,
  pendingDownloadNames,
  prefetchCandidates,
  publishPrefetch,
  prefetchPathFor,
  removePrefetchLeftovers,
  servePrefetchFile,
  siteDecoder,
  walFileTypeOf,
  DOWNLOAD_TEMP_SUFFIX,
  type WalFileType,
} from "./wal_file.js";

/** A failure PostgreSQL must treat as fatal (exit 5), with the reason for its log. */
export class DirectRestoreError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "DirectRestoreError";
  }
}

export interface DirectRestoreOptions {
  configPath: string;
  site: string;
  /** `%f` */
  xlog: string;
  /** `%p`, absolute (PostgreSQL passes it relative to $PGDATA, the command's cwd). */
  output: string;
  /** One line for PostgreSQL's log (warnings; success prints nothing, as upstream's client). */
  warn: (line: string) => void;
}

/** How long a call waits for a background download of the same file before fetching it itself. */
const PENDING_WAIT_MS = 15_000;
/** A `.pghoard.tmp` untouched this long belongs to a process that died: not a pending download. */
const STALE_TEMP_MS = 60_000;
/** Download attempts per object for errors other than "not found". */
const DOWNLOAD_ATTEMPTS = 3;
/** `<pid>.pghoard.prefetcher`: marks a running prefetch process for `--mode cleanup`. */
const PREFETCHER_SUFFIX = ".pghoard.prefetcher";

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

async function loadSite(configPath: string, site: string, warn: (line: string) => void): Promise<PghoardConfig> {
  let config: PghoardConfig;
  try {
    config = await loadConfig(configPath, { tool: "postgres_command", warn });
    getSiteFromConfig(config, site);
  } catch (err) {
    throw new DirectRestoreError(describe(err), { cause: err });
  }
  return config;
}

function fileTypeOf(name: string): WalFileType {
  const filetype = walFileTypeOf(name);
  if (!filetype) throw new DirectRestoreError(`'${name}' is neither a WAL segment nor a timeline history file name`);
  return filetype;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Removes stale download temp files; returns the names still being downloaded. */
async function activeDownloads(walDir: string): Promise<Set<string>> {
  const now = Date.now();
  for (const entry of await readdir(walDir).catch(() => [] as string[])) {
    if (!entry.endsWith(DOWNLOAD_TEMP_SUFFIX)) continue;
    const file = path.join(walDir, entry);
    const st = await stat(file).catch(() => null);
    if (st && now - st.mtimeMs > STALE_TEMP_MS) await unlink(file).catch(() => undefined);
  }
  return pendingDownloadNames(walDir);
}

/**
 * Downloads one object (trying the site and the sites it moved from, as the daemon) into a temp
 * file in `walDir` that passed the check; returns its path, or null when no site has it.
 */
async function downloadChecked(
  config: PghoardConfig,
  site: string,
  filetype: WalFileType,
  name: string,
  walDir: string,
  registerTemp: (tmpPath: string | null) => void = () => undefined,
): Promise<string | null> {
  // The heavy parts (SDKs, compression, crypto) only now that a download is needed. The object is
  // decoded on this thread: this one-shot process has nothing else to do meanwhile, and a worker
  // thread would load the codecs a second time and copy every batch (measured: bench/wal).
  const [{ createStorage, StorageNotFoundError }, { createDecodeStream }] = await Promise.all([
    import("../storage/index.js"),
    import("../fileformat/streams.js"),
  ]);
  {
    for (const related of relatedSites(config, site)) {
      const siteConfig = config.backup_sites[related];
      const storage = await createStorage(siteConfig.object_storage);
      const key = objectKey(siteConfig.prefix, filetype, name);
      const decoder = siteDecoder(siteConfig, (metadata, pem) => createDecodeStream(metadata, () => pem ?? undefined));
      try {
        let lastError: unknown;
        for (let attempt = 1; attempt <= DOWNLOAD_ATTEMPTS; attempt++) {
          const tmpPath = downloadTempPathFor(walDir, name);
          registerTemp(tmpPath);
          try {
            await downloadObjectTo(storage, key, tmpPath, decoder);
            const invalid = await invalidWalFileReason(filetype, name, tmpPath);
            if (invalid === null) return tmpPath;
            lastError = new Error(`downloaded '${key}' failed verification: ${invalid}`);
          } catch (err) {
            if (err instanceof StorageNotFoundError) break;
            lastError = err;
          }
          await unlink(tmpPath).catch(() => undefined);
          registerTemp(null);
          if (lastError !== undefined && attempt < DOWNLOAD_ATTEMPTS) await sleep(200 * attempt);
        }
        if (lastError !== undefined) {
          throw new DirectRestoreError(`Fetching '${key}' failed: ${describe(lastError)}`, { cause: lastError });
        }
      } finally {
        await storage.close().catch(() => undefined);
      }
    }
    return null;
  }
}

/** Starts the detached read-ahead after `name` was served, when there is something to fetch. */
async function startPrefetch(opts: DirectRestoreOptions, config: PghoardConfig, walDir: string): Promise<void> {
  const count = config.restore_prefetch;
  if (!(count > 0) || walFileTypeOf(opts.xlog) !== "xlog") return;
  const pending = await activeDownloads(walDir);
  const candidates = await prefetchCandidates(walDir, opts.xlog, count, (c) => pending.has(c));
  // One process per half window rather than per call (each costs a Node start-up): start one when
  // the very next segment is missing or half of the read-ahead is used up.
  const nextMissing = candidates[0] === nextWalName(opts.xlog);
  if (!nextMissing && candidates.length < Math.ceil(count / 2)) return;
  const child = spawn(
    process.execPath,
    [
      installedCommandPath("pghoard_postgres_command"),
      "--mode",
      "prefetch",
      "--config",
      opts.configPath,
      "--site",
      opts.site,
      "--xlog",
      opts.xlog,
      "--output",
      opts.output,
    ],
    // Detached and without our stdio, so PostgreSQL's system() call returns as soon as we exit.
    { detached: true, stdio: "ignore" },
  );
  child.on("error", (err) => opts.warn(`Could not start WAL prefetch: ${describe(err)}`));
  child.unref();
}

/**
 * Restores `opts.xlog` to `opts.output`: "restored", or "not-found" when no related site has it
 * (PostgreSQL then ends recovery or keeps waiting). Throws DirectRestoreError for fatal errors.
 */
export async function restoreWalDirect(opts: DirectRestoreOptions): Promise<"restored" | "not-found"> {
  const filetype = fileTypeOf(opts.xlog);
  const config = await loadSite(opts.configPath, opts.site, opts.warn);
  const walDir = path.dirname(opts.output);
  const prefetchPath = prefetchPathFor(walDir, opts.xlog);
  const warnInvalid = (reason: string): void => opts.warn(`Discarded invalid ${prefetchPath}: ${reason}`);
  const serve = async (): Promise<boolean> => {
    try {
      return (await servePrefetchFile(filetype, opts.xlog, prefetchPath, opts.output, warnInvalid)) === "served";
    } catch (err) {
      throw new DirectRestoreError(`Unable to move ${prefetchPath} to ${opts.output}: ${describe(err)}`);
    }
  };

  if (await serve()) {
    await startPrefetch(opts, config, walDir);
    return "restored";
  }
  // A background download of this very file: wait for it rather than fetching it twice.
  const deadline = Date.now() + PENDING_WAIT_MS;
  while ((await activeDownloads(walDir)).has(opts.xlog) && Date.now() < deadline) await sleep(25);
  if (await serve()) {
    await startPrefetch(opts, config, walDir);
    return "restored";
  }

  const tmpPath = await downloadChecked(config, opts.site, filetype, opts.xlog, walDir);
  if (tmpPath === null) return "not-found";
  try {
    await renameInto(tmpPath, opts.output);
  } catch (err) {
    await unlink(tmpPath).catch(() => undefined);
    throw new DirectRestoreError(`Unable to write ${opts.output}: ${describe(err)}`, { cause: err });
  }
  await startPrefetch(opts, config, walDir);
  return "restored";
}

async function renameInto(tmpPath: string, target: string): Promise<void> {
  await rename(tmpPath, target);
  await fsyncDirectory(path.dirname(target));
}

/**
 * `--mode prefetch`: downloads the next `restore_prefetch` segments after `opts.xlog` into
 * `.pghoard.prefetch` files, stopping at the first one no site has (the end of the archive).
 * Errors are not reported anywhere: the call that needs the segment fetches it itself.
 */
export async function runPrefetch(opts: DirectRestoreOptions): Promise<void> {
  const config = await loadSite(opts.configPath, opts.site, opts.warn);
  const walDir = path.dirname(opts.output);
  const marker = path.join(walDir, `${process.pid}${PREFETCHER_SUFFIX}`);
  let currentTemp: string | null = null;
  const onTerm = (): void => {
    // Stopped by --mode cleanup at the end of recovery: leave nothing behind.
    if (currentTemp) void unlink(currentTemp).catch(() => undefined);
    void unlink(marker)
      .catch(() => undefined)
      .finally(() => process.exit(0));
  };
  process.once("SIGTERM", onTerm);
  await writeFile(marker, `${process.pid}\n`);
  try {
    const pending = await activeDownloads(walDir);
    const candidates = await prefetchCandidates(walDir, opts.xlog, config.restore_prefetch, (c) => pending.has(c));
    for (const name of candidates) {
      // Another read-ahead process (started by a later call) may have taken this one meanwhile.
      if (existsSync(prefetchPathFor(walDir, name)) || (await pendingDownloadNames(walDir)).has(name)) continue;
      const tmpPath = await downloadChecked(config, opts.site, "xlog", name, walDir, (t) => (currentTemp = t));
      if (tmpPath === null) break;
      await publishPrefetch("xlog", name, tmpPath, prefetchPathFor(walDir, name), () => undefined);
      await unlink(tmpPath).catch(() => undefined);
      currentTemp = null;
    }
  } finally {
    process.removeListener("SIGTERM", onTerm);
    await unlink(marker).catch(() => undefined);
  }
}

/** Whether `pid` is a live prefetch process of ours (the marker could outlive its process). */
async function isPrefetcher(pid: number): Promise<boolean> {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  const cmdline = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => null);
  // Without /proc, trust the marker: it is removed when the process ends normally.
  return cmdline === null || (cmdline.includes("pghoard_postgres_command") && cmdline.includes("prefetch"));
}

/**
 * `--mode cleanup` (recovery_end_command): stops running prefetch processes of `walDir` and
 * removes every `.pghoard.prefetch` / `.pghoard.tmp` file. Returns the number of files removed.
 */
export async function cleanupPrefetch(walDir: string): Promise<number> {
  const markers = (await readdir(walDir)).filter((e) => e.endsWith(PREFETCHER_SUFFIX));
  const running: number[] = [];
  for (const entry of markers) {
    const pid = Number.parseInt(entry, 10);
    if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && (await isPrefetcher(pid))) {
      try {
        process.kill(pid, "SIGTERM");
        running.push(pid);
      } catch (err) {
        if (!isErrno(err, "ESRCH")) throw err;
      }
    }
  }
  const deadline = Date.now() + 5000;
  for (const pid of running) {
    while (Date.now() < deadline && (await isPrefetcher(pid))) await sleep(25);
  }
  for (const entry of markers) await unlink(path.join(walDir, entry)).catch(() => undefined);
  return removePrefetchLeftovers(walDir);
}
