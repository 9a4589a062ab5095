/**
 * The daemon's HTTP API (http-api.md): routing and authentication, HEAD existence checks,
 * basebackup listing/requests, /status and /metrics. archive_command PUTs are answered by
 * wal_archive.ts, restore_command GETs (with prefetch) by wal_restore.ts.
 *
 * Safety rules this port adds over upstream: every WAL/history name is validated on every path
 * (including explicit `xlog/` and `timeline/`), restore targets must resolve to a proper
 * descendant of the site's data directory, and the daemon only ever writes inside the site's
 * WAL directory (temp/prefetch files) and at validated target paths.
 */
import { randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import type { Logger } from "pino";
import { siteLogger } from "../common/logger.js";
import { isHistoryName, isPartialName, isWalName } from "../wal/index.js";
import type { DaemonContext, TransferRequest } from "./context.js";
import { isErrno } from "../common/errors.js";
import { relatedSites } from "../catalog/index.js";
import { HttpResponse, REQUEST_TIMEOUT_MS, type FileType } from "./http.js";
import { pyJsonUtc, pyRepr, pyReprList } from "../common/pycompat.js";
import { packageVersion } from "../common/version.js";
import { stringifySorted } from "./json.js";
import { withTimeout } from "../common/async.js";
import type { TransferResult } from "./types.js";
import { WalArchiveHandler } from "./wal_archive.js";
import { CLIENT_PREFETCH_HEADER, WalRestoreHandler } from "./wal_restore.js";

interface ParsedRequest {
  kind: "status" | "metrics" | "site_status" | "basebackup" | "file";
  site?: string;
  filetype?: FileType;
  name?: string;
}

export class WebServer {
  private server: http.Server | undefined;
  private readonly log: Logger;
  private readonly archiver: WalArchiveHandler;
  private readonly restorer: WalRestoreHandler;

  constructor(private readonly ctx: DaemonContext) {
    this.log = ctx.log.child({ name: "pghoard.webserver" });
    this.archiver = new WalArchiveHandler(ctx, this.log);
    this.restorer = new WalRestoreHandler(ctx, this.log);
  }

  /** Last WAL and history file served to restore_command (served_files of the state file). */
  get mostRecentlyServedFiles(): WalRestoreHandler["mostRecentlyServedFiles"] {
    return this.restorer.mostRecentlyServedFiles;
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
    this.archiver.workAhead.start();
    return server.address() as AddressInfo;
  }

  /** Stops accepting connections; in-flight requests finish (graceful shutdown). */
  async stop(): Promise<void> {
    this.archiver.workAhead.stop();
    this.restorer.stop();
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
    headers.server = `pghoard/${packageVersion()}`;
    res.writeHead(resp.status, headers);
    res.end(isHead ? undefined : body);
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const method = req.method ?? "";
    const isHead = method === "HEAD";
    // Request bodies are ignored (clients send none); drain so the socket can be reused.
    req.resume();
    let resp: HttpResponse;
    let log = this.log;
    try {
      this.checkAuthentication(req);
      if (method !== "GET" && method !== "PUT" && method !== "HEAD") {
        throw new HttpResponse(501, `Unsupported method (${pyRepr(method)})`);
      }
      const parsed = this.parseRequest(req.url ?? "/");
      if (parsed.site !== undefined) log = siteLogger(this.log, parsed.site);
      resp = await this.dispatch(method, parsed, req);
    } catch (err) {
      if (err instanceof HttpResponse) {
        resp = err;
      } else {
        const e = err instanceof Error ? err : new Error(String(err));
        const msg = `server failure: ${e.name}: ${e.message}`;
        log.error({ err }, msg);
        resp = new HttpResponse(503, msg);
      }
    }
    const logLine = `${method} ${req.url} -> ${resp.status}${typeof resp.body === "string" && resp.body && resp.status >= 300 ? `: ${resp.body}` : ""}`;
    if (resp.status >= 300 && resp.status !== 404) log.warn(logLine);
    else log.debug(logLine);
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
    if (parts.length < 2) throw new HttpResponse(400, `Invalid path ${pyReprList(parts)}`);
    const site = parts[0];
    if (!Object.prototype.hasOwnProperty.call(this.ctx.config.backup_sites, site)) {
      throw new HttpResponse(404, `Site: ${pyRepr(site)} not found for path ${pyReprList(parts)}`);
    }
    const obtype = parts[1];
    if (obtype === "basebackup") return { kind: "basebackup", site };
    if (obtype === "status") return { kind: "site_status", site };
    if (obtype === "archive" || obtype === "xlog" || obtype === "timeline") {
      if (parts.length !== 3) {
        throw new HttpResponse(
          400,
          `Invalid ${pyRepr(obtype)} request, only single file retrieval is supported for now`,
        );
      }
      const name = parts[2];
      if (isWalName(name) && obtype !== "timeline") return { kind: "file", site, filetype: "xlog", name };
      if (isHistoryName(name) && obtype !== "xlog") return { kind: "file", site, filetype: "timeline", name };
      if (obtype === "archive" && name === "basebackup") return { kind: "basebackup", site };
      // PostgreSQL archives the old timeline's last segment as `<SEG>.partial` when it promotes;
      // refusing it (as upstream does) stalls archive_command for good. Archived only, never served.
      if (obtype === "archive" && isPartialName(name)) return { kind: "file", site, filetype: "xlog", name };
      if (obtype === "archive") throw new HttpResponse(400, `Unrecognized file ${pyRepr(name)} for archiving`);
      throw new HttpResponse(400, `Invalid ${obtype} name ${pyRepr(name)}`);
    }
    throw new HttpResponse(400, `Invalid path ${pyReprList(parts)}`);
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
          return this.requestBasebackup(parsed.site!);
        }
        break;
      case "file": {
        const { site, filetype, name } = parsed as Required<ParsedRequest> & { filetype: FileType };
        if (method === "PUT") return this.archiver.handle(site, filetype, name);
        if (isPartialName(name)) throw new HttpResponse(400, `${pyRepr(name)} is only accepted for archiving`);
        if (req.headers["x-pghoard-target-path"] !== undefined && method === "HEAD") {
          throw new HttpResponse(400, "x-pghoard-target-path header is only valid for downloads");
        }
        if (method === "HEAD") return this.handleHead(site, filetype, name);
        const target = req.headers["x-pghoard-target-path"];
        if (typeof target !== "string" || !target) {
          throw new HttpResponse(400, "x-pghoard-target-path header missing from download");
        }
        // The bash client's prefetched restore: it saw `<name>.pghoard.prefetch` next to the target
        // and asks us for the rename it would otherwise fork `mv` for (wal_restore.ts).
        if (req.headers[CLIENT_PREFETCH_HEADER] === "1") {
          return this.restorer.renameClientPrefetch(site, filetype, name, target);
        }
        return this.restorer.getWalOrTimelineFile(site, filetype, name, target);
      }
    }
    throw new HttpResponse(400, "Invalid request");
  }

  /** A storage operation on behalf of a request: 30 s per attempt, retried twice on failure (not on 404). */
  private async transferOp(request: TransferRequest): Promise<TransferResult> {
    for (let retries = 2; ; retries--) {
      const result = await withTimeout(this.ctx.transfer(request), REQUEST_TIMEOUT_MS, null);
      if (result?.success) return result;
      if (result?.notFound)
        throw new HttpResponse(404, `FileNotFoundFromStorageError: ${String((result.error as Error)?.message ?? "")}`);
      if (retries === 0) {
        throw new HttpResponse(500, result ? "Object storage operation failed (see the daemon log)" : "TIMEOUT");
      }
      siteLogger(this.log, request.site).warn(`Transfer operation failed, retrying (${retries} retries left)`);
    }
  }

  /**
   * Upstream answers an empty 201; the body naming the request (its clients ignore it) lets
   * `pghoard_restore request-basebackup --wait` follow it in /status (`pg_basebackups.<site>.requests`).
   */
  private requestBasebackup(site: string): HttpResponse {
    const requestId = `${new Date().toISOString().replace(/[-:.]/g, "")}-${randomBytes(4).toString("hex")}`;
    siteLogger(this.log, site).info(`Requesting a new basebackup for site ${site} to be made (request ${requestId})`);
    this.ctx.requestedBasebackupSites.add(site);
    const ids = this.ctx.basebackupRequestIds.get(site) ?? [];
    ids.push(requestId);
    this.ctx.basebackupRequestIds.set(site, ids);
    this.ctx.wakeMainLoop();
    return new HttpResponse(201, { request_id: requestId, site, requested_at: new Date().toISOString() });
  }

  private async listBasebackups(site: string): Promise<HttpResponse> {
    const entries: Array<Record<string, unknown>> = [];
    for (const related of relatedSites(this.ctx.config, site)) {
      const result = await this.transferOp({ type: "LIST", site: related, filetype: "basebackup" });
      for (const item of result.items ?? []) {
        const entry: Record<string, unknown> = {
          last_modified: pyJsonUtc(item.lastModified),
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
    for (const related of relatedSites(this.ctx.config, site)) {
      try {
        found = await this.transferOp({ type: "METADATA", site: related, filetype, name });
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
}
