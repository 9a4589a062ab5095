/**
 * The restore_command side of the HTTP API (http-api.md §4.7, §6, §7): GET /<site>/archive/<name>
 * with `x-pghoard-target-path` serves a WAL or history file at the target path, from a prefetched
 * download, from the WAL directory on disk, or from the store; after a WAL segment the next
 * `restore_prefetch` segments are downloaded ahead into `<name>.pghoard.prefetch` files.
 */
import { randomBytes } from "node:crypto";
import { constants as fsConstants, existsSync } from "node:fs";
import { chown, copyFile, lstat, open, readlink, realpath, rename, stat, unlink } from "node:fs/promises";
import path from "node:path";
import type { Logger } from "pino";
import { withTimeout } from "../common/async.js";
import { pgWalDirectory } from "../config/index.js";
import { nextWalName, verifyWalFile } from "../wal/index.js";
import type { DaemonContext } from "./context.js";
import { isErrno } from "../common/errors.js";
import { pyRepr } from "../common/pycompat.js";
import { HttpResponse, nowSeconds, relatedSites, REQUEST_TIMEOUT_MS, type FileType } from "./http.js";
import type { TransferResult } from "./types.js";
import { checkRestoreTarget } from "./restore_target.js";

const NEGATIVE_CACHE_SIZE = 32;
const SERVED_FROM_DISK_SIZE = 10;

interface PendingDownload {
  id: number;
  startedAt: number;
  prefetchPath: string;
  tmpPath: string;
  done: Promise<void>;
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
 */
async function realpathLoose(p: string, depth = 0): Promise<string> {
  try {
    return await realpath(p);
  } catch (err) {
    if (!isErrno(err, "ENOENT") && !isErrno(err, "ENOTDIR")) throw err;
    const parent = path.dirname(p);
    if (parent === p) return p;
    const resolvedParent = await realpathLoose(parent, depth + 1);
    const joined = path.join(resolvedParent, path.basename(p));
    if (depth < 40) {
      try {
        if ((await lstat(joined)).isSymbolicLink()) {
          return await realpathLoose(path.resolve(resolvedParent, await readlink(joined)), depth + 1);
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
    return new HttpResponse(404);
  }

  private fileKey(site: string, filetype: FileType, name: string): string {
    return `${site}_${filetype}_${name}`;
  }

  /** http-api.md §6: absolute, inside the data directory (after resolving symlinks), parent exists. */
  private async validateTargetPath(site: string, target: string): Promise<void> {
    if (!path.isAbsolute(target)) {
      throw new HttpResponse(400, `Invalid xlog file path ${target}, an absolute path expected`);
    }
    const dataDir = this.ctx.site(site).pg_data_directory;
    if (!dataDir) throw new HttpResponse(400, `Invalid xlog file path ${target}, it should be in data directory`);
    const resolvedData = await realpathLoose(path.resolve(dataDir));
    const resolvedTarget = await realpathLoose(path.resolve(target));
    const relative = path.relative(resolvedData, resolvedTarget);
    if (!relative || relative === ".." || relative.startsWith(`..${path.sep}`) || path.isAbsolute(relative)) {
      throw new HttpResponse(400, `Invalid xlog file path ${target}, it should be in data directory`);
    }
    try {
      const parent = await stat(path.dirname(resolvedTarget));
      if (!parent.isDirectory()) throw new Error("not a directory");
    } catch {
      throw new HttpResponse(409, `Invalid xlog file path ${target}, parent directory should exist`);
    }
  }

  private async isValidFile(filetype: FileType, name: string, filePath: string): Promise<boolean> {
    if (filetype !== "xlog") return true;
    try {
      await verifyWalFile(filePath, name);
      return true;
    } catch (err) {
      this.log.warn(`Verification of ${filePath} failed: ${err instanceof Error ? err.message : String(err)}`);
      return false;
    }
  }

  /**
   * Moves a `.pghoard.prefetch` file to the target. "served" when done, "missing" when it is not
   * there (anymore), "invalid" when it failed verification (it is then deleted).
   */
  private async servePrefetchFile(
    filetype: FileType,
    name: string,
    prefetchPath: string,
    target: string,
  ): Promise<"served" | "missing" | "invalid"> {
    if (!existsSync(prefetchPath)) return "missing";
    if (!(await this.isValidFile(filetype, name, prefetchPath))) {
      await unlink(prefetchPath).catch(() => undefined);
      return "invalid";
    }
    try {
      await rename(prefetchPath, target);
    } catch (err) {
      // The client's own fast path may have taken it in the meantime.
      if (isErrno(err, "ENOENT")) return "missing";
      throw new HttpResponse(409, `Unable to write final file to requested location ${pyRepr(target)}: ${String(err)}`);
    }
    this.log.info(`Renamed ${prefetchPath} to ${target}`);
    return "served";
  }

  private recordServed(filetype: FileType, name: string): void {
    this.mostRecentlyServedFiles[filetype] = { name, time: Date.now() / 1000 };
  }

  private async getFileForSite(site: string, filetype: FileType, name: string, target: string): Promise<HttpResponse> {
    await this.validateTargetPath(site, target);
    const walDir = pgWalDirectory(this.ctx.site(site));
    await checkRestoreTarget(target, walDir, name);
    const prefetchPath = path.join(walDir, `${name}.pghoard.prefetch`);

    if ((await this.servePrefetchFile(filetype, name, prefetchPath, target)) === "served") {
      this.createPrefetchOperations(site, filetype, name);
      this.recordServed(filetype, name);
      return new HttpResponse(201);
    }

    // After a recovery target PostgreSQL re-requests files it already has; serve them from disk
    // once, and go to the store the second time in case the local copy is what is bad.
    const diskPath = path.join(walDir, name);
    const onDisk = existsSync(diskPath);
    if (onDisk && !this.servedFromDisk.includes(name)) {
      if (await this.isValidFile(filetype, name, diskPath)) {
        const resolvedSource = await realpathLoose(diskPath);
        const resolvedTarget = await realpathLoose(target);
        if (resolvedSource !== resolvedTarget) await this.copyToTarget(diskPath, target);
        this.servedFromDisk.push(name);
        if (this.servedFromDisk.length > SERVED_FROM_DISK_SIZE) this.servedFromDisk.shift();
        this.recordServed(filetype, name);
        this.log.info(`Requested ${name}, found it in ${walDir}, returning directly`);
        return new HttpResponse(201);
      }
      this.log.warn(`Found ${diskPath} but it was invalid, fetching from the archive`);
    } else if (onDisk) {
      this.log.info(`Found ${diskPath} but it was recently served from disk already, fetching from the archive`);
    }

    const key = this.fileKey(site, filetype, name);
    this.prefetch404 = this.prefetch404.filter((k) => k !== key);
    await this.createFetchOperation(key, site, filetype, name, { maxAge: 5, suppressError: false });
    this.createPrefetchOperations(site, filetype, name);

    const start = nowSeconds();
    let lastSchedule = start;
    let retries = 2;
    while (nowSeconds() - start <= REQUEST_TIMEOUT_MS / 1000) {
      const served = await this.servePrefetchFile(filetype, name, prefetchPath, target);
      if (served === "served") {
        this.recordServed(filetype, name);
        return new HttpResponse(201);
      }
      if (served === "invalid") {
        if (retries === 0) throw new HttpResponse(500, `Downloaded ${name} failed verification`);
        retries--;
      }
      if (this.prefetch404.includes(key)) return new HttpResponse(404);
      if (!this.pendingDownloads.has(key)) {
        if (retries === 0) throw new HttpResponse(500);
        retries--;
        await this.createFetchOperation(key, site, filetype, name, { suppressError: false });
      }
      if (nowSeconds() - lastSchedule >= 1) {
        lastSchedule = nowSeconds();
        // Replace a download that has been running for too long.
        await this.createFetchOperation(key, site, filetype, name, { maxAge: 10, suppressError: false });
      }
      const pending = this.pendingDownloads.get(key);
      await withTimeout(pending ? pending.done : Promise.resolve(), pending ? 1000 : 50, undefined);
    }
    throw new HttpResponse(500, "TIMEOUT");
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

  /** http-api.md §7: queue downloads of the next `restore_prefetch` segments (true next names). */
  private createPrefetchOperations(site: string, filetype: FileType, name: string): void {
    if (filetype !== "xlog") return;
    const count = this.ctx.config.restore_prefetch;
    if (!(count > 0)) return;
    const walDir = pgWalDirectory(this.ctx.site(site));
    void (async () => {
      let current = name;
      for (let i = 0; i < count; i++) {
        current = nextWalName(current);
        const onDisk = path.join(walDir, current);
        if (existsSync(onDisk)) {
          try {
            await verifyWalFile(onDisk, current);
            continue;
          } catch {
            // present but invalid: fetch it
          }
        }
        const key = this.fileKey(site, filetype, current);
        if (this.prefetch404.includes(key)) continue;
        await this.createFetchOperation(key, site, filetype, current, { maxAge: -1, suppressError: true });
      }
    })().catch((err: unknown) => this.log.error({ err }, `Problem creating prefetch operations after ${name}`));
  }

  private async createFetchOperation(
    key: string,
    site: string,
    filetype: FileType,
    name: string,
    { maxAge, suppressError }: { maxAge?: number; suppressError: boolean },
  ): Promise<void> {
    const existing = this.pendingDownloads.get(key);
    if (existing && (maxAge === undefined || maxAge < 0 || nowSeconds() - existing.startedAt <= maxAge)) return;
    const walDir = pgWalDirectory(this.ctx.site(site));
    const prefetchPath = path.join(walDir, `${name}.pghoard.prefetch`);
    if (existsSync(prefetchPath)) return;
    const tmpPath = path.join(walDir, `${name}.${randomBytes(6).toString("hex")}.pghoard.tmp`);
    try {
      const handle = await open(tmpPath, "wx", 0o600);
      await handle.close();
      await chownLikeDirectory(tmpPath, walDir);
    } catch (err) {
      this.log.error(`Unable to create temporary file to fetch ${name}: ${String(err)}`);
      if (suppressError) return;
      throw new HttpResponse(400, `Unable to create temporary file for ${pyRepr(key)}: ${String(err)}`);
    }
    const id = this.nextDownloadId++;
    this.log.debug(`Fetching ${site} ${filetype} ${name} to ${tmpPath}`);
    const done = this.ctx
      .transfer({ type: "DOWNLOAD", site, filetype, name, targetPath: tmpPath })
      .then((result) => this.processDownloadResult(key, id, filetype, name, tmpPath, result));
    this.pendingDownloads.set(key, { id, startedAt: nowSeconds(), prefetchPath, tmpPath, done });
  }

  /** Upstream's DownloadResultsProcessor: verify, then publish as `<name>.pghoard.prefetch`. */
  private async processDownloadResult(
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
        this.log.warn(`Orphaned download operation ${key} completed`);
        return;
      }
      if (!result.success) {
        if (result.notFound) {
          this.prefetch404.push(key);
          if (this.prefetch404.length > NEGATIVE_CACHE_SIZE) this.prefetch404.shift();
        } else {
          this.log.warn(`Fetching ${key} failed: ${String(result.error)}`);
        }
        return;
      }
      if (existsSync(op.prefetchPath)) {
        this.log.warn(`Target path for ${key} already exists, skipping`);
        return;
      }
      if (!(await this.isValidFile(filetype, name, tmpPath))) return;
      await rename(tmpPath, op.prefetchPath);
      const metadata = result.metadata ?? {};
      this.log.info(
        `Renamed ${tmpPath} to ${op.prefetchPath}. Original upload from ${metadata.host}, hash ${metadata["hash-algorithm"]}:${metadata.hash}`,
      );
    } catch (err) {
      this.log.error({ err }, `Problem processing download of ${key}`);
    } finally {
      await unlink(tmpPath).catch(() => undefined);
      if (current) this.pendingDownloads.delete(key);
    }
  }
}
