/**
 * Point-in-time recovery of OUR backups (local-tar, encrypted, with a user tablespace mapped to
 * a new directory): the daemon takes the backup, pghoard_restore restores it, PostgreSQL 15
 * recovers with WAL from a recovery-only daemon to a restore point, a time, an xid, an LSN and
 * `immediate`, each with exactly the data of that moment. restore_command is get-basebackup's
 * default for the daemon mode: the installed bash client.
 */
import assert from "node:assert/strict";
import { mkdir, readFile, rm } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";

import { prepareData, requestBackup, startScenario, type Scenario } from "../basebackup/helpers.js";
import { DaemonProcess, makeDaemonEnv, sleep, switchWal, waitArchived } from "../daemon/helpers.js";
import { chownToPostgres, findFreePort, makeTempDir, startCluster } from "../helpers/pgcluster.js";
import { installedClientBin } from "../helpers/paths.js";
import { runRestoreCli } from "./helpers.js";

const SITE = "pitr";
const shellClientBin = installedClientBin;
const STATE_SQL = `SELECT (SELECT count(*) FROM marker)::text AS marker,
  (SELECT md5(string_agg(id::text || v, ',' ORDER BY id)) FROM marker) AS marker_md5,
  (SELECT count(*) FROM ts_t)::text AS ts_rows`;

type State = Record<string, unknown>;

describe("point-in-time recovery of our own backups", { timeout: 900_000 }, () => {
  let s: Scenario;
  let backupName: string;
  const states: Record<string, State> = {};
  const targets: Record<string, string> = {};

  before(async () => {
    s = await startScenario({
      site: SITE,
      siteExtra: { basebackup_mode: "local-tar", basebackup_chunk_size: 4 * 1024 * 1024 },
      tablespace: true,
    });
    await prepareData(s, 2, true);
    const backup = await requestBackup(s);
    backupName = `${SITE}/basebackup/${backup.name}`;
    const c = s.cluster;
    states.immediate = (await c.query(STATE_SQL))[0];
    const insert = (from: number, label: string): Promise<unknown> =>
      c.query(`INSERT INTO marker SELECT i, '${label}' FROM generate_series(${from}, ${from + 99}) i`);

    await insert(10_000, "name");
    await c.query("INSERT INTO ts_t SELECT i, 'name' FROM generate_series(100000, 100049) i");
    states.name = (await c.query(STATE_SQL))[0];
    await c.query("SELECT pg_create_restore_point('pitr-point')");

    await c.query("BEGIN");
    await insert(20_000, "xid");
    targets.xid = (await c.query<{ x: string }>("SELECT txid_current()::text AS x"))[0].x;
    await c.query("COMMIT");
    states.xid = (await c.query(STATE_SQL))[0];

    await insert(30_000, "time");
    states.time = (await c.query(STATE_SQL))[0];
    await sleep(1500);
    targets.time = (
      await c.query<{ t: string }>(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') AS t",
      )
    )[0].t;
    await sleep(1500);

    await insert(40_000, "lsn");
    states.lsn = (await c.query(STATE_SQL))[0];
    targets.lsn = (await c.query<{ l: string }>("SELECT pg_current_wal_insert_lsn()::text AS l"))[0].l;

    await insert(50_000, "too-late");
    await c.query("DELETE FROM ts_t WHERE id <= 10");
    const last = await switchWal(c);
    await waitArchived(c, last);
  });

  after(async () => {
    await s?.cleanup();
  });

  it("refuses to restore a tablespace into its original directory, in use by the running source", async () => {
    const work = await makeTempDir("pitr-ts");
    const renv = await makeDaemonEnv({
      [SITE]: { pgDataDirectory: path.join(work, "data"), keyId: s.keyId, keys: s.keys },
    });
    const site = (renv.config.backup_sites as Record<string, Record<string, unknown>>)[SITE];
    site.object_storage = { storage_type: "local", directory: s.env.storageDir };
    site.active = false; // an active site's pg_data_directory is refused as a target before any tablespace check
    await renv.writeConfig();
    const result = await runRestoreCli([
      "get-basebackup",
      "--config",
      renv.configPath,
      "--target-dir",
      path.join(work, "data"),
    ]);
    assert.equal(result.code, 1);
    assert.match(
      result.stdout,
      // The source cluster still runs with that tablespace: refused before the emptiness check.
      /FATAL: RestoreError: Tablespace 'ts1' target directory '.*' is tablespace \d+ of the running PostgreSQL \(pid \d+\)/,
    );
    await rm(work, { recursive: true, force: true });
  });

  const cases: Array<{ kind: string; args: () => string[] }> = [
    { kind: "name", args: () => ["--basebackup", backupName, "--recovery-target-name", "pitr-point"] },
    { kind: "xid", args: () => ["--recovery-target-xid", targets.xid] },
    { kind: "time", args: () => ["--recovery-target-time", `${targets.time}Z`] },
    { kind: "lsn", args: () => ["--recovery-target-lsn", targets.lsn] },
    { kind: "immediate", args: () => ["--recovery-target-immediate"] },
  ];
  for (const { kind, args } of cases) {
    it(`recovers to the ${kind} target with exactly that data`, async () => {
      const work = await makeTempDir("pitr-restore");
      const dataDir = path.join(work, "data");
      const tsDir = path.join(work, "ts1");
      await mkdir(tsDir);
      const renv = await makeDaemonEnv(
        { [SITE]: { pgDataDirectory: dataDir, keyId: s.keyId, keys: s.keys } },
        { http_port: await findFreePort(), log_level: "INFO" },
      );
      const site = (renv.config.backup_sites as Record<string, Record<string, unknown>>)[SITE];
      site.object_storage = { storage_type: "local", directory: s.env.storageDir };
      site.active = false;
      await renv.writeConfig();
      const result = await runRestoreCli([
        "get-basebackup",
        "--config",
        renv.configPath,
        "--target-dir",
        dataDir,
        "--tablespace-dir",
        `ts1=${tsDir}`,
        "--restore-to-primary",
        "--recovery-target-action",
        "promote",
        "--restore-command-mode",
        "daemon",
        ...args(),
      ]);
      assert.equal(result.code, 0, result.stdout + result.stderr);
      // The default for the daemon mode: the installed client, the native front where built (PostgreSQL
      // recovers through it below).
      const autoConf = await readFile(path.join(dataDir, "postgresql.auto.conf"), "utf8");
      assert.ok(
        autoConf.includes(
          `\nrestore_command = 'PGHOARD_NODE=${process.execPath} ${shellClientBin} --mode restore --port ${renv.port} --site ${SITE} --output %p --xlog %f'\n`,
        ),
        autoConf,
      );
      assert.match(result.stdout, /Using existing empty directory '.*ts1' for tablespace 'ts1'/);
      await chownToPostgres(tsDir);
      const daemon = await DaemonProcess.start(renv);
      const cluster = await startCluster({ dataDir, settings: { archive_mode: "off" } });
      try {
        await cluster.waitForRecoveryEnd(180_000);
        const log = await cluster.logContents();
        const tail = `\n--- server log ---\n${log.split("\n").slice(-40).join("\n")}\n--- target ${JSON.stringify(targets)}`;
        assert.deepEqual((await cluster.query(STATE_SQL))[0], states[kind], tail);
        assert.match(
          log,
          kind === "immediate" ? /recovery stopping after reaching consistency/ : /recovery stopping (before|after|at)/,
        );
        assert.match(log, /restored log file "[0-9A-F]{24}" from archive/);
      } finally {
        await cluster.destroy();
        await daemon.stop();
        await rm(work, { recursive: true, force: true });
      }
    });
  }
});
