/**
 * pghoard_archive_cleanup against real WAL from PostgreSQL 15 in a local store.
 *
 * Timeline 2 is made for real: a standby restored with pg_basebackup from the timeline-1 primary is
 * promoted, so storage holds PostgreSQL's own 00000002.history and the `.partial` last segment of
 * timeline 1. Both clusters archive into one directory with `cp`; the files are then stored the
 * way the daemon's compressor stores them (snappy + upstream metadata). Basebackups are real
 * pg_basebackup tars whose metadata carries the start segment from their backup_label.
 */
import assert from "node:assert/strict";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { planArchiveCleanup, type HistoryMap } from "../../src/commands/archive_cleanup.js";
import { createStorage, type StorageBackend } from "../../src/storage/index.js";
import { isWalName, parseTimelineHistory, parseWalName } from "../../src/wal/index.js";
import { makeTempDir, startCluster, type PgCluster } from "../helpers/pgcluster.js";
import {
  makeSegments,
  runBin,
  storeArchiveDir,
  takeBasebackup,
  waitForArchived,
  writeConfig,
} from "./archive_fixtures.js";

const SITE = "default";

describe("planArchiveCleanup (timeline rules)", () => {
  const wal = (name: string) => ({ key: `${SITE}/xlog/${name}`, name, size: 10 });
  it("keeps a kept backup's own timeline and its descendants, drops older timelines and earlier positions", () => {
    const histories: HistoryMap = new Map([
      [2, parseTimelineHistory("1\t0/8000000\tno recovery target specified\n")],
      // Timeline 3 forked off timeline 1 before the backup started: it cannot contain that backup.
      [3, parseTimelineHistory("1\t0/3000000\tbranch\n")],
    ]);
    const plan = planArchiveCleanup(
      [{ name: "b1", startWal: "000000010000000000000005" }],
      [
        wal("000000010000000000000004"),
        wal("000000010000000000000005"),
        wal("000000010000000000000009"),
        wal("000000020000000000000008"),
        wal("000000020000000000000002"),
        wal("000000030000000000000006"),
        wal("000000040000000000000006"), // no history file: maybe a descendant, kept
        wal("000000010000000000000007.partial"),
        wal("000000010000000000000003.partial"),
        wal("garbage"),
      ],
      histories,
    );
    assert.deepEqual(plan.orphans.map((o) => o.name).sort(), [
      "000000010000000000000003.partial",
      "000000010000000000000004",
      "000000020000000000000002",
      "000000030000000000000006",
    ]);
    assert.deepEqual(
      plan.ignored.map((o) => o.name),
      ["garbage"],
    );
    assert.equal(plan.firstRequired, "000000010000000000000005");
  });

  it("an unreadable history keeps the timeline; a newer-timeline backup frees older timelines", () => {
    const plan = planArchiveCleanup(
      [{ name: "b2", startWal: "00000002000000000000000A" }],
      [wal("00000001000000000000000B"), wal("00000002000000000000000A"), wal("000000030000000000000001")],
      new Map([[3, null]]),
    );
    assert.deepEqual(
      plan.orphans.map((o) => o.name),
      ["00000001000000000000000B", "000000030000000000000001"],
    );
  });
});

describe("pghoard_archive_cleanup with real WAL across a timeline switch", { timeout: 300_000 }, () => {
  let primary: PgCluster | undefined;
  let standby: PgCluster | undefined;
  let work: string;
  let storage: StorageBackend;
  let configPath: string;
  let b1Start: string;
  let b2Start: string;
  let stored: string[];

  const listXlog = async () => (await storage.list(`${SITE}/xlog`)).map((o) => path.posix.basename(o.name)).sort();
  const listTimeline = async () =>
    (await storage.list(`${SITE}/timeline`)).map((o) => path.posix.basename(o.name)).sort();

  before(async () => {
    work = await makeTempDir("pghoard-cleanup-test");
    const archiveDir = path.join(work, "archive");
    const { mkdir, chmod } = await import("node:fs/promises");
    await mkdir(archiveDir);
    await chmod(archiveDir, 0o777);
    const archiveCommand = `test ! -f ${archiveDir}/%f && cp %p ${archiveDir}/%f`;
    storage = await createStorage({ storage_type: "local", directory: path.join(work, "storage") });
    configPath = await writeConfig(path.join(work, "config"), {
      object_storage: { storage_type: "local", directory: path.join(work, "storage") },
      nodes: [{ host: "127.0.0.1" }],
    });

    primary = await startCluster({ archiveCommand });
    await makeSegments(primary, 4);
    const bb1 = path.join(work, "bb1");
    b1Start = await takeBasebackup(primary, storage, SITE, bb1, "2026-01-01_00-00_0");
    await makeSegments(primary, 3);
    // The standby: a streaming replica of the primary, archiving once promoted.
    const standbyData = path.join(work, "standby");
    await primary.exec("pg_basebackup", ["-D", standbyData, "-R", "-X", "stream", "-c", "fast", "--no-sync"]);
    standby = await startCluster({ dataDir: standbyData, archiveCommand });
    await makeSegments(primary, 1);
    await waitForArchived(primary, archiveDir);
    // Let the standby replay everything, then fail over.
    const [{ lsn }] = (await primary.query<{ lsn: string }>("SELECT pg_current_wal_lsn()::text AS lsn")) as [
      { lsn: string },
    ];
    for (let i = 0; i < 300; i++) {
      const [row] = await standby.query<{ ok: boolean }>("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn AS ok", [lsn]);
      if (row?.ok) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    await primary.stop("fast");
    await standby.exec("pg_ctl", ["-D", standbyData, "promote", "-w"]);
    await standby.waitForRecoveryEnd();
    await makeSegments(standby, 3);
    const bb2 = path.join(work, "bb2");
    b2Start = await takeBasebackup(standby, storage, SITE, bb2, "2026-01-02_00-00_0");
    await makeSegments(standby, 2);
    await waitForArchived(standby, archiveDir);
    stored = await storeArchiveDir(storage, SITE, archiveDir);
    assert.ok(stored.includes("00000002.history"), `history archived: ${stored.join(" ")}`);
    assert.equal(parseWalName(b1Start).timeline, 1);
    assert.equal(parseWalName(b2Start).timeline, 2);
  });

  after(async () => {
    await standby?.destroy();
    await primary?.destroy();
    await storage?.close();
    const { rm } = await import("node:fs/promises");
    if (work) await rm(work, { recursive: true, force: true });
  });

  it("dry run reports the orphans and their total size and deletes nothing", async () => {
    const beforeList = await listXlog();
    const res = await runBin("pghoard_archive_cleanup.js", ["--config", configPath, "--dry-run"]);
    assert.equal(res.code, 0, res.stderr);
    assert.deepEqual(await listXlog(), beforeList);
    const orphans = beforeList.filter((n) => n.startsWith("00000001") && n.slice(0, 24) < b1Start);
    assert.ok(orphans.length >= 4);
    for (const o of orphans) assert.match(res.stderr, new RegExp(`Orphan WAL segment '${o}' needs to be deleted`));
    const sizes = (await storage.list(`${SITE}/xlog`)).filter((o) => orphans.includes(path.posix.basename(o.name)));
    const total = sizes.reduce((sum, o) => sum + o.size, 0);
    assert.match(res.stderr, new RegExp(`Total orphan WAL segments size is ${total} bytes`));
    assert.match(res.stderr, new RegExp(`First required WAL segment is '${b1Start}'`));
  });

  it("with backups on timelines 1 and 2, deletes only timeline-1 WAL before the older backup", async () => {
    const beforeList = await listXlog();
    const res = await runBin("pghoard_archive_cleanup.js", ["--config", configPath]);
    assert.equal(res.code, 0, res.stderr);
    const afterList = await listXlog();
    const expectedGone = beforeList.filter((n) => n.startsWith("00000001") && n.slice(0, 24) < b1Start);
    assert.deepEqual(
      afterList,
      beforeList.filter((n) => !expectedGone.includes(n)),
    );
    // Upstream's string order would have deleted every timeline-1 segment here (all sort below
    // the timeline-2 backup's start), including the ones the timeline-1 backup needs.
    assert.ok(afterList.some((n) => n.startsWith("00000001") && n >= b1Start));
    assert.ok(
      afterList.some((n) => n.endsWith(".partial")),
      "the timeline-1 .partial is after the fork and kept",
    );
    assert.deepEqual(await listTimeline(), ["00000002.history"]);
  });

  it("once the timeline-1 backup is gone, timeline-1 WAL and timeline-2 WAL before the new backup go", async () => {
    const backups = await storage.list(`${SITE}/basebackup`);
    const b1 = backups.find((b) => b.metadata["start-wal-segment"] === b1Start);
    assert.ok(b1);
    await storage.deleteKey(b1.name);
    const res = await runBin("pghoard_archive_cleanup.js", ["--config", configPath]);
    assert.equal(res.code, 0, res.stderr);
    const remaining = await listXlog();
    assert.ok(remaining.length > 0);
    for (const n of remaining) {
      assert.ok(isWalName(n), `only whole segments remain: ${n}`);
      assert.ok(n.startsWith("00000002") && n >= b2Start, `${n} should have been deleted`);
    }
    const expected = stored.filter((n) => n.startsWith("00000002") && isWalName(n) && n >= b2Start);
    assert.deepEqual(remaining, expected);
    assert.deepEqual(await listTimeline(), ["00000002.history"], "history files are never deleted");
  });

  it("with no basebackups at all, deletes nothing and exits non-zero", async () => {
    for (const b of await storage.list(`${SITE}/basebackup`)) await storage.deleteKey(b.name);
    const beforeList = await listXlog();
    const res = await runBin("pghoard_archive_cleanup.js", ["--config", configPath]);
    assert.equal(res.code, 1);
    assert.match(res.stderr, /No basebackups found/);
    assert.deepEqual(await listXlog(), beforeList);
  });

  it("exit codes: no config path → 1 with upstream's message; unknown option → 2", async () => {
    const noConfig = await runBin("pghoard_archive_cleanup.js", [], { PGHOARD_CONFIG: "" });
    assert.equal(noConfig.code, 1);
    assert.match(noConfig.stdout, /config file path must be given with --config or via env PGHOARD_CONFIG/);
    const bad = await runBin("pghoard_archive_cleanup.js", ["--bogus"]);
    assert.equal(bad.code, 2);
    const version = await runBin("pghoard_archive_cleanup.js", ["--version"]);
    assert.equal(version.code, 0);
    assert.match(version.stdout, /^\d+\.\d+\.\d+/);
  });
});
