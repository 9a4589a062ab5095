/**
 * restore_command calls that reach a stopping daemon (its transfer queue closed): the prefetches a
 * served file schedules are skipped quietly, and a download asked for gets a 503, with no empty
 * `.pghoard.tmp` file left in the WAL directory and no ERROR line. Before, the prefetch logged
 * "Problem creating prefetch operations" with a stack trace and left its temp file behind.
 */
import assert from "node:assert/strict";
import { readdir, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, describe, it } from "node:test";
import { createLogger, getLogger, resetLogging } from "../../src/common/logger.js";
import { validateConfig } from "../../src/config/validate.js";
import { DaemonContext } from "../../src/daemon/context.js";
import { HttpResponse } from "../../src/daemon/http.js";
import { WalRestoreHandler } from "../../src/daemon/wal_restore.js";
import { FileFormatPool } from "../../src/fileformat/pool.js";
import { Metrics } from "../../src/monitoring/index.js";
import { makeTempDir } from "../helpers/pgcluster.js";
import { makeFakePgdata, syntheticSegment } from "./helpers.js";

const SITE = "stopping";
const SEG = "000000010000000000000003";

describe("restore_command against a stopping daemon", () => {
  const pool = new FileFormatPool(1);
  after(async () => {
    await pool.close();
    resetLogging();
  });

  it("schedules no prefetch and fetches nothing once the transfer queue is closed", async () => {
    const work = await makeTempDir("pghoard-wal-restore-stop");
    const pgdata = await makeFakePgdata();
    const walDir = path.join(pgdata, "pg_wal");
    const config = validateConfig({
      backup_location: path.join(work, "spool"),
      restore_prefetch: 3,
      backup_sites: {
        [SITE]: {
          pg_data_directory: pgdata,
          nodes: [{ host: "127.0.0.1" }],
          object_storage: { storage_type: "local", directory: path.join(work, "store") },
        },
      },
    });
    const lines: string[] = [];
    createLogger({ destination: { write: (text: string) => lines.push(text) }, level: "DEBUG" });
    const log = getLogger("test");
    const ctx = new DaemonContext(config, new Metrics({ prometheus: {} }, { siteHealthIntervalMs: 0 }), log, pool);
    const handler = new WalRestoreHandler(ctx, log);
    ctx.transferQueue.close();
    try {
      // A prefetched file is still served (a rename); the window after it is not fetched.
      await writeFile(path.join(walDir, `${SEG}.pghoard.prefetch`), syntheticSegment(SEG));
      const served = await handler.getWalOrTimelineFile(SITE, "xlog", SEG, path.join(walDir, "RECOVERYXLOG"));
      assert.equal(served.status, 201);
      // A file that must be downloaded: 503, said plainly (PostgreSQL removes %p before each call).
      await rm(path.join(walDir, "RECOVERYXLOG"));
      const next = "000000010000000000000004";
      const refused = await handler.getWalOrTimelineFile(SITE, "xlog", next, path.join(walDir, "RECOVERYXLOG")).then(
        (r) => r,
        (err: unknown) => err,
      );
      assert.ok(refused instanceof HttpResponse, String(refused));
      assert.equal(refused.status, 503);
      await new Promise((r) => setTimeout(r, 200)); // the prefetch scheduling runs in the background
      assert.deepEqual(await readdir(walDir), []);
      assert.deepEqual(
        lines.filter((l) => /ERROR|Problem creating prefetch/.test(l)),
        [],
      );
    } finally {
      handler.stop();
    }
  });
});
