/**
 * The restore_command side of the HTTP API (http-api.md §4.7, §6, §7): GET /<site>/archive/<name>
 * with `x-pghoard-target-path` serves a WAL or history file at the target path, from a prefetched
 * download, from the WAL directory on disk, or from the store; after a WAL segment the next
 * `restore_prefetch` segments are downloaded ahead into `<name>.pghoard.prefetch` files. The file
 * names, checks and prefetch candidates are restore/wal_file.ts (shared with the direct mode);
 * this file adds the daemon's side: target validation, the transfer queue, the caches.
 */
import { randomBytes } from "node:crypto";
import {
  constants as fsConstants,
  existsSync,
  lstatSync,
  readlinkSync,
  realpathSync,
  renameSync,
  statSync,
  watch,
  type FSWatcher,
} from "node:fs";
import { chown, copyFile, open, rename, stat, unlink } from "node:fs/promises";
import path from "node:path";
import type { Logger } from "pino";
import { siteLogger } from "../common/logger.js";
import { withTimeout } from "../common/async.js";
import { pgWalDirectory } from "../config/index.js";
import { relatedSites } from "../catalog/index.js";
import {
  downloadTempPathFor,
  invalidWalFileReason,
  prefetchCandidates,
  prefetchPathFor,
  PREFETCH_SUFFIX,
  publishPrefetch,
  servePrefetchFile,
} from "../restore/wal_file.js";
import type { DaemonContext } from "./context.js";
import { isErrno } from "../common/errors.js";
import { fsyncFile } from "../common/fs.js";
import { pyRepr } from "../common/pycompat.js";
import { HttpResponse, nowSeconds, REQUEST_TIMEOUT_MS, type FileType } from "./http.js";
import type { TransferResult } from "./types.js";
import { checkRestoreTarget } from "./restore_target.js";

const NEGATIVE_CACHE_SIZE = 32;
/** Request header of the bash client's prefetched restore (renameClientPrefetch). */
export const CLIENT_PREFETCH_HEADER = "x-pghoard-client-prefetch";
const SERVED_FROM_DISK_SIZE = 10;

interface PendingDownload {
  id: number;
  startedAt: number;
  prefetchPath: string;
  tmpPath: string;
  done: Promise<void>;
  /**
   * The target of the request waiting for this download: the decoded file is renamed straight to
   * it, without an fsync (PostgreSQL asks again after a crash) and without the prefetch name.
   * Cleared when that request stops waiting; the file then becomes a prefetch file, fsync'd first.
   */
  serveTo?: string;
  served: boolean;
  /** fsync'd as downloaded (false for a download started with a `serveTo`). */
  durable: boolean;
}

interface ServedFile {
  name: string;
  time: number;
}

/**
 * Files the daemon creates in a WAL directory or at a restore target belong to the directory's
 * owner when the daemon runs as root (PostgreSQL, running as its own user, must read them).
 */
async function chownLikeDirectory(file: string, dir: string): Promise<void> {
  if (typeof process.getuid !== "function" || process.getuid() !== 0) return;
  const st = await stat(dir);
  await chown(file, st.uid, st.gid);
}

/**
 * realpath that, like Python's non-strict os.path.realpath, also resolves paths that do not exist
 * (yet) and dangling symlinks (followed to where they point, so a link leading outside is seen as outside).
 * Synchronous, as the other checks of a restore target: a few metadata calls on the local file
 * system take microseconds, while each trip through libuv's thread pool costs a wake-up (a
 * prefetched restore is on PostgreSQL's critical path, one call per segment).
 */
function realpathLoose(p: string, depth = 0): string {
  try {
    return realpathSync.native(p);
  } catch (err) {
    if (!isErrno(err, "ENOENT") && !isErrno(err, "ENOTDIR")) throw err;
    const parent = path.dirname(p);
    if (parent === p) return p;
    const resolvedParent = realpathLoose(parent, depth + 1);
    const joined = path.join(resolvedParent, path.basename(p));
    if (depth < 40) {
      try {
        if (lstatSync(joined).isSymbolicLink()) {
          return realpathLoose(path.resolve(resolvedParent, readlinkSync(joined)), depth + 1);
        }
      } catch {
        // does not exist at all: the joined path is the answer
      }
    }
    return joined;
  }
}

export class WalRestoreHandler {
  private nextDownloadId = 1;
  /** Key `<site>_<type>_<name>` → the current download of that object into a `.pghoard.tmp` file. */
  private pendingDownloads = new Map<string, PendingDownload>();
  /** Keys whose download reported "not found" (prefetch negative cache). */
  private prefetch404: string[] = [];
  /** Names recently served from the WAL directory on disk; a second request goes to the store. */
  private servedFromDisk: string[] = [];
  readonly mostRecentlyServedFiles: Partial<Record<FileType, ServedFile>> = {};
  /** WAL directories watched for prefetch files the client took itself (its fast path skips us). */
  private prefetchWatchers = new Map<string, FSWatcher>();

  constructor(
    private readonly ctx: DaemonContext,
    private readonly log: Logger,
  ) {}

  /** http-api.md §4.7: related sites in order; 404 moves on to the next one. */
  async getWalOrTimelineFile(site: string, filetype: FileType, name: string, target: string): Promise<HttpResponse> {
    for (const related of relatedSites(this.ctx.config, site)) {
      const resp = await this.getFileForSite(related, filetype, name, target);
      if (resp.status !== 404) return resp;
    }
    return new HttpResponse(404, `'${name}' not found from archive`);
  }

  private fileKey(site: string, filetype: FileType, name: string): string {
    return `${site}_${filetype}_${name}`;
  }

  /** http-api.md §6: absolute, inside the data directory (after resolving symlinks), parent exists. */
  private validateTargetPath(site: string, target: string): void {
    if (!path.isAbsolute(target)) {
      throw new HttpResponse(400, `Invalid xlog file path ${target}, an absolute path expected`);
    }
    const dataDir = this.ctx.site(site).pg_data_directory;
    if (!dataDir) {
      throw new HttpResponse(
        400,
        `Invalid xlog file path ${target}, it should be in data directory (site '${site}' has no pg_data_directory)`,
      );
    }
    const resolvedData = realpathLoose(path.resolve(dataDir));
    const resolvedTarget = realpathLoose(path.resolve(target));
    const relative = path.relative(resolvedData, resolvedTarget);
    if (!relative || relative === ".." || relative.startsWith(`..${path.sep}`) || path.isAbsolute(relative)) {
      throw new HttpResponse(
        400,
        `Invalid xlog file path ${target}, it should be in data directory ${dataDir} of site '${site}'`,
      );
    }
    try {
      const parent = statSync(path.dirname(resolvedTarget));
      if (!parent.isDirectory()) throw new Error("not a directory");
    } catch {
      throw new HttpResponse(409, `Invalid xlog file path ${target}, parent directory should exist`);
    }
  }

  private async isValidFile(site: string, filetype: FileType, name: string, filePath: string): Promise<boolean> {
    const reason = await invalidWalFileReason(filetype, name, filePath);
    if (reason !== null) siteLogger(this.log, site).warn(`Verification of ${filePath} failed: ${reason}`);
    return reason === null;
  }

  /** Moves a checked `.pghoard.prefetch` file to the target (the client's fast path may take it first). */
  private async servePrefetchFile(
    site: string,
    filetype: FileType,
    name: string,
    prefetchPath: string,
    target: string,
  ): Promise<"served" | "missing" | "invalid"> {
    let result: "served" | "missing" | "invalid";
    try {
      result = await servePrefetchFile(filetype, name, prefetchPath, target, (reason) =>
        siteLogger(this.log, site).warn(`Verification of ${prefetchPath} failed: ${reason}`),
      );
    } catch (err) {
      throw new HttpResponse(409, `Unable to write final file to requested location ${pyRepr(target)}: ${String(err)}`);
    }
    if (result === "served") siteLogger(this.log, site).info(`Renamed ${prefetchPath} to ${target}`);
    return result;
  }

  private recordServed(filetype: FileType, name: string): void {
    this.mostRecentlyServedFiles[filetype] = { name, time: Date.now() / 1000 };
  }

  private async getFileForSite(site: string, filetype: FileType, name: string, target: string): Promise<HttpResponse> {
    this.validateTargetPath(site, target);
    const walDir = pgWalDirectory(this.ctx.site(site));
    checkRestoreTarget(target, walDir, name);
    const prefetchPath = prefetchPathFor(walDir, name);

    if ((await this.servePrefetchFile(site, filetype, name, prefetchPath, target)) === "served") {
      this.createPrefetchOperations(site, filetype, name);
      this.recordServed(filetype, name);
      return new HttpResponse(201);
    }

    // After a recovery target PostgreSQL re-requests files it already has; serve them from disk
    // once, and go to the store the second time in case the local copy is what is bad.
    const diskPath = path.join(walDir, name);
    const onDisk = existsSync(diskPath);
    if (onDisk && !this.servedFromDisk.includes(name)) {
      if (await this.isValidFile(site, filetype, name, diskPath)) {
        const resolvedSource = realpathLoose(diskPath);
        const resolvedTarget = realpathLoose(target);
        if (resolvedSource !== resolvedTarget) await this.copyToTarget(diskPath, target);
        this.servedFromDisk.push(name);
        if (this.servedFromDisk.length > SERVED_FROM_DISK_SIZE) this.servedFromDisk.shift();
        this.recordServed(filetype, name);
        siteLogger(this.log, site).info(`Requested ${name}, found it in ${walDir}, returning directly`);
        return new HttpResponse(201);
      }
      siteLogger(this.log, site).warn(`Found ${diskPath} but it was invalid, fetching from the archive`);
    } else if (onDisk) {
      siteLogger(this.log, site).info(
        `Found ${diskPath} but it was recently served from disk already, fetching from the archive`,
      );
    }

    const key = this.fileKey(site, filetype, name);
    this.prefetch404 = this.prefetch404.filter((k) => k !== key);
    const fetch = { suppressError: false, serveTo: target };
    await this.createFetchOperation(key, site, filetype, name, { ...fetch, maxAge: 5 });
    // The prefetches start once this download is done: until then they would only compete with it.
    const own = this.pendingDownloads.get(key);
    if (own) void own.done.finally(() => this.createPrefetchOperations(site, filetype, name));
    else this.createPrefetchOperations(site, filetype, name);
    try {
      return await this.waitForDownload(site, filetype, name, target, key, prefetchPath);
    } finally {
      const pending = this.pendingDownloads.get(key);
      if (pending?.serveTo === target) pending.serveTo = undefined;
    }
  }

  /** Step 4's polling: the download of `key` served to `target` (or published as a prefetch file). */
  private async waitForDownload(
    site: string,
    filetype: FileType,
    name: string,
    target: string,
    key: string,
    prefetchPath: string,
  ): Promise<HttpResponse> {
    const fetch = { suppressError: false, serveTo: target };
    const start = nowSeconds();
    let lastSchedule = start;
    let retries = 2;
    while (nowSeconds() - start <= REQUEST_TIMEOUT_MS / 1000) {
      const served = await this.servePrefetchFile(site, filetype, name, prefetchPath, target);
      if (served === "served") {
        this.recordServed(filetype, name);
        return new HttpResponse(201);
      }
      if (served === "invalid") {
        if (retries === 0) throw new HttpResponse(500, `Downloaded ${name} failed verification`);
        retries--;
      }
      if (this.prefetch404.includes(key)) return new HttpResponse(404, `'${name}' not found from archive`);
      if (!this.pendingDownloads.has(key)) {
        if (retries === 0)
          throw new HttpResponse(500, `Fetching ${name} from the object storage failed (see the daemon log)`);
        retries--;
        await this.createFetchOperation(key, site, filetype, name, fetch);
      }
      if (nowSeconds() - lastSchedule >= 1) {
        lastSchedule = nowSeconds();
        // Replace a download that has been running for too long.
        await this.createFetchOperation(key, site, filetype, name, { ...fetch, maxAge: 10 });
      }
      const pending = this.pendingDownloads.get(key);
      await withTimeout(pending ? pending.done : Promise.resolve(), pending ? 1000 : 50, undefined);
      if (pending?.served && pending.serveTo === target) {
        this.recordServed(filetype, name);
        return new HttpResponse(201);
      }
    }
    throw new HttpResponse(500, "TIMEOUT");
  }

  /**
   * The bash client's prefetched restore (bin/pghoard_postgres_command, header
   * `x-pghoard-client-prefetch: 1`): it saw `<dirname(target)>/<name>.pghoard.prefetch` and asks for
   * the rename the Node.js client makes itself without a check, so that bash need not start `mv`.
   * Made only for a target that passes §6 and restore_target.ts (so the file is this site's prefetch
   * file); any answer but 201 makes the client hand the call to the Node.js client, which renames
   * it itself. A prefetch file gone meanwhile is fetched as by any GET (the Node.js client does so too).
   */
  async renameClientPrefetch(site: string, filetype: FileType, name: string, target: string): Promise<HttpResponse> {
    if (path.isAbsolute(target) && path.normalize(target) !== target) {
      throw new HttpResponse(400, `Invalid xlog file path ${target}, a normalized path expected`);
    }
    this.validateTargetPath(site, target);
    const walDir = pgWalDirectory(this.ctx.site(site));
    checkRestoreTarget(target, walDir, name);
    const prefetchPath = path.join(path.dirname(target), `${name}${PREFETCH_SUFFIX}`);
    try {
      // Synchronous too (see realpathLoose): PostgreSQL removed the old target before calling us,
      // so this rename only adds a directory entry.
      renameSync(prefetchPath, target);
    } catch (err) {
      if (isErrno(err, "ENOENT")) return this.getWalOrTimelineFile(site, filetype, name, target);
      throw new HttpResponse(409, `Unable to write final file to requested location ${pyRepr(target)}: ${String(err)}`);
    }
    siteLogger(this.log, site).info(`Renamed ${prefetchPath} to ${target} for the client`);
    this.createPrefetchOperations(site, filetype, name);
    this.recordServed(filetype, name);
    return new HttpResponse(201);
  }

  private async copyToTarget(source: string, target: string): Promise<void> {
    // Copy to a temp file next to the target, then rename: rename never follows a symlink at the target.
    const tmp = path.join(
      path.dirname(target),
      `.${path.basename(target)}.${randomBytes(6).toString("hex")}.pghoard.tmp`,
    );
    try {
      await copyFile(source, tmp, fsConstants.COPYFILE_EXCL);
      await chownLikeDirectory(tmp, path.dirname(target));
      await rename(tmp, target);
    } catch (err) {
      await unlink(tmp).catch(() => undefined);
      throw new HttpResponse(409, `Unable to write final file to requested location ${pyRepr(target)}: ${String(err)}`);
    }
  }

  /** Stops following prefetch files (daemon shutdown). */
  stop(): void {
    for (const watcher of this.prefetchWatchers.values()) watcher.close();
    this.prefetchWatchers.clear();
  }

  /**
   * The client renames `<name>.pghoard.prefetch` to its target without asking the daemon; the window
   * must still move on, so a prefetch file that disappears during recovery (a signal file present)
   * queues the segments after it as a served request would.
   */
  private followPrefetchWindow(site: string, walDir: string): void {
    if (this.prefetchWatchers.has(walDir)) return;
    const dataDir = this.ctx.site(site).pg_data_directory;
    try {
      const watcher = watch(walDir, { persistent: false }, (event, filename) => {
        const file = filename?.toString();
        if (event !== "rename" || !file?.endsWith(PREFETCH_SUFFIX)) return;
        const name = file.slice(0, -PREFETCH_SUFFIX.length);
        if (!/^[0-9A-F]{24}$/.test(name) || existsSync(path.join(walDir, file))) return;
        const recovering =
          dataDir &&
          ["recovery.signal", "standby.signal", "recovery.conf"].some((f) => existsSync(path.join(dataDir, f)));
        if (recovering) this.createPrefetchOperations(site, "xlog", name);
      });
      watcher.on("error", () => {
        watcher.close();
        this.prefetchWatchers.delete(walDir);
      });
      this.prefetchWatchers.set(walDir, watcher);
    } catch (err) {
      siteLogger(this.log, site).debug(`Cannot watch ${walDir} for taken prefetch files: ${String(err)}`);
    }
  }

  /** http-api.md §7: queue downloads of the next `restore_prefetch` segments (true next names). */
  private createPrefetchOperations(site: string, filetype: FileType, name: string): void {
    if (filetype !== "xlog") return;
    const count = this.ctx.config.restore_prefetch;
    if (!(count > 0)) return;
    const walDir = pgWalDirectory(this.ctx.site(site));
    this.followPrefetchWindow(site, walDir);
    void (async () => {
      const candidates = await prefetchCandidates(walDir, name, count, (candidate) =>
        this.prefetch404.includes(this.fileKey(site, filetype, candidate)),
      );
      for (const candidate of candidates) {
        const key = this.fileKey(site, filetype, candidate);
        await this.createFetchOperation(key, site, filetype, candidate, { maxAge: -1, suppressError: true });
      }
    })().catch((err: unknown) =>
      siteLogger(this.log, site).error({ err }, `Problem creating prefetch operations after ${name}`),
    );
  }

  private async createFetchOperation(
    key: string,
    site: string,
    filetype: FileType,
    name: string,
    { maxAge, suppressError, serveTo }: { maxAge?: number; suppressError: boolean; serveTo?: string },
  ): Promise<void> {
    const existing = this.pendingDownloads.get(key);
    if (existing && (maxAge === undefined || maxAge < 0 || nowSeconds() - existing.startedAt <= maxAge)) return;
    if (this.ctx.transferQueue.isClosed) {
      // The daemon is stopping: no new download, no temp file left in the WAL directory, no
      // error line; a request is told so (its client retries or reports it).
      if (suppressError) return;
      throw new HttpResponse(503, `pghoard is shutting down: not fetching ${name}`);
    }
    const walDir = pgWalDirectory(this.ctx.site(site));
    const prefetchPath = prefetchPathFor(walDir, name);
    if (existsSync(prefetchPath)) return;
    const tmpPath = downloadTempPathFor(walDir, name);
    try {
      const handle = await open(tmpPath, "wx", 0o600);
      await handle.close();
      await chownLikeDirectory(tmpPath, walDir);
    } catch (err) {
      siteLogger(this.log, site).error(`Unable to create temporary file to fetch ${name}: ${String(err)}`);
      if (suppressError) return;
      throw new HttpResponse(400, `Unable to create temporary file for ${pyRepr(key)}: ${String(err)}`);
    }
    const id = this.nextDownloadId++;
    siteLogger(this.log, site).debug(`Fetching ${site} ${filetype} ${name} to ${tmpPath}`);
    const done = this.ctx
      .transfer({ type: "DOWNLOAD", site, filetype, name, targetPath: tmpPath, durable: serveTo === undefined })
      .then((result) => this.processDownloadResult(site, key, id, filetype, name, tmpPath, result));
    this.pendingDownloads.set(key, {
      id,
      startedAt: nowSeconds(),
      prefetchPath,
      tmpPath,
      done,
      serveTo,
      served: false,
      durable: serveTo === undefined,
    });
  }

  /** Upstream's DownloadResultsProcessor: verify, then publish as `<name>.pghoard.prefetch`. */
  private async processDownloadResult(
    site: string,
    key: string,
    id: number,
    filetype: FileType,
    name: string,
    tmpPath: string,
    result: TransferResult,
  ): Promise<void> {
    const op = this.pendingDownloads.get(key);
    const current = op?.id === id;
    try {
      if (!current) {
        siteLogger(this.log, site).warn(`Orphaned download operation ${key} completed`);
        return;
      }
      if (!result.success) {
        if (result.notFound) {
          this.prefetch404.push(key);
          if (this.prefetch404.length > NEGATIVE_CACHE_SIZE) this.prefetch404.shift();
        } else {
          siteLogger(this.log, site).warn(`Fetching ${key} failed: ${String(result.error)}`);
        }
        return;
      }
      const onInvalid = (reason: string): void =>
        siteLogger(this.log, site).warn(`Verification of ${tmpPath} failed: ${reason}`);
      if (op.serveTo !== undefined) {
        const target = op.serveTo;
        const reason = await invalidWalFileReason(filetype, name, tmpPath);
        if (reason !== null) return onInvalid(reason);
        await rename(tmpPath, target);
        op.served = true;
        siteLogger(this.log, site).info(`Renamed ${tmpPath} to ${target}`);
        return;
      }
      if (!op.durable) await fsyncFile(tmpPath); // its request stopped waiting: a prefetch file must be durable
      const published = await publishPrefetch(filetype, name, tmpPath, op.prefetchPath, onInvalid);
      if (published === "exists") siteLogger(this.log, site).warn(`Target path for ${key} already exists, skipping`);
      if (published !== "published") return;
      const metadata = result.metadata ?? {};
      // One INFO line per segment: the one serving it to PostgreSQL (servePrefetchFile).
      siteLogger(this.log, site).debug(
        `Renamed ${tmpPath} to ${op.prefetchPath}. Original upload from ${metadata.host}, hash ${metadata["hash-algorithm"]}:${metadata.hash}`,
      );
    } catch (err) {
      siteLogger(this.log, site).error({ err }, `Problem processing download of ${key}`);
    } finally {
      await unlink(tmpPath).catch(() => undefined);
      if (current) this.pendingDownloads.delete(key);
    }
  }
}
