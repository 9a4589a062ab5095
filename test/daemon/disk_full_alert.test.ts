/**
 * `disk_full_error` has two reporters (pg_receivewal's messages and the compressors) and one file.
 * A daemon killed while the disk was full leaves the file behind; the next daemon must remove it
 * as soon as a segment goes through, whichever part sees that first. (Before, each part removed
 * only an alert it had raised itself, so a restart that saw no full disk kept the stale alert for
 * ever: CI's full-disk test failed on exactly that.)
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, it } from "node:test";
import { ConditionAlert } from "../../src/daemon/alerts.js";
import { findFreePort, startCluster, type PgCluster } from "../helpers/pgcluster.js";
import { DaemonProcess, makeDaemonEnv, postgresCommandBin, type DaemonEnv } from "./helpers.js";
import { makeStreamingEnv, startDaemon, switchWal, waitFor, waitForStored } from "../wal/streaming.js";

describe("ConditionAlert", () => {
  it("keeps the file while any reporter has raised it, and serializes creates and removes", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "pghoard-alert-"));
    const file = path.join(dir, "disk_full_error");
    try {
      const alert = new ConditionAlert(() => dir, "disk_full_error");
      assert.equal(await alert.clear("a"), false, "nothing raised: nothing removed");
      assert.equal(await alert.raise("a"), true);
      assert.equal(await alert.raise("a"), false, "a second raise by the same reporter is not new");
      assert.equal(await alert.raise("b"), true);
      assert.ok(existsSync(file));
      assert.equal(await alert.clear("a"), false, "b still reports it");
      assert.ok(existsSync(file));
      assert.equal(await alert.clear("b"), true);
      assert.ok(!existsSync(file));
      // Issued back to back without waiting: the file ends as the last call left it.
      const ops = [alert.raise("a"), alert.clear("a"), alert.raise("b"), alert.clear("b")];
      await Promise.all(ops);
      assert.ok(!existsSync(file));
      void alert.clear("b");
      await alert.raise("b");
      assert.ok(existsSync(file));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("removes a file an earlier run left at the first clear, whichever reporter makes it", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "pghoard-alert-"));
    const file = path.join(dir, "disk_full_error");
    try {
      await writeFile(file, "alert");
      const alert = new ConditionAlert(() => dir, "disk_full_error");
      assert.equal(await alert.clear("never-raised"), true);
      assert.ok(!existsSync(file));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("a disk_full_error alert left by an earlier daemon", { concurrency: 2, timeout: 180_000 }, () => {
  for (const mode of ["archive_command", "pg_receivexlog"] as const) {
    it(`${mode}: removed once the next daemon stores a segment`, async (t) => {
      let cluster: PgCluster | undefined;
      t.after(async () => {
        await cluster?.destroy();
      });
      const site = `stale_${mode}`;
      let env: DaemonEnv;
      if (mode === "archive_command") {
        const port = await findFreePort();
        cluster = await startCluster({
          archiveCommand: `${process.execPath} ${postgresCommandBin} --mode archive --port ${port} --site ${site} --xlog %f`,
        });
        env = await makeDaemonEnv({ [site]: { pgDataDirectory: cluster.dataDir } }, { http_port: port });
      } else {
        cluster = await startCluster();
        env = await makeStreamingEnv(cluster, site, mode);
      }
      const alertFile = path.join(env.alertDir, "disk_full_error");
      await writeFile(alertFile, "alert");
      const daemon = mode === "archive_command" ? await DaemonProcess.start(env) : await startDaemon(env, {});
      t.after(() => daemon.stop("SIGKILL"));
      await cluster.query("CREATE TABLE t AS SELECT generate_series(1, 1000) AS i");
      const name = await switchWal(cluster);
      await waitForStored(env, site, name, daemon, 120_000);
      await waitFor(
        "the stale disk_full_error alert removed",
        async () => !existsSync(alertFile),
        30_000,
        () => daemon.logs().slice(-2000),
      );
      await daemon.waitForLog(/removed alert file disk_full_error|alert disk_full_error is gone/);
    });
  }
});
