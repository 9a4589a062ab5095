import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { readdir, rm } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { chownToPostgres, isPortFree, makeTempDir, startCluster, type PgCluster } from "./pgcluster.js";

describe("test/helpers/pgcluster", { timeout: 240_000 }, () => {
  let cluster: PgCluster;
  let archiveDir: string;

  before(async () => {
    archiveDir = await makeTempDir("pgcluster-archive");
    await chownToPostgres(archiveDir);
    cluster = await startCluster({ archiveCommand: `cp %p ${archiveDir}/%f` });
  });

  after(async () => {
    await cluster?.destroy();
    await rm(archiveDir, { recursive: true, force: true });
  });

  it("runs queries with the expected WAL settings", async () => {
    const rows = await cluster.query<{ wal_level: string; archive_mode: string; version: string }>(
      "SELECT current_setting('wal_level') AS wal_level, current_setting('archive_mode') AS archive_mode, " +
        "current_setting('server_version_num') AS version",
    );
    assert.deepEqual(rows[0]?.wal_level, "replica");
    assert.deepEqual(rows[0]?.archive_mode, "on");
    assert.match(rows[0]?.version ?? "", /^15\d{4}$/);
    const [param] = await cluster.query<{ n: number }>("SELECT $1::int + 1 AS n", [41]);
    assert.equal(param?.n, 42);
    assert.match(
      cluster.connectionString(),
      new RegExp(`^host=127\\.0\\.0\\.1 port=${cluster.port} user=postgres dbname=postgres$`),
    );
  });

  it("runs PostgreSQL binaries (pgbench -i, psql, pg_basebackup over replication)", async () => {
    const output = await cluster.pgbench(["-i", "-s", "1", "-q"]);
    assert.match(output, /done/);
    const [count] = await cluster.query<{ n: string }>("SELECT count(*) AS n FROM pgbench_accounts");
    assert.equal(count?.n, "100000");
    const { stdout } = await cluster.exec("psql", ["-Atc", "SELECT 1 + 2"]);
    assert.equal(stdout.trim(), "3");
    const { stdout: system } = await cluster.exec("psql", [
      "-At",
      "-d",
      cluster.connectionString({ replication: "true" }),
      "-c",
      "IDENTIFY_SYSTEM",
    ]);
    assert.match(system, /^\d+\|1\|0\//);
  });

  it("archives WAL through archive_command as the server user", async () => {
    await cluster.query("SELECT pg_switch_wal()");
    await cluster.query("CREATE TABLE t AS SELECT 1 AS x");
    await cluster.query("SELECT pg_switch_wal()");
    const deadline = Date.now() + 30_000;
    let names: string[] = [];
    while (Date.now() < deadline) {
      names = (await readdir(archiveDir)).filter((n) => /^[0-9A-F]{24}$/.test(n));
      if (names.length > 0) break;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    assert.ok(names.length > 0, `no WAL archived; log:\n${await cluster.logContents()}`);
  });

  it("restarts, stops and frees its port", async () => {
    await cluster.restart();
    const [row] = await cluster.query<{ one: number }>("SELECT 1 AS one");
    assert.equal(row?.one, 1);
    await cluster.waitForRecoveryEnd(10_000);
    assert.match(await cluster.logContents(), /database system is ready to accept connections/);
    const { port, dataDir } = cluster;
    await cluster.stop();
    assert.equal(existsSync(path.join(dataDir, "postmaster.pid")), false);
    assert.equal(await isPortFree(port), true);
    await cluster.stop(); // stopping a stopped cluster is fine
  });

  it("starts a second cluster on an existing data directory", async () => {
    const second = await startCluster({ dataDir: cluster.dataDir, settings: { archive_mode: "off" } });
    try {
      const [row] = await second.query<{ archive_mode: string }>(
        "SELECT current_setting('archive_mode') AS archive_mode",
      );
      assert.equal(row?.archive_mode, "off");
    } finally {
      await second.destroy();
    }
    assert.equal(existsSync(cluster.dataDir), true, "a caller-supplied dataDir is not removed");
  });
});
