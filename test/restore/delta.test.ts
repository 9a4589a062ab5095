/**
 * `get-basebackup --delta` as an operator rebuilding a replica uses it: a backup (tar chunks and
 * delta format, with a tablespace) is restored, PostgreSQL recovers from it and is changed (pgbench
 * updates, a dropped table, new files and directories, a changed mode, a symlink), stopped, and
 * delta restored from the same backup. The result must equal a fresh restore file for file
 * (content, mode, symlinks) and recover to exactly the backup's restore point. Also: `--delta`
 * into a missing directory is a normal restore, a failed delta restore leaves no pg_control and
 * running it again completes, and a non-empty directory that is no PGDATA is refused.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { chmod, cp, mkdir, readdir, rm, stat, symlink, truncate, writeFile, readFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";

import {
  makeRestorePoint,
  prepareData,
  requestBackup,
  SNAPSHOT_SQL,
  startScenario,
  TS_SQL,
  type Scenario,
} from "../basebackup/helpers.js";
import { DaemonProcess, makeDaemonEnv, postgresCommandBin, type DaemonEnv } from "../daemon/helpers.js";
import { chownToPostgres, findFreePort, makeTempDir, startCluster } from "../helpers/pgcluster.js";
import { directoryManifest, runRestoreCli, type ManifestEntry } from "./helpers.js";

const MODES = [
  { mode: "local-tar", extra: { basebackup_chunk_size: 2 * 1024 * 1024 } },
  // Files of 64 KiB and more become hash objects (the delta path that downloads only what changed).
  {
    mode: "delta",
    extra: { basebackup_delta_mode_min_delta_file_size: 64 * 1024, basebackup_delta_mode_chunk_size: 1024 * 1024 },
  },
];

/** Both trees' manifests with modes; the tablespace link target (different per restore) normalized. */
async function restoredTree(dataDir: string, tsDir: string): Promise<{ data: ManifestEntry[]; ts: ManifestEntry[] }> {
  const data = (await directoryManifest(dataDir, { modes: true })).map((e) =>
    e.symlink === tsDir ? { ...e, symlink: "<tablespace dir>" } : e,
  );
  return { data, ts: await directoryManifest(tsDir, { modes: true }) };
}

/** The tree without postgresql.auto.conf's contents: its restore_command names the config used. */
function ignoringAutoConf(tree: { data: ManifestEntry[]; ts: ManifestEntry[] }): typeof tree {
  const data = tree.data.map((e) =>
    e.path === "postgresql.auto.conf" ? { ...e, size: undefined, sha256: undefined } : e,
  );
  return { data, ts: tree.ts };
}

for (const { mode, extra } of MODES) {
  describe(`get-basebackup --delta (${mode} backups)`, { timeout: 900_000 }, () => {
    const site = `delta-${mode}`;
    let s: Scenario;
    let work: string;
    let renv: DaemonEnv;
    let expected: { expected: Record<string, unknown>; expectedTs?: Record<string, unknown> };
    let fresh: { data: ManifestEntry[]; ts: ManifestEntry[] };
    const dataDir = (): string => path.join(work, "data");
    const tsDir = (): string => path.join(work, "ts1");

    const restoreArgs = (target: string, ts: string, ...more: string[]): string[] => [
      "get-basebackup",
      "--config",
      renv.configPath,
      "--site",
      site,
      "--target-dir",
      target,
      "--tablespace-dir",
      `ts1=${ts}`,
      "--recovery-target-name",
      "rp1",
      "--recovery-target-action",
      "promote",
      "--restore-to-primary",
      "--pghoard-postgres-command-bin",
      `${process.execPath} ${postgresCommandBin}`,
      ...more,
    ];

    /** Starts PostgreSQL on the restored data directory, WAL served by a daemon for that directory. */
    async function recover(): Promise<{
      query: (sql: string) => Promise<Record<string, unknown>>;
      stop: () => Promise<void>;
    }> {
      await chownToPostgres(tsDir());
      const daemon = await DaemonProcess.start(renv);
      const cluster = await startCluster({ dataDir: dataDir(), settings: { archive_mode: "off" } }).catch(
        async (err: unknown) => {
          await daemon.stop();
          throw err;
        },
      );
      try {
        await cluster.waitForRecoveryEnd(180_000);
      } catch (err) {
        await cluster.destroy();
        await daemon.stop();
        throw err;
      }
      return {
        query: async (sql) => (await cluster.query(sql))[0],
        stop: async () => {
          await cluster.destroy();
          await daemon.stop();
        },
      };
    }

    before(async () => {
      s = await startScenario({ site, siteExtra: { basebackup_mode: mode, ...extra }, tablespace: true });
      await prepareData(s, 1, true);
      await s.cluster.query("CREATE TABLE dropme AS SELECT i FROM generate_series(1, 50000) i");
      await s.cluster.query("CHECKPOINT");
      await requestBackup(s);
      expected = await makeRestorePoint(s, true);
      work = await makeTempDir("delta-restore");
      renv = await makeDaemonEnv(
        { [site]: { pgDataDirectory: dataDir(), keyId: s.keyId, keys: s.keys } },
        { http_port: await findFreePort(), log_level: "INFO" },
      );
      const sites = renv.config.backup_sites as Record<string, Record<string, unknown>>;
      sites[site].object_storage = { storage_type: "local", directory: s.env.storageDir };
      sites[site].active = false;
      await renv.writeConfig();

      const freshData = path.join(work, "fresh");
      const freshTs = path.join(work, "fresh-ts1");
      await mkdir(freshTs);
      const result = await runRestoreCli(restoreArgs(freshData, freshTs));
      assert.equal(result.code, 0, result.stdout + result.stderr);
      fresh = await restoredTree(freshData, freshTs);
    });

    after(async () => {
      await s?.cleanup();
      if (work) await rm(work, { recursive: true, force: true });
    });

    it("--delta into a missing directory is a normal restore", async () => {
      const ts = path.join(work, "missing-ts1");
      await mkdir(ts);
      const target = path.join(work, "missing");
      const result = await runRestoreCli(restoreArgs(target, ts, "--delta"));
      assert.equal(result.code, 0, result.stdout + result.stderr);
      assert.deepEqual(await restoredTree(target, ts), fresh);
    });

    it("after a ~1% change of a recovered cluster it equals a fresh restore and recovers to the same data", async () => {
      await mkdir(tsDir());
      const first = await runRestoreCli(restoreArgs(dataDir(), tsDir()));
      assert.equal(first.code, 0, first.stdout + first.stderr);
      const live = await recover();
      let dropme: unknown;
      try {
        dropme = (await live.query("SELECT count(*)::text AS n FROM dropme")).n;
        assert.deepEqual(await live.query(SNAPSHOT_SQL), expected.expected);
        // The changes a diverged replica has: updates of ~1% of the rows, a dropped table, new files.
        await live.query("UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid % 100 = 3");
        await live.query("DROP TABLE dropme");
        await live.query("INSERT INTO ts_t SELECT i, 'diverged' FROM generate_series(900000, 900500) i");
        await live.query("CHECKPOINT");
      } finally {
        await live.stop();
      }
      await writeFile(path.join(dataDir(), "base", "stray_file"), "not from the backup");
      await mkdir(path.join(dataDir(), "new_dir", "sub"), { recursive: true });
      await writeFile(path.join(dataDir(), "new_dir", "sub", "f"), "x");
      await writeFile(path.join(tsDir(), "stray_in_tablespace"), "x");
      await chmod(path.join(dataDir(), "PG_VERSION"), 0o644);
      await rm(path.join(dataDir(), "pg_ident.conf"));
      await mkdir(path.join(dataDir(), "pg_ident.conf"));
      await writeFile(path.join(dataDir(), "pg_ident.conf", "inside"), "x");
      await symlink("/tmp", path.join(dataDir(), "a_symlink"));
      assert.notDeepEqual(await restoredTree(dataDir(), tsDir()), fresh);

      const delta = await runRestoreCli(restoreArgs(dataDir(), tsDir(), "--delta"));
      assert.equal(delta.code, 0, delta.stdout + delta.stderr);
      assert.match(delta.stdout, /Delta restoring tablespace 'ts1' into existing directory/);
      const stats =
        /Delta restore: (\d+) files unchanged, (\d+) written, (\d+) files and directories the backup does not have removed/.exec(
          delta.stdout,
        );
      assert.ok(stats, delta.stdout);
      // Most files are as in the backup; the changed relations, configuration files and the rest are written.
      assert.ok(Number(stats[1]) > 5 * Number(stats[2]), delta.stdout);
      assert.ok(Number(stats[2]) > 0 && Number(stats[3]) >= 5, delta.stdout);
      assert.deepEqual(await restoredTree(dataDir(), tsDir()), fresh);

      const again = await recover();
      try {
        assert.deepEqual(await again.query(SNAPSHOT_SQL), expected.expected);
        assert.deepEqual(await again.query(TS_SQL), expected.expectedTs);
        assert.equal((await again.query("SELECT count(*)::text AS n FROM dropme")).n, dropme);
      } finally {
        await again.stop();
      }
    });

    it("identical files of delta backups are not downloaded; a failed delta restore leaves no pg_control; running it again finishes", async () => {
      // A copy of the store with one data object cut short.
      const brokenStore = path.join(work, "broken-store");
      await cp(s.env.storageDir, brokenStore, { recursive: true });
      const objectDir = path.join(brokenStore, site, mode === "delta" ? "basebackup_delta" : "basebackup_chunk");
      // The biggest data object (chunks live in a directory per backup).
      const objects = (await readdir(objectDir, { recursive: true })).filter((n) => !n.endsWith(".metadata"));
      let biggest = "";
      let biggestSize = -1;
      for (const name of objects) {
        const st = await stat(path.join(objectDir, name));
        if (st.isFile() && st.size > biggestSize) [biggest, biggestSize] = [name, st.size];
      }
      await truncate(path.join(objectDir, biggest), 100);
      const brokenConfig = path.join(work, "broken.json");
      const config = JSON.parse(JSON.stringify(renv.config)) as Record<string, unknown>;
      (config.backup_sites as Record<string, Record<string, unknown>>)[site].object_storage = {
        storage_type: "local",
        directory: brokenStore,
      };
      await writeFile(brokenConfig, JSON.stringify(config));
      const args = restoreArgs(dataDir(), tsDir(), "--delta");
      const brokenArgs = args.map((a) => (a === renv.configPath ? brokenConfig : a));
      const unchanged = await runRestoreCli(brokenArgs);
      if (mode === "delta") {
        // The directory already has the broken object's file: it is hashed, not downloaded.
        assert.equal(unchanged.code, 0, unchanged.stdout + unchanged.stderr);
        assert.match(unchanged.stdout, /Delta restore: \d+ files unchanged, \d+ written, /);
        // Equal to a fresh restore but for the restore_command, which names the config used.
        assert.deepEqual(ignoringAutoConf(await restoredTree(dataDir(), tsDir())), ignoringAutoConf(fresh));
        assert.match(await readFile(path.join(dataDir(), "postgresql.auto.conf"), "utf8"), /broken\.json/);
      } else {
        assert.equal(unchanged.code, 1, "tar chunks are always downloaded");
      }
      // Local files to replace, so the broken object is needed (identical ones are not downloaded).
      await rm(path.join(dataDir(), "base"), { recursive: true });
      for (const name of await readdir(tsDir())) await rm(path.join(tsDir(), name), { recursive: true });

      const failed = await runRestoreCli(brokenArgs);
      assert.equal(failed.code, 1, failed.stdout + failed.stderr);
      assert.match(failed.stdout, /FATAL: RestoreError: .*(corrupt|truncated)/);
      assert.match(failed.stderr, /partly delta restored and has no global\/pg_control/);
      assert.ok(existsSync(path.join(dataDir(), "PG_VERSION")), "the directory is kept");
      assert.ok(!existsSync(path.join(dataDir(), "global", "pg_control")));
      assert.ok(!existsSync(path.join(dataDir(), "global", "pg_control.pghoard_restore_incomplete")));

      const ok = await runRestoreCli(args);
      assert.equal(ok.code, 0, ok.stdout + ok.stderr);
      assert.deepEqual(await restoredTree(dataDir(), tsDir()), fresh);
    });

    it("refuses a tablespace directory in use by the running source cluster, even with --delta", async () => {
      const target = path.join(work, "never-created");
      const tablespace = s.tablespaceDir!;
      // The source keeps running (checkpoints change contents): its file list must stay as it is.
      const names = async (): Promise<string[]> => (await directoryManifest(tablespace)).map((e) => e.path);
      const before = await names();
      for (const flag of ["--overwrite", "--delta"]) {
        const result = await runRestoreCli(restoreArgs(target, tablespace, flag));
        assert.equal(result.code, 1, result.stdout + result.stderr);
        assert.match(
          result.stdout,
          /^FATAL: RestoreError: Tablespace 'ts1' target directory '.*' is tablespace \d+ of the running PostgreSQL \(pid \d+\) in '.*', refusing to restore into it/m,
        );
      }
      assert.ok(!existsSync(target), "nothing created");
      assert.deepEqual(await names(), before);
      // the source deleted 100 of the restore point's rows afterwards (makeRestorePoint)
      const rows = (await s.cluster.query<{ n: string }>("SELECT count(*)::text AS n FROM ts_t"))[0].n;
      assert.equal(Number(rows), Number(expected.expectedTs?.n) - 100);
    });

    it("refuses a non-empty directory that is not a PostgreSQL data directory, touching nothing", async () => {
      const target = path.join(work, "not-pgdata");
      await mkdir(target);
      await writeFile(path.join(target, "precious"), "x");
      const ts = path.join(work, "not-pgdata-ts");
      await mkdir(ts);
      const result = await runRestoreCli(restoreArgs(target, ts, "--delta"));
      assert.equal(result.code, 1);
      assert.match(
        result.stdout,
        /FATAL: RestoreError: .* has no PG_VERSION, so it is not a PostgreSQL data directory/,
      );
      assert.deepEqual(await readdir(target), ["precious"]);
      assert.deepEqual(await readdir(ts), []);
    });
  });
}
