/**
 * issue 11: a restore that works as written. The daemon (archive_command mode) backs up a
 * cluster while pgbench runs; `pghoard_restore get-basebackup` with the very same config writes
 * a restore_command in the direct mode, and `pg_ctl start` on the restored directory recovers to
 * the restore point with exactly that data: while the daemon still runs for the live cluster,
 * and again with no daemon at all. The read-ahead files are gone once recovery ended; a wrong
 * site makes recovery fail loudly.
 */
import assert from "node:assert/strict";
import { readdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";

import { makeRestorePoint, prepareData, requestBackup, startScenario, type Scenario } from "../basebackup/helpers.js";
import { SNAPSHOT_SQL } from "../basebackup/helpers.js";
import { makeTempDir, startCluster, type PgCluster } from "../helpers/pgcluster.js";
import { repoRoot } from "../helpers/paths.js";
import { restoreToRestorePoint } from "./helpers.js";

const SITE = "live";

describe("get-basebackup's default restore_command: recovery with no other step", { timeout: 900_000 }, () => {
  let s: Scenario;
  let expected: Record<string, unknown>;
  const clusters: PgCluster[] = [];

  before(async () => {
    s = await startScenario({ site: SITE, siteExtra: {}, configExtra: { restore_prefetch: 3 } });
    await prepareData(s, 2, false);
    // The backup is taken while pgbench writes.
    const load = s.cluster.pgbench(["-n", "-c", "2", "-T", "20"]);
    await requestBackup(s);
    await load;
    ({ expected } = await makeRestorePoint(s, false));
  });

  after(async () => {
    for (const c of clusters) await c.destroy().catch(() => undefined);
    await s?.cleanup();
  });

  /** get-basebackup with the production config, as the README tells an operator to. */
  async function restore(site = SITE): Promise<{ dataDir: string; stdout: string }> {
    const dataDir = path.join(await makeTempDir("direct-recovery"), "data");
    const result = await restoreToRestorePoint(s.env.configPath, site, dataDir, "rp1");
    return { dataDir, stdout: result.stdout };
  }

  /** pg_ctl start on the restored directory (its own port; no archiving into the live site). */
  async function startRestored(dataDir: string): Promise<PgCluster> {
    const cluster = await startCluster({ dataDir, noStart: true, settings: { archive_mode: "off" } });
    clusters.push(cluster);
    await cluster.start();
    return cluster;
  }

  async function assertRecovered(cluster: PgCluster): Promise<void> {
    await cluster.waitForRecoveryEnd(300_000);
    assert.deepEqual((await cluster.query(SNAPSHOT_SQL))[0], expected);
    const log = await cluster.logContents();
    assert.match(log, /recovery stopping at restore point "rp1"/);
    // recovery_end_command ran: no read-ahead file (nor download temp file) is left in pg_wal.
    const leftovers = (await readdir(path.join(cluster.dataDir, "pg_wal"))).filter((n) => n.includes(".pghoard."));
    assert.deepEqual(leftovers, []);
    await cluster.stop();
  }

  it("recovers to the restore point while the config's daemon runs for the live cluster", async () => {
    const { dataDir, stdout } = await restore();
    assert.match(stdout, /straight from the object storage \(no pghoard daemon needed\)/);
    const autoConf = await readFile(path.join(dataDir, "postgresql.auto.conf"), "utf8");
    const bin = path.join(repoRoot, "bin", "pghoard_postgres_command.js");
    assert.ok(
      autoConf.includes(
        `restore_command = '${process.execPath} ${bin} --mode restore --config ${s.env.configPath} --site ${SITE} --output %p --xlog %f'`,
      ),
      autoConf,
    );
    assert.ok(autoConf.includes(`recovery_end_command = '${process.execPath} ${bin} --mode cleanup'`), autoConf);
    await assertRecovered(await startRestored(dataDir));
    // Never through the live daemon (it would have refused with a logged 400: the target is not its pg_data_directory).
    assert.doesNotMatch(s.daemon.logs(), /GET \/live\/archive/);
  });

  it("recovers the same with no daemon running at all", async () => {
    await s.daemon.stop();
    const { dataDir } = await restore();
    await assertRecovered(await startRestored(dataDir));
  });

  it("a restore_command naming a site the config does not have fails recovery loudly", async () => {
    const { dataDir } = await restore();
    const autoConf = path.join(dataDir, "postgresql.auto.conf");
    await writeFile(autoConf, (await readFile(autoConf, "utf8")).replace(`--site ${SITE} `, "--site nosuch "));
    const cluster = await startCluster({ dataDir, noStart: true, settings: { archive_mode: "off" } });
    clusters.push(cluster);
    await assert.rejects(async () => {
      await cluster.start();
      await cluster.waitForRecoveryEnd(120_000);
    });
    const log = await cluster.logContents();
    assert.match(log, /ERROR: Restore failed: Site 'nosuch' not defined in configuration file/);
    assert.match(log, /FATAL/);
  });
});
