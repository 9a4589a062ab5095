/** The xlog_incoming watcher: which names count as finished, once-only reporting, no missed files. */
import assert from "node:assert/strict";
import { mkdtemp, rename, rm, truncate, unlink, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { WAL_SEG_SIZE } from "../../src/wal/index.js";
import { connectionFailureAlert, pgClientConfig } from "../../src/wal/replication.js";
import { SpoolWatcher } from "../../src/wal/spool_watcher.js";

async function segment(file: string): Promise<void> {
  await writeFile(file, "");
  await truncate(file, WAL_SEG_SIZE);
}

async function waitUntil(fn: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("SpoolWatcher", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "spoolwatch-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("reports renamed full segments and history files once, ignores .partial/.tmp/short files and what was there at start", async () => {
    await segment(path.join(dir, "000000010000000000000001"));
    const seen: Array<[string, string]> = [];
    const wrongSize: string[] = [];
    const watcher = new SpoolWatcher(dir, (p, kind) => seen.push([path.basename(p), kind]), {
      scanIntervalMs: 100,
      onWrongSize: (p) => wrongSize.push(path.basename(p)),
    });
    await watcher.start();
    try {
      await segment(path.join(dir, "000000010000000000000002.partial"));
      await writeFile(path.join(dir, "00000002.history.tmp"), "1\t0/2000000\tx\n");
      await writeFile(path.join(dir, "000000010000000000000009"), "short");
      await new Promise((r) => setTimeout(r, 300));
      assert.deepEqual(seen, []);
      assert.deepEqual(wrongSize, ["000000010000000000000009"], "a short file with a segment name is reported once");
      await rename(path.join(dir, "000000010000000000000002.partial"), path.join(dir, "000000010000000000000002"));
      await rename(path.join(dir, "00000002.history.tmp"), path.join(dir, "00000002.history"));
      await waitUntil(() => seen.length === 2);
      assert.deepEqual(seen.sort(), [
        ["000000010000000000000002", "xlog"],
        ["00000002.history", "timeline"],
      ]);
      await watcher.scan();
      assert.equal(seen.length, 2, "reported once");
      // Deleted after compression and written again later: a new file, reported again.
      await unlink(path.join(dir, "000000010000000000000002"));
      await watcher.scan();
      await segment(path.join(dir, "000000010000000000000002"));
      await waitUntil(() => seen.length === 3);
    } finally {
      watcher.stop();
    }
  });

  it("finds files without any fs.watch event (periodic scan) and shares the reported set with a later watcher", async () => {
    const known = new Set<string>();
    const seen: string[] = [];
    const first = new SpoolWatcher(dir, (p) => seen.push(path.basename(p)), { scanIntervalMs: 50, known });
    await first.start();
    first.stop();
    await segment(path.join(dir, "000000010000000000000003"));
    const second = new SpoolWatcher(dir, (p) => seen.push(path.basename(p)), {
      scanIntervalMs: 50,
      known,
      reportExisting: true,
    });
    await second.start();
    second.stop();
    assert.deepEqual(seen, ["000000010000000000000003"], "only the file that appeared between the watchers");
  });
});

describe("replication helpers", () => {
  it("classifies connection failures as upstream does", () => {
    assert.equal(connectionFailureAlert('password authentication failed for user "x"'), "authentication_error");
    assert.equal(connectionFailureAlert("FATAL: authentication failed"), "authentication_error");
    assert.equal(
      connectionFailureAlert('no pg_hba.conf entry for replication connection from host "1.2.3.4"'),
      "configuration_error",
    );
    assert.equal(connectionFailureAlert("connect ECONNREFUSED 127.0.0.1:1"), "configuration_error");
  });

  it("maps libpq keywords to a replication pg.Client config", () => {
    const config = pgClientConfig({
      host: "/run/pg",
      port: "5433",
      user: "u",
      password: "p",
      dbname: "replication",
      sslmode: "require",
    }) as Record<string, unknown>;
    assert.equal(config.host, "/run/pg");
    assert.equal(config.port, 5433);
    assert.equal(config.database, "replication");
    assert.equal(config.replication, "true");
    assert.deepEqual(config.ssl, { rejectUnauthorized: false });
    assert.equal(config.connectionTimeoutMillis, 30_000);
  });
});
