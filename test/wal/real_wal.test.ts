/** WAL helpers against files a real PostgreSQL 15 wrote. */
import assert from "node:assert/strict";
import { readdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import {
  historyFileName,
  isHistoryName,
  isWalName,
  LsnMismatchError,
  lsnToWalName,
  nextWalName,
  parseLsn,
  parseTimelineHistory,
  verifyWalFile,
} from "../../src/wal/index.js";
import { chownToPostgres, startCluster, type PgCluster } from "../helpers/pgcluster.js";

describe("WAL written by PostgreSQL 15", { timeout: 120_000 }, () => {
  let cluster: PgCluster;
  before(async () => {
    cluster = await startCluster();
  });
  after(async () => {
    await cluster?.destroy();
  });

  it("verifies every segment in pg_wal and names the current one like pg_walfile_name()", async () => {
    await cluster.query("CREATE TABLE t AS SELECT generate_series(1, 1000) AS x");
    await cluster.query("SELECT pg_switch_wal()");
    await cluster.query("INSERT INTO t SELECT generate_series(1, 1000)");
    const [row] = await cluster.query<{ lsn: string; name: string }>(
      "SELECT pg_current_wal_lsn()::text AS lsn, pg_walfile_name(pg_current_wal_lsn()) AS name",
    );
    assert.ok(row);
    assert.equal(lsnToWalName(row.lsn, 1), row.name);
    const walDir = path.join(cluster.dataDir, "pg_wal");
    const segments = (await readdir(walDir)).filter(isWalName).sort();
    assert.ok(segments.length >= 2);
    for (const name of segments) {
      const header = await verifyWalFile(path.join(walDir, name), name);
      assert.equal(header.serverVersion, 150000);
      assert.equal(header.segSize, 16 * 1024 * 1024);
    }
    const [first, second] = segments as [string, string];
    assert.equal(nextWalName(first), second);
    // A recycled/renamed segment: right bytes, wrong name.
    await assert.rejects(verifyWalFile(path.join(walDir, first), second), LsnMismatchError);
  });

  it("parses the history file written at the end of archive recovery", async () => {
    await cluster.stop();
    // Archive recovery with nothing to restore ends at once and switches to timeline 2.
    await writeFile(path.join(cluster.dataDir, "recovery.signal"), "");
    await writeFile(path.join(cluster.dataDir, "postgresql.auto.conf"), "restore_command = 'false'\n");
    await chownToPostgres(cluster.dataDir);
    await cluster.start();
    await cluster.waitForRecoveryEnd();
    const [row] = await cluster.query<{ tli: number; lsn: string }>(
      "SELECT timeline_id AS tli, redo_lsn::text AS lsn FROM pg_control_checkpoint()",
    );
    assert.equal(row?.tli, 2);
    const walDir = path.join(cluster.dataDir, "pg_wal");
    assert.ok((await readdir(walDir)).filter(isHistoryName).includes(historyFileName(2)));
    const entries = parseTimelineHistory(await readFile(path.join(walDir, historyFileName(2))));
    assert.equal(entries.length, 1);
    assert.equal(entries[0]?.tli, 1);
    assert.ok((entries[0]?.switchpoint ?? 0n) <= parseLsn(row?.lsn ?? "0/0"));
    assert.match(entries[0]?.reason ?? "", /no recovery target specified/);
  });
});
