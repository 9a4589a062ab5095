/**
 * `moved_from` in the daemon's retention and scheduling (operations.md §3, §4): site `new` took
 * over from the inactive site `old`, whose store holds two backups and their WAL. The daemon
 * applies `new`'s retention (basebackup_count 1) to both sites' backups, deleting `old`'s older
 * backup and the WAL before the kept one from `old`'s store, and counts `old`'s recent backup as
 * `new`'s latest, so no scheduled backup starts (without moved_from one would start at once).
 * No PostgreSQL is needed: `new`'s server is never contacted.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { createStorage, type StorageBackend } from "../../src/storage/index.js";
import { DaemonProcess, makeDaemonEnv, makeFakePgdata, sleep, type DaemonEnv } from "../daemon/helpers.js";
import { findFreePort } from "../helpers/pgcluster.js";

const pyTime = (d: Date): string => d.toISOString().replace("T", " ").replace("Z", "+00:00");

describe("moved_from in retention and scheduling", { timeout: 120_000 }, () => {
  let env: DaemonEnv;
  let daemon: DaemonProcess | undefined;
  let store: StorageBackend;
  const now = Date.now();
  const b1 = { name: "old-b1", start: new Date(now - 3 * 86400_000), segment: "000000010000000000000003" };
  const b2 = { name: "old-b2", start: new Date(now - 3600_000), segment: "000000010000000000000006" };

  before(async () => {
    const deadPort = await findFreePort();
    env = await makeDaemonEnv(
      {
        old: { pgDataDirectory: await makeFakePgdata(), extra: { active: false } },
        new: {
          pgDataDirectory: await makeFakePgdata(),
          extra: {
            moved_from: ["old"],
            basebackup_count: 1,
            basebackup_count_min: 1,
            basebackup_interval_hours: 24,
            nodes: [{ host: "127.0.0.1", port: deadPort, user: "postgres" }],
          },
        },
      },
      { log_level: "INFO" },
    );
    store = await createStorage({ storage_type: "local", directory: env.storageDir });
    for (const b of [b1, b2]) {
      await store.storeFileFromMemory(`old/basebackup/${b.name}`, Buffer.from("backup"), {
        "start-time": pyTime(b.start),
        "start-wal-segment": b.segment,
        "pg-version": "150004",
        "compression-algorithm": "snappy",
        "original-file-size": "6",
        "basebackup-mode": "basic",
      });
    }
    for (let i = 1; i <= 7; i++) {
      await store.storeFileFromMemory(`old/xlog/00000001000000000000000${i}`, Buffer.from("wal"), {});
    }
    daemon = await DaemonProcess.start(env);
  });

  after(async () => {
    await daemon?.stop();
  });

  it("applies the site's retention to the moved_from site and counts its backups for scheduling", async () => {
    const deadline = Date.now() + 60_000;
    while (existsSync(path.join(env.storageDir, "old", "basebackup", b1.name))) {
      if (Date.now() > deadline) assert.fail(`old-b1 not deleted: ${daemon!.logs().slice(-3000)}`);
      await sleep(200);
    }
    // One more main-loop iteration (5 s) after the retention: still no backup decision.
    await sleep(6000);
    const backups = (await store.list("old/basebackup")).map((o) => path.posix.basename(o.name));
    assert.deepEqual(backups, [b2.name]);
    const wal = (await store.list("old/xlog")).map((o) => path.posix.basename(o.name)).sort();
    assert.deepEqual(wal, ["000000010000000000000006", "000000010000000000000007"], "WAL before old-b2 deleted");
    const logs = daemon!.logs();
    assert.match(logs, /Deleted basebackup old-b1/);
    assert.doesNotMatch(logs, /Creating a new basebackup for new/);
    assert.doesNotMatch(logs, /Creating a new basebackup for old/);
  });
});
