/**
 * The direct restore_command across a timeline switch: the live cluster is replaced by a
 * point-in-time restore of itself (direct mode) that is promoted, so the site's archive holds
 * `00000002.history` and timeline-2 WAL; restoring the timeline-1 basebackup to a restore point
 * made on timeline 2 must follow the switch, as through the daemon.
 */
import assert from "node:assert/strict";
import { readdir, rename, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";

import { prepareData, requestBackup, SNAPSHOT_SQL, startScenario, type Scenario } from "../basebackup/helpers.js";
import { postgresCommandBin, switchWal, waitArchived } from "../daemon/helpers.js";
import { makeTempDir, startCluster, type PgCluster } from "../helpers/pgcluster.js";
import { restoreToRestorePoint } from "./helpers.js";

const SITE = "tlswitch";

describe("direct restore_command across a timeline switch", { timeout: 900_000 }, () => {
  let s: Scenario;
  let expected: Record<string, unknown>;
  let restored: PgCluster | undefined;
  let promoted: PgCluster | undefined;

  /** get-basebackup of the site's (only) backup: the direct restore_command. */
  const getBasebackup = async (dataDir: string, restorePoint: string, config = s.env.configPath): Promise<void> => {
    await restoreToRestorePoint(config, SITE, dataDir, restorePoint);
  };

  before(async () => {
    s = await startScenario({ site: SITE, siteExtra: {}, configExtra: { restore_prefetch: 2 } });
    await prepareData(s, 1, false);
    await requestBackup(s);
    const c = s.cluster;
    await c.query("INSERT INTO marker SELECT i, 'tl1' FROM generate_series(1001, 1100) i");
    await c.query("SELECT pg_create_restore_point('tl1-point')");
    await c.query("INSERT INTO marker SELECT i, 'abandoned' FROM generate_series(5001, 5100) i");
    await waitArchived(c, await switchWal(c));

    // The live cluster is replaced by a point-in-time restore of itself (same directory, so the
    // daemon archives its WAL as before): back to tl1-point, then timeline 2.
    await c.stop();
    await rename(c.dataDir, `${c.dataDir}.old`);
    // (With a copy of the config where the site is not active: a restore into an active site's
    // pg_data_directory is refused; here it is what the operator means.)
    const copy = structuredClone(s.env.config) as { backup_sites: Record<string, Record<string, unknown>> };
    copy.backup_sites[SITE].active = false;
    const copyPath = path.join(s.env.dir, "inplace.json");
    await writeFile(copyPath, JSON.stringify(copy));
    await getBasebackup(c.dataDir, "tl1-point", copyPath);
    promoted = await startCluster({
      dataDir: c.dataDir,
      noStart: true,
      archiveCommand: `${process.execPath} ${postgresCommandBin} --mode archive --port ${s.env.port} --site ${SITE} --xlog %f`,
    });
    await promoted.start();
    await promoted.waitForRecoveryEnd(300_000);
    const p = promoted;
    const [{ tli }] = await p.query<{ tli: string }>("SELECT timeline_id::text AS tli FROM pg_control_checkpoint()");
    assert.equal(tli, "2");
    // The old timeline's last segment is offered as `<seg>.partial`, which archive_command mode
    // does not take (exit 3, and PostgreSQL would retry it before anything else): not the subject here.
    const statusDir = path.join(p.dataDir, "pg_wal", "archive_status");
    for (const f of (await readdir(statusDir)).filter((n) => n.endsWith(".partial.ready"))) {
      await rename(path.join(statusDir, f), path.join(statusDir, f.replace(/\.ready$/, ".done")));
    }

    await p.query("INSERT INTO marker SELECT i, 'tl2' FROM generate_series(2001, 2100) i");
    await p.pgbench(["-n", "-c", "2", "-t", "200"]);
    expected = (await p.query(SNAPSHOT_SQL))[0];
    await p.query("SELECT pg_create_restore_point('tl2-point')");
    await p.query("INSERT INTO marker SELECT i, 'too-late' FROM generate_series(3001, 3100) i");
    await waitArchived(p, await switchWal(p));
  });

  after(async () => {
    await restored?.destroy().catch(() => undefined);
    await promoted?.destroy().catch(() => undefined);
    await s?.cleanup();
  });

  it("restores the timeline-1 backup to a restore point on timeline 2", async () => {
    const dataDir = path.join(await makeTempDir("direct-timeline"), "data");
    await getBasebackup(dataDir, "tl2-point");
    restored = await startCluster({ dataDir, noStart: true, settings: { archive_mode: "off" } });
    await restored.start();
    await restored.waitForRecoveryEnd(300_000);
    assert.deepEqual((await restored.query(SNAPSHOT_SQL))[0], expected);
    const log = await restored.logContents();
    assert.match(log, /recovery stopping at restore point "tl2-point"/);
    assert.match(log, /selected new timeline ID: 3/);
  });
});
