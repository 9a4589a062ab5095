/**
 * restore_command through the daemon: a cluster restored from pg_basebackup fetches its WAL via
 * `pghoard_postgres_command --mode restore` from a second daemon and recovers to a named restore
 * point with exactly the data of that point. Also: WAL written by upstream pghoard (shared
 * fixtures) is served byte-exact.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { chownToPostgres, findFreePort, makeTempDir, startCluster, type PgCluster } from "../helpers/pgcluster.js";
import { hasShared, sharedDir } from "../helpers/paths.js";
import {
  DaemonProcess,
  httpRequest,
  makeDaemonEnv,
  makeKeyPair,
  postgresCommandBin,
  switchWal,
  waitArchived,
  type DaemonEnv,
} from "./helpers.js";

const SITE = "restoretest";
const KEY_ID = "restoretest-key";

const SNAPSHOT_SQL =
  "SELECT count(*)::text AS n, coalesce(sum(id), 0)::text AS s, md5(coalesce(string_agg(id::text || ':' || v, ',' ORDER BY id), '')) AS h FROM t";

describe("restore_command through the daemon", () => {
  let source: PgCluster;
  let restored: PgCluster | undefined;
  let archiveEnv: DaemonEnv;
  let archiveDaemon: DaemonProcess;
  let restoreDaemon: DaemonProcess | undefined;
  const keys = makeKeyPair();

  before(async () => {
    const port = await findFreePort();
    source = await startCluster({
      archiveCommand: `${process.execPath} ${postgresCommandBin} --mode archive --port ${port} --site ${SITE} --xlog %f`,
    });
    archiveEnv = await makeDaemonEnv(
      { [SITE]: { pgDataDirectory: source.dataDir, keyId: KEY_ID, keys } },
      { http_port: port },
    );
    archiveDaemon = await DaemonProcess.start(archiveEnv);
  });

  after(async () => {
    await restoreDaemon?.stop();
    await restored?.destroy();
    await archiveDaemon?.stop();
    await source?.destroy();
  });

  it("recovers a pg_basebackup to a named restore point with WAL served by the daemon", async () => {
    await source.query("CREATE TABLE t (id int PRIMARY KEY, v text)");
    await source.query("INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 1000) i");
    const workDir = await makeTempDir("pghoard-restore");
    const dataDir = path.join(workDir, "data");
    await source.exec("pg_basebackup", [
      "-h",
      "127.0.0.1",
      "-p",
      String(source.port),
      "-U",
      "postgres",
      "-D",
      dataDir,
      "-Fp",
      "-X",
      "none",
      "-c",
      "fast",
    ]);
    // Enough WAL after the backup that several segments have to come from the archive.
    await source.query("INSERT INTO t SELECT i, repeat(md5(i::text), 20) FROM generate_series(1001, 60000) i");
    await switchWal(source);
    await source.query("INSERT INTO t SELECT i, md5(i::text) FROM generate_series(60001, 61000) i");
    const expected = (await source.query(SNAPSHOT_SQL))[0];
    await source.query("SELECT pg_create_restore_point('rp1')");
    await source.query("INSERT INTO t SELECT i, 'after' FROM generate_series(-100, -1) i");
    await source.query("UPDATE t SET v = 'changed' WHERE id <= 10");
    const last = await switchWal(source);
    await waitArchived(source, last);

    const restorePort = await findFreePort();
    const restoreEnv = await makeDaemonEnv(
      { [SITE]: { pgDataDirectory: dataDir, keyId: KEY_ID, keys } },
      { http_port: restorePort, restore_prefetch: 3 },
    );
    const sites = restoreEnv.config.backup_sites as Record<string, Record<string, unknown>>;
    sites[SITE].object_storage = { storage_type: "local", directory: archiveEnv.storageDir };
    sites[SITE].active = false; // a recovery-only site: serves WAL, takes no backups
    await restoreEnv.writeConfig();
    restoreDaemon = await DaemonProcess.start(restoreEnv);

    const restoreCommand = `${process.execPath} ${postgresCommandBin} --mode restore --port ${restorePort} --site ${SITE} --output %p --xlog %f`;
    restored = await startCluster({
      dataDir,
      restoreCommand,
      noStart: true,
      settings: { archive_mode: "off", recovery_target_name: "rp1", recovery_target_action: "promote" },
    });
    const signal = path.join(dataDir, "recovery.signal");
    await writeFile(signal, "");
    await chownToPostgres(signal);
    await restored.start();
    await restored.waitForRecoveryEnd();
    const actual = (await restored.query(SNAPSHOT_SQL))[0];
    assert.deepEqual(actual, expected);
    const log = await restored.logContents();
    assert.match(log, /recovery stopping at restore point "rp1"/);
    assert.match(log, /restored log file "[0-9A-F]{24}" from archive/);
    assert.ok(restoreDaemon.logs().includes(".pghoard.prefetch"), "prefetch was used");
  });
});

interface GroundTruth {
  wal_segments: Array<{ name: string; original_sha256_from_archive_command: string }>;
  timeline_files: Array<{ name: string; original_sha256_from_archive_command: string }>;
}

const fixtureRoot = path.join(sharedDir, "fixtures", "pghoard-made");
const fixtureSets = ["snappy-plain-basic", "snappy-enc-localtar", "zstd-plain-localtar"];

describe("serving WAL written by upstream pghoard", { skip: hasShared ? false : "shared fixtures absent" }, () => {
  for (const set of fixtureSets) {
    it(`serves every segment of ${set} byte-exact`, async () => {
      const setDir = path.join(fixtureRoot, set);
      if (!existsSync(path.join(setDir, "store"))) return;
      const truth = JSON.parse(await readFile(path.join(setDir, "ground-truth.json"), "utf8")) as GroundTruth;
      const upstreamConfig = JSON.parse(await readFile(path.join(setDir, "pghoard.json"), "utf8")) as {
        backup_sites: Record<
          string,
          { encryption_key_id?: string; encryption_keys?: Record<string, { public: string; private: string }> }
        >;
        compression: { algorithm: string };
      };
      const upstreamSite = upstreamConfig.backup_sites[set];
      const pgdata = path.join(await makeTempDir("pghoard-fixture-pgdata"), "data");
      await mkdir(path.join(pgdata, "pg_wal"), { recursive: true });
      await writeFile(path.join(pgdata, "PG_VERSION"), "15\n");
      const env = await makeDaemonEnv({ [set]: { pgDataDirectory: pgdata } }, { restore_prefetch: 2 });
      const sites = env.config.backup_sites as Record<string, Record<string, unknown>>;
      sites[set].object_storage = { storage_type: "local", directory: path.join(setDir, "store") };
      sites[set].active = false;
      if (upstreamSite.encryption_key_id) {
        sites[set].encryption_key_id = upstreamSite.encryption_key_id;
        sites[set].encryption_keys = upstreamSite.encryption_keys;
      }
      await env.writeConfig();
      const daemon = await DaemonProcess.start(env);
      try {
        const files = [...truth.wal_segments, ...truth.timeline_files];
        assert.ok(files.length > 0);
        for (const file of files) {
          const target = path.join(pgdata, "pg_wal", "RECOVERYXLOG");
          const res = await httpRequest(env.port, "GET", `/${set}/archive/${file.name}`, {
            "x-pghoard-target-path": target,
          });
          assert.equal(res.status, 201, `${file.name}: ${res.status} ${res.body}`);
          const served = await readFile(target);
          assert.equal(
            createHash("sha256").update(served).digest("hex"),
            file.original_sha256_from_archive_command,
            file.name,
          );
        }
        // A segment that is not in the archive is a 404 (PostgreSQL's "end of archive").
        const missing = await httpRequest(env.port, "GET", `/${set}/archive/0000000100000000000000FE`, {
          "x-pghoard-target-path": path.join(pgdata, "pg_wal", "RECOVERYXLOG"),
        });
        assert.equal(missing.status, 404);
      } finally {
        await daemon.stop();
      }
    });
  }
});
