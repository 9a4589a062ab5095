/**
 * The archive_command side of the HTTP API (http-api.md §4.5): PUT /<site>/archive/<name>
 * verifies `<pg_wal>/<name>`, has it compressed and uploaded, and answers 201 only once it is stored.
 * Files the work-ahead (wal_work_ahead.ts) archived already are answered as soon as that upload
 * is stored, if the file is still the one that was read.
 */
import path from "node:path";
import type { Logger } from "pino";
import { siteLogger } from "../common/logger.js";
import { withTimeout } from "../common/async.js";
import { pgWalDirectory } from "../config/index.js";
import { isPartialName, verifyWalFile } from "../wal/index.js";
import type { DaemonContext } from "./context.js";
import { HttpResponse, nowSeconds, REQUEST_TIMEOUT_MS, type FileType } from "./http.js";
import { fileIdentity, WalWorkAhead } from "./wal_work_ahead.js";

export class WalArchiveHandler {
  /** Uploads by `<site>/<name>`, started ahead of archive_command or by an earlier PUT still running. */
  readonly workAhead: WalWorkAhead;

  constructor(
    private readonly ctx: DaemonContext,
    private readonly log: Logger,
  ) {
    this.workAhead = new WalWorkAhead(ctx, log);
  }

  /** http-api.md §4.5: compress and upload `<pg_wal>/<name>`; 201 only once it is stored. */
  async handle(site: string, filetype: FileType, name: string): Promise<HttpResponse> {
    const log = siteLogger(this.log, site);
    const started = nowSeconds();
    const walDir = pgWalDirectory(this.ctx.site(site));
    const filePath = path.join(walDir, name);
    const identity = await fileIdentity(filePath);
    if (!identity) {
      log.debug(`${filePath} is not a regular file, cannot archive`);
      throw new HttpResponse(404, "N/A");
    }
    // Worked ahead (or PostgreSQL re-runs archive_command after a TIMEOUT while the first upload
    // is still retrying): wait for that upload instead of queueing another copy.
    let entry = this.workAhead.take(site, name, identity);
    if (entry) {
      if (!entry.settled) log.info(`Archival of ${site} ${name} is already in progress, waiting for it`);
    } else {
      if (filetype === "xlog") {
        try {
          // A promotion's `<SEG>.partial` holds that segment's pages.
          await verifyWalFile(filePath, isPartialName(name) ? name.slice(0, -".partial".length) : name);
        } catch (err) {
          throw new HttpResponse(412, err instanceof Error ? err.message : String(err));
        }
      }
      entry = this.workAhead.begin(site, name, identity, filePath, filetype);
    }
    const result = await withTimeout(entry.result, REQUEST_TIMEOUT_MS, null);
    const took = (nowSeconds() - started).toFixed(3);
    if (!result) {
      log.error(`Archival of ${site} ${name} did not finish in time (${took}s), upload continues in the background`);
      throw new HttpResponse(500, "TIMEOUT");
    }
    if (!result.success) throw new HttpResponse(500, `Archival of ${name} failed (see the daemon log)`);
    // What was stored is what PostgreSQL asked for only if the file did not change while it was read.
    if ((await fileIdentity(filePath)) !== identity) {
      this.workAhead.forget(site, name, entry);
      log.warn(`${filePath} changed while it was being archived; not acknowledging the stored copy`);
      throw new HttpResponse(500, `${name} changed while it was being archived`);
    }
    log.info(`Archived ${site} ${filetype} ${name}, took ${took}s`);
    return new HttpResponse(201);
  }
}
