/**
 * The archive_command side of the HTTP API (http-api.md §4.5): PUT /<site>/archive/<name>
 * verifies `<pg_wal>/<name>`, has it compressed and uploaded, and answers 201 only once it is stored.
 */
import { lstat } from "node:fs/promises";
import path from "node:path";
import type { Logger } from "pino";
import { withTimeout } from "../common/async.js";
import { pgWalDirectory } from "../config/index.js";
import { isPartialName, verifyWalFile } from "../wal/index.js";
import type { DaemonContext } from "./context.js";
import { HttpResponse, nowSeconds, REQUEST_TIMEOUT_MS, type FileType } from "./http.js";
import type { TransferResult } from "./types.js";

export class WalArchiveHandler {
  /** Archive uploads not finished yet, by `<site>/<type>/<name>`. */
  private inflightArchives = new Map<string, Promise<TransferResult>>();

  constructor(
    private readonly ctx: DaemonContext,
    private readonly log: Logger,
  ) {}

  /** http-api.md §4.5: compress and upload `<pg_wal>/<name>`; 201 only once it is stored. */
  async handle(site: string, filetype: FileType, name: string): Promise<HttpResponse> {
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
        // A promotion's `<SEG>.partial` holds that segment's pages.
        await verifyWalFile(filePath, isPartialName(name) ? name.slice(0, -".partial".length) : name);
      } catch (err) {
        throw new HttpResponse(412, err instanceof Error ? err.message : String(err));
      }
    }
    // PostgreSQL re-runs archive_command after a TIMEOUT; while the first upload of that segment is
    // still retrying, wait for it instead of queueing another 16 MiB copy (a completed segment never changes).
    const inflightKey = `${site}/${filetype}/${name}`;
    let pending = this.inflightArchives.get(inflightKey);
    if (!pending) {
      pending = this.ctx.archive({
        site,
        filetype,
        fullPath: filePath,
        compressToMemory: true,
        deleteFileAfterCompression: false,
      });
      this.inflightArchives.set(inflightKey, pending);
      void pending.then(() => this.inflightArchives.delete(inflightKey));
    } else {
      this.log.info(`Archival of ${site} ${name} is already in progress, waiting for it`);
    }
    const result = await withTimeout(pending, REQUEST_TIMEOUT_MS, null);
    const took = (nowSeconds() - started).toFixed(3);
    if (!result) {
      this.log.error(
        `Archival of ${site} ${name} did not finish in time (${took}s), upload continues in the background`,
      );
      throw new HttpResponse(500, "TIMEOUT");
    }
    if (!result.success) throw new HttpResponse(500, `Archival of ${name} failed (see the daemon log)`);
    this.log.info(`Archived ${site} ${filetype} ${name}, took ${took}s`);
    return new HttpResponse(201);
  }
}
