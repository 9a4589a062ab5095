/**
 * `pghoard_restore drill` as an operator runs it, on real backups the daemon took of a real
 * PostgreSQL 15 cluster: local-tar (encrypted, with a tablespace) and delta (not encrypted)
 * restore, recover with WAL fetched straight from the store and report their timings; a
 * corrupted WAL segment fails the drill (exit 1) naming that segment; Ctrl-C stops it; nothing is
 * left in the scratch directory either way.
 */
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { promisify } from "node:util";
import { readdir, rmdir } from "node:fs/promises";
import { after, before, describe, it } from "node:test";

import { prepareData, requestBackup, restoreBin, startScenario, type Scenario } from "../basebackup/helpers.js";
import { listStoredNames } from "../daemon/helpers.js";
import { makeTempDir, runAsPostgres } from "../helpers/pgcluster.js";
import { newestSegment, parseServerLog, type DrillReport } from "../../src/restore/drill.js";
import { archiveMore, corruptSegmentBefore } from "./drill_helpers.js";
import { runRestoreCli } from "./helpers.js";

const execFileAsync = promisify(execFile);

async function drill(
  s: Scenario,
  scratch: string,
  extra: string[] = [],
): Promise<{ code: number; report: DrillReport; stdout: string }> {
  const res = await runRestoreCli([
    "drill",
    "--config",
    s.env.configPath,
    "--site",
    s.site,
    "--scratch-dir",
    scratch,
    "--json",
    ...extra,
  ]);
  let report: DrillReport;
  try {
    report = JSON.parse(res.stdout) as DrillReport;
  } catch {
    throw new Error(`drill printed no JSON (exit ${res.code}):\n${res.stdout}\n${res.stderr}`);
  }
  return { code: res.code, report, stdout: res.stdout + res.stderr };
}

/** The drill left nothing in `dir`; then the test removes `dir` itself. */
async function assertEmpty(dir: string, remove = true): Promise<void> {
  assert.deepEqual(await readdir(dir), [], `scratch directory ${dir} is not empty`);
  if (remove) await rmdir(dir);
}

describe("pghoard_restore drill", { timeout: 900_000 }, () => {
  describe("local-tar, encrypted, with a tablespace", () => {
    let s: Scenario;
    let newest: string;
    let backupName: string;
    before(async () => {
      s = await startScenario({
        site: "drill-lt",
        siteExtra: { basebackup_mode: "local-tar", basebackup_chunk_size: 4 * 1024 * 1024 },
        tablespace: true,
      });
      await prepareData(s, 1, true);
      backupName = `${s.site}/basebackup/${(await requestBackup(s)).name}`;
      newest = await archiveMore(s, 3);
    });
    after(async () => {
      await s?.cleanup();
    });

    it("restores, recovers to the newest archived segment, checks and reports its timings", async (t) => {
      const scratch = await makeTempDir("drill-scratch");
      const { code, report, stdout } = await drill(s, scratch);
      t.diagnostic(`timings ${JSON.stringify(report.timings)} wal ${JSON.stringify(report.wal)}`);
      assert.equal(code, 0, stdout);
      assert.equal(report.success, true, report.error ?? "");
      assert.equal(report.basebackup, backupName);
      assert.equal(report.wal.newest_archived_segment, newest);
      assert.equal(report.wal.last_segment, newest);
      assert.ok(report.wal.segments_replayed >= 4, `segments ${report.wal.segments_replayed}`);
      assert.ok((report.wal.bytes_replayed ?? 0) > 3 * 16 * 1024 * 1024);
      assert.equal(report.recovered.in_recovery, false);
      assert.ok((report.recovered.pg_class_rows ?? 0) > 300);
      assert.equal(report.recovered.timeline, 2);
      for (const t of ["download_extract_seconds", "wal_replay_seconds", "checks_seconds"] as const) {
        assert.ok((report.timings[t] ?? -1) >= 0, t);
      }
      assert.ok(
        report.timings.total_seconds >=
          (report.timings.download_extract_seconds ?? 0) + (report.timings.wal_replay_seconds ?? 0),
      );
      assert.ok((report.basebackup_stored_bytes ?? 0) > 0);
      await assertEmpty(scratch);
      // The source cluster and its tablespace are untouched and its archive got nothing from the drill.
      const [row] = await s.cluster.query<{ n: string }>("SELECT count(*)::text AS n FROM ts_t");
      assert.equal(row.n, "5000");
      const timelines = await listStoredNames(s.env.storageDir, s.site, "timeline");
      assert.deepEqual(timelines, [], "the drill must not archive its new timeline");
    });

    it("recovers to a recovery target and promotes there", async () => {
      const scratch = await makeTempDir("drill-scratch");
      const { code, report, stdout } = await drill(s, scratch, ["--recovery-target-immediate"]);
      assert.equal(code, 0, stdout);
      assert.equal(report.success, true, report.error ?? "");
      assert.deepEqual(report.recovery_target?.immediate, true);
      assert.equal(report.recovered.in_recovery, false);
      // Consistent right after the backup: far from the newest archived segment.
      assert.ok((report.wal.last_segment ?? "") < newest, `${report.wal.last_segment} < ${newest}`);
      await assertEmpty(scratch);
    });

    it("fails with exit 1 and names the segment when a WAL segment it needs is corrupt", async () => {
      const { victim, repair } = await corruptSegmentBefore(s, newest);
      try {
        const scratch = await makeTempDir("drill-scratch");
        const { code, report, stdout } = await drill(s, scratch);
        assert.equal(code, 1, stdout);
        assert.equal(report.success, false);
        assert.equal(report.failed_segment, victim);
        assert.match(report.error ?? "", new RegExp(victim));
        await assertEmpty(scratch, false);

        // Human output: the report, then upstream's FATAL line with the reason.
        const human = await runRestoreCli([
          "drill",
          "--config",
          s.env.configPath,
          "--site",
          s.site,
          "--scratch-dir",
          scratch,
        ]);
        assert.equal(human.code, 1);
        assert.match(human.stdout, /Restore drill of site 'drill-lt': FAILED/);
        assert.match(human.stdout, new RegExp(`FATAL: RestoreError: .*${victim}`));
        await assertEmpty(scratch);
      } finally {
        await repair();
      }
    });

    it("refuses, touching nothing, when the scratch file system has no room for the backup", async (t) => {
      const small = await makeTempDir("drill-small");
      try {
        await execFileAsync("mount", ["-t", "tmpfs", "-o", "size=16m", "tmpfs", small]);
      } catch (err) {
        t.skip(`cannot mount a small tmpfs here: ${(err as Error).message.split("\n")[0]}`);
        return;
      }
      try {
        const { code, report } = await drill(s, small);
        assert.equal(code, 1);
        assert.match(
          report.error ?? "",
          /^Not enough free space in '.*' for a drill of .*: \d+ MiB needed, \d+ MiB free/,
        );
        assert.equal(report.timings.download_extract_seconds, null);
        await assertEmpty(small, false);
      } finally {
        await execFileAsync("umount", [small]);
        await rmdir(small);
      }
    });

    it("stops PostgreSQL and removes everything on Ctrl-C", async () => {
      const scratch = await makeTempDir("drill-scratch");
      const child = spawn(
        process.execPath,
        [restoreBin, "drill", "--config", s.env.configPath, "--site", s.site, "--scratch-dir", scratch],
        {
          stdio: ["ignore", "pipe", "pipe"],
        },
      );
      let out = "";
      child.stdout.on("data", (d: Buffer) => (out += d.toString()));
      child.stderr.on("data", (d: Buffer) => (out += d.toString()));
      const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
      // Interrupt once the server runs (or, on a fast machine, at least while restoring).
      const deadline = Date.now() + 60_000;
      while (!/Starting PostgreSQL/.test(out) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      child.kill("SIGINT");
      assert.equal(await exited, 1, out);
      assert.match(out, /interrupted by keyboard/);
      await assertEmpty(scratch);
    });
  });

  describe("delta, not encrypted", () => {
    let s: Scenario;
    let newest: string;
    before(async () => {
      s = await startScenario({
        site: "drill-delta",
        siteExtra: { basebackup_mode: "delta", encryption_key_id: null },
      });
      await prepareData(s, 1, false);
      await requestBackup(s);
      newest = await archiveMore(s, 2);
    });
    after(async () => {
      await s?.cleanup();
    });

    it("restores and recovers a delta backup", async () => {
      const scratch = await makeTempDir("drill-scratch");
      const { code, report, stdout } = await drill(s, scratch);
      assert.equal(code, 0, stdout);
      assert.equal(report.success, true);
      assert.equal(report.wal.last_segment, newest);
      assert.ok((report.recovered.pg_class_rows ?? 0) > 300);
      await assertEmpty(scratch);
    });

    it("gives up after --timeout, stops PostgreSQL and removes everything", async () => {
      const scratch = await makeTempDir("drill-scratch");
      const { code, report, stdout } = await drill(s, scratch, ["--timeout", "4"]);
      assert.equal(code, 1, stdout);
      assert.equal(report.error, "The drill did not finish within --timeout 4 s");
      assert.equal(report.failed_segment, null);
      await assertEmpty(scratch);
    });

    it("runs as a non-root user (PostgreSQL as that user)", async (t) => {
      if (!runAsPostgres) {
        t.skip("the tests already run as a non-root user");
        return;
      }
      const scratch = await makeTempDir("drill-scratch");
      const args = ["drill", "--config", s.env.configPath, "--site", s.site, "--scratch-dir", scratch, "--json"];
      const { stdout } = await execFileAsync(
        "runuser",
        ["-u", "postgres", "--", process.execPath, restoreBin, ...args],
        {
          maxBuffer: 16 * 1024 * 1024,
        },
      );
      const report = JSON.parse(stdout) as DrillReport;
      assert.equal(report.success, true, report.error ?? "");
      assert.equal(report.wal.last_segment, newest);
      await assertEmpty(scratch);
    });
  });
});

describe("drill helpers", () => {
  it("finds the newest segment of the newest timeline", () => {
    assert.equal(
      newestSegment([
        "000000010000000000000009",
        "000000020000000000000007",
        "000000020000000000000008",
        "00000002.history",
      ]),
      "000000020000000000000008",
    );
    assert.equal(newestSegment(["00000002.history"]), null);
  });

  it("reads restored segments, the end of redo and the last transaction from the server log", () => {
    const log = parseServerLog(
      [
        '2026-12-05 23:50:01.100 UTC [12] LOG:  restored log file "000000010000000000000003" from archive',
        '2026-12-05 23:50:01.200 UTC [12] LOG:  restored log file "000000010000000000000004" from archive',
        '2026-12-05 23:50:01.300 UTC [12] LOG:  restored log file "000000010000000000000004" from archive',
        "2026-12-05 23:50:01.400 UTC [12] LOG:  redo done at 0/4000110 system usage: CPU: user: 0.00 s",
        "2026-12-05 23:50:01.400 UTC [12] LOG:  last completed transaction was at log time 2026-12-05 23:49:00.5+00",
      ].join("\n"),
    );
    assert.deepEqual(log.restored, ["000000010000000000000003", "000000010000000000000004"]);
    assert.equal(log.redoDoneLsn, "0/4000110");
    assert.equal(log.lastTransactionTime, "2026-12-05 23:49:00.5+00");
  });
});
