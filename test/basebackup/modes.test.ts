/**
 * Every basebackup mode end to end on a real PostgreSQL 15: the daemon archives WAL through
 * archive_command and takes the backup on request while pgbench writes; pghoard_restore restores
 * it; PostgreSQL recovers with restore_command served by the daemon to a restore point created
 * after the backup, and the data is exactly that of the restore point.
 */
import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import type { DaemonProcess } from "../daemon/helpers.js";
import type { PgCluster } from "../helpers/pgcluster.js";
import {
  makeRestorePoint,
  prepareData,
  requestBackup,
  restoreAndRecover,
  SNAPSHOT_SQL,
  startScenario,
  TS_SQL,
  type Scenario,
} from "./helpers.js";

const MODES: Array<{ mode: string; tablespace: boolean; extra?: Record<string, unknown> }> = [
  {
    mode: "local-tar",
    tablespace: true,
    extra: { basebackup_chunk_size: 4 * 1024 * 1024, basebackup_threads: 2, basebackup_chunks_in_progress: 2 },
  },
  {
    mode: "delta",
    tablespace: true,
    extra: {
      basebackup_delta_mode_min_delta_file_size: 1024 * 1024,
      basebackup_delta_mode_chunk_size: 4 * 1024 * 1024,
      basebackup_threads: 2,
    },
  },
  { mode: "basic", tablespace: false },
  { mode: "pipe", tablespace: false },
  { mode: "local-tar-delta-stats", tablespace: false, extra: { basebackup_chunk_size: 8 * 1024 * 1024 } },
];

// BB_MODES=local-tar,delta runs a subset (development)
const only = process.env.BB_MODES?.split(",");

for (const { mode, tablespace, extra } of MODES.filter((m) => !only || only.includes(m.mode))) {
  describe(`basebackup mode ${mode}`, { timeout: 600_000 }, () => {
    let s: Scenario | undefined;
    let restored: PgCluster | undefined;
    let restoreDaemon: DaemonProcess | undefined;
    after(async () => {
      await restored?.destroy().catch(() => undefined);
      await restoreDaemon?.stop().catch(() => undefined);
      await s?.cleanup();
    });

    it(`backs up under pgbench load and restores to a named restore point${tablespace ? " (with a user tablespace)" : ""}`, async () => {
      s = await startScenario({
        site: `bb-${mode}`,
        siteExtra: { basebackup_mode: mode, ...extra },
        configExtra: { compression: { algorithm: mode === "pipe" ? "snappy" : "zstd", thread_count: 2 } },
        tablespace,
      });
      await prepareData(s, 3, tablespace);
      // writes keep going while the backup reads the files
      const load = s.cluster.pgbench(["-c", "2", "-T", "6", "-n"]);
      const backup = await requestBackup(s);
      await load;
      const md = backup.metadata;
      assert.equal(md["basebackup-mode"], mode);
      assert.equal(md["backup-reason"], "requested");
      assert.equal(md["active-backup-mode"], "archive_command");
      assert.equal(md["encryption-key-id"], s.keyId);
      assert.match(md["start-wal-segment"], /^[0-9A-F]{24}$/);
      assert.match(md["start-time"], /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00$/);
      assert.equal(md.site, s.site);
      if (mode === "basic" || mode === "pipe") {
        assert.equal(md.format, undefined);
      } else {
        assert.equal(md.format, mode === "delta" ? "pghoard-delta-v2" : "pghoard-bb-v2");
        assert.ok(backup.name.endsWith(".00000000.pghoard"));
        assert.match(md["end-wal-segment"], /^[0-9A-F]{24}$/);
        assert.ok(Number(md["total-size-plain"]) > 40 * 1024 * 1024);
      }
      const { expected, expectedTs } = await makeRestorePoint(s, tablespace);
      ({ cluster: restored, daemon: restoreDaemon } = await restoreAndRecover(s, "rp1"));
      assert.deepEqual((await restored.query(SNAPSHOT_SQL))[0], expected);
      if (tablespace) assert.deepEqual((await restored.query(TS_SQL))[0], expectedTs);
      assert.match(await restored.logContents(), /recovery stopping at restore point "rp1"/);
    });
  });
}
