/**
 * Timelines in both streaming modes: the daemon streams from a standby of a PostgreSQL 15
 * primary; the standby is promoted (timeline 2) without touching the daemon. The history file and
 * the new timeline's segments must be archived, and a restore of a pg_basebackup taken on timeline 1
 * with `recovery_target_timeline = 'latest'` (restore_command = pghoard_postgres_command through a
 * daemon) must reach data written after the promotion.
 */
import assert from "node:assert/strict";
import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, describe, it } from "node:test";
import { chownToPostgres, findFreePort, makeTempDir, startCluster, type PgCluster } from "../helpers/pgcluster.js";
import {
  decodeStoredObject,
  DaemonProcess,
  listStoredNames,
  makeDaemonEnv,
  postgresCommandBin,
  sleep,
} from "../daemon/helpers.js";
import { nextWalName } from "../../src/wal/index.js";
import {
  assertContiguous,
  assertStoredMatchPgWal,
  fullSegments,
  makeStreamingEnv,
  startDaemon,
  storedWal,
  switchWal,
  waitFor,
  waitForStored,
} from "./streaming.js";

const WAL_SETTINGS = { wal_keep_size: "2GB", wal_recycle: "off", max_wal_size: "4GB" };

async function waitReplayed(primary: PgCluster, standby: PgCluster): Promise<void> {
  const [{ lsn }] = await primary.query<{ lsn: string }>("SELECT pg_current_wal_flush_lsn()::text AS lsn");
  await waitFor("standby replay", async () => {
    const [row] = await standby.query<{ ok: boolean }>("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn AS ok", [lsn]);
    return row?.ok === true;
  });
}

/** A primary with table `t` and a streaming standby of it (its own data directory below `work`). */
async function primaryAndStandby(
  work: string,
  clusters: PgCluster[],
): Promise<{ primary: PgCluster; standby: PgCluster; standbyData: string }> {
  const primary = await startCluster({ settings: WAL_SETTINGS });
  clusters.push(primary);
  await primary.query("CREATE TABLE t (id int, phase text)");
  await primary.query("INSERT INTO t SELECT i, 'tl1' FROM generate_series(1, 1000) i");
  const standbyData = path.join(work, "standby");
  await primary.exec("pg_basebackup", [
    "-h",
    "127.0.0.1",
    "-p",
    String(primary.port),
    "-U",
    "postgres",
    "-D",
    standbyData,
    "-R",
    "-X",
    "stream",
    "-c",
    "fast",
    "--no-sync",
  ]);
  const standby = await startCluster({ dataDir: standbyData, settings: WAL_SETTINGS });
  clusters.push(standby);
  return { primary, standby, standbyData };
}

async function promote(primary: PgCluster, standby: PgCluster, standbyData: string): Promise<void> {
  await waitReplayed(primary, standby);
  await primary.stop("fast");
  await standby.exec("pg_ctl", ["-D", standbyData, "promote", "-w"]);
  await standby.waitForRecoveryEnd();
  const [{ tli }] = await standby.query<{ tli: string }>(
    "SELECT substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8) AS tli",
  );
  assert.equal(tli, "00000002");
}

const STREAMING_LOG = { pg_receivexlog: /starting log streaming at/, walreceiver: /Starting replication from/ };

for (const mode of ["pg_receivexlog", "walreceiver"] as const) {
  describe(`promotion followed in ${mode} mode`, { timeout: 300_000 }, () => {
    const site = mode === "pg_receivexlog" ? "tlrx" : "tlwr";
    const clusters: PgCluster[] = [];
    const daemons: DaemonProcess[] = [];

    after(async () => {
      for (const d of daemons) await d.stop();
      for (const c of clusters.reverse()) await c.destroy();
    });

    it("archives the history file and the new timeline, and a restore reaches data written after the promotion", async () => {
      const work = await makeTempDir("pghoard-timeline");
      const { primary, standby, standbyData } = await primaryAndStandby(work, clusters);
      const env = await makeStreamingEnv(standby, site, mode);
      const daemon = await startDaemon(env, { PGHOARD_TEST_PARTIAL_INTERVAL_MS: "2000" });
      daemons.push(daemon);
      await waitFor(
        "streaming",
        async () => STREAMING_LOG[mode].test(daemon.logs()),
        30_000,
        () => daemon.logs(),
      );

      // The base backup (timeline 1) whose WAL comes only from our archive.
      const baseDir = path.join(work, "restored");
      await primary.exec("pg_basebackup", [
        "-h",
        "127.0.0.1",
        "-p",
        String(primary.port),
        "-U",
        "postgres",
        "-D",
        baseDir,
        "-Fp",
        "-X",
        "none",
        "-c",
        "fast",
        "--no-sync",
      ]);
      await primary.query("INSERT INTO t SELECT i, 'tl1-after-backup' FROM generate_series(1, 1000) i");
      const lastTl1 = await switchWal(primary);
      await waitReplayed(primary, standby);
      await waitForStored(env, site, lastTl1, daemon);

      // Fail over: the daemon keeps running and must follow on its own.
      await promote(primary, standby, standbyData);
      await standby.query("INSERT INTO t SELECT i, 'tl2' FROM generate_series(1, 500) i");
      const lastTl2 = await switchWal(standby);
      assert.equal(lastTl2.slice(0, 8), "00000002");
      await waitForStored(env, site, lastTl2, daemon, 90_000);
      await waitFor(
        "00000002.history stored",
        async () => (await listStoredNames(env.storageDir, site, "timeline")).includes("00000002.history"),
        30_000,
      );
      const { data: history } = await decodeStoredObject(env.storageDir, `${site}/timeline/00000002.history`, {});
      assert.ok(
        history.equals(await readFile(path.join(standbyData, "pg_wal", "00000002.history"))),
        "history file stored byte-for-byte",
      );
      const tl2 = fullSegments(await storedWal(env, site)).filter((n) => n.startsWith("00000002"));
      assert.ok(tl2.length >= 1, `timeline 2 segments: ${tl2.join(" ")}`);
      await assertStoredMatchPgWal(env, site, standby, tl2);

      // Restore the timeline-1 base backup through a recovery-only daemon on the same storage.
      const restorePort = await findFreePort();
      const restoreEnv = await makeDaemonEnv({ [site]: { pgDataDirectory: baseDir } }, { http_port: restorePort });
      const sites = restoreEnv.config.backup_sites as Record<string, Record<string, unknown>>;
      sites[site].object_storage = { storage_type: "local", directory: env.storageDir };
      sites[site].active = false;
      await restoreEnv.writeConfig();
      const restoreDaemon = await DaemonProcess.start(restoreEnv, { env: { HOME: restoreEnv.dir } });
      daemons.push(restoreDaemon);
      await writeFile(path.join(baseDir, "recovery.signal"), "");
      await chownToPostgres(path.join(baseDir, "recovery.signal"));
      const restored = await startCluster({
        dataDir: baseDir,
        noStart: true,
        restoreCommand: `${process.execPath} ${postgresCommandBin} --mode restore --port ${restorePort} --site ${site} --output %p --xlog %f`,
        settings: { archive_mode: "off", recovery_target_timeline: "latest" },
      });
      clusters.push(restored);
      await restored.start();
      await restored.waitForRecoveryEnd(120_000);
      const rows = await restored.query<{ phase: string; n: string }>(
        "SELECT phase, count(*) AS n FROM t GROUP BY phase ORDER BY phase",
      );
      assert.deepEqual(
        rows.map((r) => [r.phase, Number(r.n)]),
        [
          ["tl1", 1000],
          ["tl1-after-backup", 1000],
          ["tl2", 500],
        ],
      );
      const log = await restored.logContents();
      assert.match(log, /restored log file "00000002.history" from archive/);
      assert.match(log, /restored log file "00000002[0-9A-F]{16}" from archive/);
      await sleep(10);
    });
  });
}

for (const mode of ["pg_receivexlog", "walreceiver"] as const) {
  describe(`promotion while the daemon is down, ${mode} mode`, { timeout: 300_000 }, () => {
    const site = mode === "pg_receivexlog" ? "tldrx" : "tldwr";
    const clusters: PgCluster[] = [];
    const daemons: DaemonProcess[] = [];

    after(async () => {
      for (const d of daemons) await d.stop();
      for (const c of clusters.reverse()) await c.destroy();
    });

    it("resumes on the old timeline, follows the switch and archives both timelines completely", async () => {
      const work = await makeTempDir("pghoard-timeline-down");
      const { primary, standby, standbyData } = await primaryAndStandby(work, clusters);
      const env = await makeStreamingEnv(standby, site, mode);
      const first = await startDaemon(env);
      daemons.push(first);
      await waitFor(
        "streaming",
        async () => STREAMING_LOG[mode].test(first.logs()),
        30_000,
        () => first.logs(),
      );
      await primary.query("INSERT INTO t SELECT i, 'tl1-b' FROM generate_series(1, 20000) i");
      const stored1 = await switchWal(primary);
      await waitReplayed(primary, standby);
      await waitForStored(env, site, stored1, first);
      assert.deepEqual(await first.stop(), { code: 0, signal: null });

      // While no daemon runs: more WAL on timeline 1, the failover, WAL on timeline 2.
      await primary.query("INSERT INTO t SELECT i, 'tl1-c' FROM generate_series(1, 20000) i");
      await switchWal(primary);
      await promote(primary, standby, standbyData);
      await standby.query("INSERT INTO t SELECT i, 'tl2' FROM generate_series(1, 20000) i");
      const lastTl2 = await switchWal(standby);

      const second = await startDaemon(env, {}, "daemon2.log");
      daemons.push(second);
      await waitForStored(env, site, lastTl2, second, 90_000);
      await waitFor(
        "00000002.history stored",
        async () => (await listStoredNames(env.storageDir, site, "timeline")).includes("00000002.history"),
        30_000,
      );
      if (mode === "walreceiver") await second.waitForLog(/Timeline 1 ended at .*; following timeline 2/);
      // Segments are compressed in parallel: the small last one can be stored before the larger switch
      // segment (a clean-clone run under load checked too early). Wait for timeline 2 from its start.
      await waitFor(
        "timeline 2 stored from the switch segment on",
        async () => {
          const stored = fullSegments(await storedWal(env, site));
          const last1 = stored.filter((n) => n.startsWith("00000001")).at(-1);
          const first2 = stored.find((n) => n.startsWith("00000002"));
          return last1 !== undefined && first2 === nextWalName(last1).replace(/^00000001/, "00000002");
        },
        60_000,
        () => second.logs().slice(-3000),
      );
      const names = fullSegments(await storedWal(env, site));
      const tl1 = names.filter((n) => n.startsWith("00000001"));
      const tl2 = names.filter((n) => n.startsWith("00000002"));
      assertContiguous(tl1);
      assertContiguous(tl2);
      // The timeline-2 run starts where timeline 1 stopped (the switch segment exists only on timeline 2).
      assert.equal(tl2[0], nextWalName(tl1.at(-1)!).replace(/^00000001/, "00000002"));
      await assertStoredMatchPgWal(env, site, standby, names);
    });
  });
}
