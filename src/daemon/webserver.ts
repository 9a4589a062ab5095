/**
 * The daemon's HTTP API (http-api.md): archive_command PUTs, restore_command GETs with prefetch,
 * HEAD existence checks, basebackup listing/requests, /status and /metrics.
 *
 * Safety rules this port adds over upstream: every WAL/history name is validated on every path
 * (including explicit `xlog/` and `timeline/`), restore targets must resolve to a proper
 * descendant of the site's data directory, and the daemon only ever writes inside the site's
 * WAL directory (temp/prefetch files) and at validated target paths.
 */
import { randomBytes } from "node:crypto";
import { constants as fsConstants, existsSync } from "node:fs";
import { chown, copyFile, lstat, open, readFile, readlink, realpath, rename, stat, unlink } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import path from "node:path";
import type { Logger } from "pino";
import { pgWalDirectory } from "../config/index.js";
import { isHistoryName, isWalName, nextWalName, verifyWalFile } from "../wal/index.js";
import type { DaemonContext } from "./context.js";
import { isoUtc, stringifySorted } from "./json.js";
import { deferred, withTimeout } from "../common/async.js";
import type { ObjectFileType, TransferOp, TransferResult } from "./types.js";

const VERSION = "0.1.0";
const REQUEST_TIMEOUT_MS = 30_000;
const NEGATIVE_CACHE_SIZE = 32;
const SERVED_FROM_DISK_SIZE = 10;

type FileType = "xlog" | "timeline";

/** Thrown (or returned) to produce a response, as upstream's HttpResponse exception. */
export class HttpResponse extends Error {
  constructor(
    readonly status: number,
    readonly body: string | Record<string, unknown> = "",
    readonly headers: Record<string, string> = {},
  ) {
    super(`HttpResponse ${status}${typeof body === "string" && body ? `: ${body}` : ""}`);
  }
}

/** Python repr() of a str (single quotes unless the text has ' and no "). */
export function pyRepr(text: string): string {
  const quote = text.includes("'") && !text.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of text) {
    const code = ch.codePointAt(0)!;
    if (ch === "\\") out += "\\\\";
    else if (ch === quote) out += `\\${quote}`;
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (code < 0x20 || code === 0x7f) out += `\\x${code.toString(16).padStart(2, "0")}`;
    else out += ch;
  }
  return out + quote;
}

function pyListRepr(items: string[]): string {
  return `[${items.map(pyRepr).join(", ")}]`;
}

interface ParsedRequest {
  kind: "status" | "metrics" | "site_status" | "basebackup" | "file";
  site?: string;
  filetype?: FileType;
  name?: string;
}

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

function nowSeconds(): number {
  return Number(process.hrtime.bigint()) / 1e9;
}

function isErrno(err: unknown, code: string): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === code;
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

export class WebServer {
  private server: http.Server | undefined;
  private nextDownloadId = 1;
  /** Key `<site>_<type>_<name>` → the current download of that object into a `.pghoard.tmp` file. */
  private pendingDownloads = new Map<string, PendingDownload>();
  /** Keys whose download reported "not found" (prefetch negative cache). */
  private prefetch404: string[] = [];
  /** Names recently served from the WAL directory on disk; a second request goes to the store. */
  private servedFromDisk: string[] = [];
  readonly mostRecentlyServedFiles: Partial<Record<FileType, ServedFile>> = {};
  /** Archive uploads not finished yet, by `<site>/<type>/<name>`. */
  private inflightArchives = new Map<string, Promise<TransferResult>>();
  private readonly log: Logger;

  constructor(private readonly ctx: DaemonContext) {
    this.log = ctx.log.child({ name: "pghoard.webserver" });
  }

  /** Binds `http_address:http_port` (upstream defaults 127.0.0.1:16000). */
  async start(): Promise<AddressInfo> {
    const server = http.createServer((req, res) => {
      this.handle(req, res).catch((err: unknown) => {
        this.log.error({ err }, "Unhandled error in HTTP handler");
        if (!res.headersSent) this.send(res, new HttpResponse(500, "no response generated"), req.method === "HEAD");
        else res.destroy();
      });
    });
    server.keepAliveTimeout = 5000;
    this.server = server;
    const host = this.ctx.config.http_address || "0.0.0.0";
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.ctx.config.http_port, host, () => {
        server.off("error", reject);
        resolve();
      });
    });
    server.on("error", (err) => this.log.error({ err }, "HTTP server error"));
    return server.address() as AddressInfo;
  }

  /** Stops accepting connections; in-flight requests finish (graceful shutdown). */
  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeIdleConnections();
    });
  }

  /** Immediate stop: drops open connections too. */
  stopNow(): void {
    this.server?.closeAllConnections();
    void this.stop();
  }

  private send(res: http.ServerResponse, resp: HttpResponse, isHead: boolean): void {
    const headers: Record<string, string> = { ...resp.headers };
    const error = resp.status < 200 || resp.status >= 300;
    const lower = new Set(Object.keys(headers).map((k) => k.toLowerCase()));
    if (!lower.has("content-type")) headers["content-type"] = error ? "text/plain" : "application/octet-stream";
    let body: Buffer;
    if (typeof resp.body === "object") {
      body = Buffer.from(stringifySorted(resp.body), "utf8");
      headers["content-type"] = "application/json";
    } else {
      body = Buffer.from(resp.body, "utf8");
    }
    headers["content-length"] = String(body.length);
    headers.server = `pghoard/${VERSION}`;
    res.writeHead(resp.status, headers);
    res.end(isHead ? undefined : body);
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const method = req.method ?? "";
    const isHead = method === "HEAD";
    // Request bodies are ignored (clients send none); drain so the socket can be reused.
    req.resume();
    let resp: HttpResponse;
    try {
      this.checkAuthentication(req);
      if (method !== "GET" && method !== "PUT" && method !== "HEAD") {
        throw new HttpResponse(501, `Unsupported method (${pyRepr(method)})`);
      }
      const parsed = this.parseRequest(req.url ?? "/");
      resp = await this.dispatch(method, parsed, req);
    } catch (err) {
      if (err instanceof HttpResponse) {
        resp = err;
      } else {
        const e = err instanceof Error ? err : new Error(String(err));
        const msg = `server failure: ${e.name}: ${e.message}`;
        this.log.error({ err }, msg);
        resp = new HttpResponse(503, msg);
      }
    }
    const logLine = `${method} ${req.url} -> ${resp.status}${typeof resp.body === "string" && resp.body && resp.status >= 300 ? `: ${resp.body}` : ""}`;
    if (resp.status >= 300 && resp.status !== 404) this.log.warn(logLine);
    else this.log.debug(logLine);
    this.send(res, resp, isHead);
  }

  private checkAuthentication(req: http.IncomingMessage): void {
    const { webserver_username: user, webserver_password: password } = this.ctx.config;
    if (!user || !password) return;
    const expected = `Basic ${Buffer.from(`${user}:${password}`, "utf8").toString("base64")}`;
    if (req.headers.authorization !== expected) {
      throw new HttpResponse(401, "Authentication required", {
        "WWW-Authenticate": 'Basic realm="pghoard"',
        "Content-type": "text/html",
      });
    }
  }

  /** http-api.md §3, plus name validation for explicit xlog/timeline paths. */
  parseRequest(url: string): ParsedRequest {
    const parts = url.replace(/^\/+/, "").split("/");
    if (parts[0] === "status") {
      if (parts.length !== 1) throw new HttpResponse(400, "Invalid status request");
      return { kind: "status" };
    }
    if (parts[0] === "metrics") {
      if (parts.length !== 1) throw new HttpResponse(400, "Invalid request");
      return { kind: "metrics" };
    }
    if (parts.length < 2) throw new HttpResponse(400, `Invalid path ${pyListRepr(parts)}`);
    const site = parts[0];
    if (!Object.prototype.hasOwnProperty.call(this.ctx.config.backup_sites, site)) {
      throw new HttpResponse(404, `Site: ${pyRepr(site)} not found for path ${pyListRepr(parts)}`);
    }
    const obtype = parts[1];
    if (obtype === "basebackup") return { kind: "basebackup", site };
    if (obtype === "status") return { kind: "site_status", site };
    if (obtype === "archive" || obtype === "xlog" || obtype === "timeline") {
      if (parts.length !== 3) {
        throw new HttpResponse(400, `Invalid ${pyRepr(obtype)} request, only single file retrieval is supported for now`);
      }
      const name = parts[2];
      if (isWalName(name) && obtype !== "timeline") return { kind: "file", site, filetype: "xlog", name };
      if (isHistoryName(name) && obtype !== "xlog") return { kind: "file", site, filetype: "timeline", name };
      if (obtype === "archive" && name === "basebackup") return { kind: "basebackup", site };
      if (obtype === "archive") throw new HttpResponse(400, `Unrecognized file ${pyRepr(name)} for archiving`);
      throw new HttpResponse(400, `Invalid ${obtype} name ${pyRepr(name)}`);
    }
    throw new HttpResponse(400, `Invalid path ${pyListRepr(parts)}`);
  }

  private async dispatch(method: string, parsed: ParsedRequest, req: http.IncomingMessage): Promise<HttpResponse> {
    switch (parsed.kind) {
      case "status":
        if (method !== "GET") break;
        try {
          return new HttpResponse(200, await readFile(this.ctx.config.json_state_file_path, "utf8"));
        } catch (err) {
          // Before the first main-loop round there is no state file yet (upstream: 503 from the exception).
          if (!isErrno(err, "ENOENT")) throw err;
          throw new HttpResponse(503, `server failure: FileNotFoundError: ${(err as Error).message}`);
        }
      case "metrics": {
        if (method !== "GET") break;
        const response = await this.ctx.metrics.httpResponse();
        if (response.status !== 200) return new HttpResponse(501);
        // Prometheus 3 refuses scrapes without the text exposition content type.
        return new HttpResponse(200, response.body, { "content-type": response.contentType });
      }
      case "site_status":
        return new HttpResponse(501);
      case "basebackup":
        if (method === "GET") return this.listBasebackups(parsed.site!);
        if (method === "PUT") {
          this.log.info(`Requesting a new basebackup for site ${parsed.site} to be made`);
          this.ctx.requestedBasebackupSites.add(parsed.site!);
          return new HttpResponse(201);
        }
        break;
      case "file": {
        const { site, filetype, name } = parsed as Required<ParsedRequest> & { filetype: FileType };
        if (method === "PUT") return this.handleArchivalRequest(site, filetype, name);
        if (req.headers["x-pghoard-target-path"] !== undefined && method === "HEAD") {
          throw new HttpResponse(400, "x-pghoard-target-path header is only valid for downloads");
        }
        if (method === "HEAD") return this.handleHead(site, filetype, name);
        const target = req.headers["x-pghoard-target-path"];
        if (typeof target !== "string" || !target) {
          throw new HttpResponse(400, "x-pghoard-target-path header missing from download");
        }
        return this.getWalOrTimelineFile(site, filetype, name, target);
      }
    }
    throw new HttpResponse(400, "Invalid request");
  }

  /** http-api.md §5 */
  relatedSites(site: string): string[] {
    const sites = this.ctx.config.backup_sites;
    for (const [other, otherConfig] of Object.entries(sites)) {
      if ((otherConfig.moved_from ?? []).includes(site)) return [other, ...otherConfig.moved_from];
    }
    return [site, ...(sites[site].moved_from ?? [])];
  }

  /** A storage operation on behalf of a request: 30 s per attempt, retried twice on failure (not on 404). */
  private async transferOp(make: () => TransferOp & { callback: ReturnType<typeof deferred<TransferResult>> }): Promise<TransferResult> {
    for (let retries = 2; ; retries--) {
      const op = make();
      this.ctx.transferQueue.put(op);
      const result = await withTimeout(op.callback.promise, REQUEST_TIMEOUT_MS, null);
      if (result?.success) return result;
      if (result?.notFound) throw new HttpResponse(404, `FileNotFoundFromStorageError: ${String((result.error as Error)?.message ?? "")}`);
      if (retries === 0) throw new HttpResponse(500, result ? "" : "TIMEOUT");
      this.log.warn(`Transfer operation failed, retrying (${retries} retries left)`);
    }
  }

  private async listBasebackups(site: string): Promise<HttpResponse> {
    const entries: Array<Record<string, unknown>> = [];
    for (const related of this.relatedSites(site)) {
      const result = await this.transferOp(() => ({
        type: "LIST",
        site: related,
        filetype: "basebackup" as ObjectFileType,
        callback: deferred<TransferResult>(),
      }));
      for (const item of result.items ?? []) {
        const entry: Record<string, unknown> = {
          last_modified: isoUtc(item.lastModified),
          metadata: item.metadata,
          name: item.name,
          size: item.size,
        };
        if (item.md5 !== undefined) entry.md5 = item.md5;
        entries.push(entry);
      }
    }
    return new HttpResponse(200, { basebackups: entries });
  }

  private async handleHead(site: string, filetype: FileType, name: string): Promise<HttpResponse> {
    let found: TransferResult | undefined;
    for (const related of this.relatedSites(site)) {
      try {
        found = await this.transferOp(() => ({ type: "METADATA", site: related, filetype, name, callback: deferred<TransferResult>() }));
      } catch (err) {
        if (err instanceof HttpResponse && err.status === 404) continue;
        throw err;
      }
    }
    if (!found) throw new HttpResponse(404);
    const metadata = found.metadata ?? {};
    const headers: Record<string, string> = {};
    if (metadata.hash && metadata["hash-algorithm"]) {
      headers["metadata-hash"] = metadata.hash;
      headers["metadata-hash-algorithm"] = metadata["hash-algorithm"];
    }
    return new HttpResponse(200, "", headers);
  }

  /** http-api.md §4.5: compress and upload `<pg_wal>/<name>`; 201 only once it is stored. */
  private async handleArchivalRequest(site: string, filetype: FileType, name: string): Promise<HttpResponse> {
    const started = nowSeconds();
    const walDir = pgWalDirectory(this.ctx.site(site));
    const filePath = path.join(walDir, name);
    let st;
    try {
      st = await lstat(filePath);
    } catch {
      st = undefined;
    }
    if (!st || !st.isFile()) {
      this.log.debug(`${filePath} is not a regular file, cannot archive`);
      throw new HttpResponse(404, "N/A");
    }
    if (filetype === "xlog") {
      try {
        await verifyWalFile(filePath, name);
      } catch (err) {
        throw new HttpResponse(412, err instanceof Error ? err.message : String(err));
      }
    }
    // PostgreSQL re-runs archive_command after a TIMEOUT; while the first upload of that segment is
    // still retrying, wait for it instead of queueing another 16 MiB copy (a completed segment never changes).
    const inflightKey = `${site}/${filetype}/${name}`;
    let pending = this.inflightArchives.get(inflightKey);
    if (!pending) {
      const callback = deferred<TransferResult>();
      this.ctx.compressionQueue.put({
        site,
        filetype,
        fullPath: filePath,
        compressToMemory: true,
        deleteFileAfterCompression: false,
        callback,
      });
      pending = callback.promise;
      this.inflightArchives.set(inflightKey, pending);
      void pending.then(() => this.inflightArchives.delete(inflightKey));
    } else {
      this.log.info(`Archival of ${site} ${name} is already in progress, waiting for it`);
    }
    const result = await withTimeout(pending, REQUEST_TIMEOUT_MS, null);
    const took = (nowSeconds() - started).toFixed(3);
    if (!result) {
      this.log.error(`Archival of ${site} ${name} did not finish in time (${took}s), upload continues in the background`);
      throw new HttpResponse(500, "TIMEOUT");
    }
    if (!result.success) throw new HttpResponse(500);
    this.log.info(`Archived ${site} ${filetype} ${name}, took ${took}s`);
    return new HttpResponse(201);
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

  /** http-api.md §4.7: related sites in order; 404 moves on to the next one. */
  private async getWalOrTimelineFile(site: string, filetype: FileType, name: string, target: string): Promise<HttpResponse> {
    for (const related of this.relatedSites(site)) {
      const resp = await this.getFileForSite(related, filetype, name, target);
      if (resp.status !== 404) return resp;
    }
    return new HttpResponse(404);
  }

  private async getFileForSite(site: string, filetype: FileType, name: string, target: string): Promise<HttpResponse> {
    await this.validateTargetPath(site, target);
    const walDir = pgWalDirectory(this.ctx.site(site));
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
    const tmp = path.join(path.dirname(target), `.${path.basename(target)}.${randomBytes(6).toString("hex")}.pghoard.tmp`);
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
    const callback = deferred<TransferResult>();
    const done = callback.promise.then((result) => this.processDownloadResult(key, id, filetype, name, tmpPath, result));
    this.pendingDownloads.set(key, { id, startedAt: nowSeconds(), prefetchPath, tmpPath, done });
    this.log.debug(`Fetching ${site} ${filetype} ${name} to ${tmpPath}`);
    this.ctx.transferQueue.put({ type: "DOWNLOAD", site, filetype, name, targetPath: tmpPath, callback });
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
