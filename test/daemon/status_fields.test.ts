/**
 * What an operator reads in /status, /metrics and the log: `last_success` (upstream's monotonic
 * seconds) has a wall-clock `last_success_time` beside it; `pghoard_total_upload_size` counts
 * uploads only (not the size of a basebackup listing); restore_command's probe for a history file
 * that is not in the archive (normal during recovery) logs no WARNING and no `FAILED`; a served
 * segment is one `Renamed` line at INFO; the segment pg_receivewal keeps in xlog_incoming is not
 * uploaded again at each restart.
 */
import assert from "node:assert/strict";
import { rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { parseExposition } from "../monitoring/exposition.js";
import {
  DaemonProcess,
  httpRequest,
  makeDaemonEnv,
  makeFakePgdata,
  sleep,
  syntheticSegment,
  type DaemonEnv,
} from "./helpers.js";

const SITE = "fields";
const SEG = "000000010000000000000003";
const SEG_DATA = syntheticSegment(SEG);

describe("status fields and quiet probes", { timeout: 120_000 }, () => {
  let env: DaemonEnv;
  let daemon: DaemonProcess | undefined;
  let pgdata: string;

  before(async () => {
    pgdata = await makeFakePgdata();
    env = await makeDaemonEnv({ [SITE]: { pgDataDirectory: pgdata } }, { prometheus: {} });
    await writeFile(path.join(pgdata, "pg_wal", SEG), SEG_DATA);
    daemon = await DaemonProcess.start(env);
    const put = await httpRequest(env.port, "PUT", `/${SITE}/archive/${SEG}`);
    assert.equal(put.status, 201, put.body);
  });

  after(async () => {
    await daemon?.stop();
  });

  it("/status has a wall-clock last_success_time beside the monotonic last_success", async () => {
    const before = Date.now();
    let entry: { last_success: number | null; last_success_time?: string } | undefined;
    for (let i = 0; i < 100 && !entry?.last_success; i++) {
      await sleep(100);
      const res = await httpRequest(env.port, "GET", "/status");
      if (res.status !== 200) continue;
      const state = JSON.parse(res.body) as {
        transfer_agent_state: Record<string, { upload: Record<string, typeof entry> }>;
      };
      entry = state.transfer_agent_state[SITE]?.upload.xlog;
    }
    assert.equal(typeof entry?.last_success, "number");
    const when = Date.parse(entry!.last_success_time ?? "");
    assert.ok(Number.isFinite(when), `last_success_time: ${entry!.last_success_time}`);
    assert.ok(when <= Date.now() && when > before - 60_000, entry!.last_success_time);
  });

  it("pghoard_total_upload_size counts uploads, not a basebackup listing", async () => {
    const list = await httpRequest(env.port, "GET", `/${SITE}/basebackup`);
    assert.equal(list.status, 200);
    const metrics = parseExposition((await httpRequest(env.port, "GET", "/metrics")).body);
    const samples = metrics.get("pghoard_total_upload_size")?.samples ?? [];
    const byType = (type: string) => samples.filter((s) => s.labels.type === type);
    assert.equal(byType("xlog").length, 1, JSON.stringify(samples));
    assert.ok(byType("xlog")[0].value > 0);
    assert.deepEqual(byType("basebackup"), [], "a listing is no upload");
  });

  it("a history file missing from the archive logs no WARNING and no FAILED", async () => {
    const offset = daemon!.logs().length;
    for (const name of ["00000002.history", "00000003.history"]) {
      const res = await httpRequest(env.port, "GET", `/${SITE}/archive/${name}`, {
        "x-pghoard-target-path": path.join(pgdata, "pg_wal", "RECOVERYHISTORY"),
      });
      assert.equal(res.status, 404, res.body);
    }
    await sleep(300);
    const lines = daemon!.logs().slice(offset).split("\n").filter(Boolean);
    assert.deepEqual(
      lines.filter((l) => /\t(WARNING|ERROR)\t|FAILED/.test(l)),
      [],
    );
  });

  it("a segment served to restore_command is one Renamed line", async () => {
    // Not on disk: the daemon downloads it (to a prefetch file) and serves it.
    await rm(path.join(pgdata, "pg_wal", SEG), { force: true });
    const offset = daemon!.logs().length;
    const target = path.join(pgdata, "pg_wal", "RECOVERYXLOG");
    const res = await httpRequest(env.port, "GET", `/${SITE}/archive/${SEG}`, { "x-pghoard-target-path": target });
    assert.equal(res.status, 201, res.body);
    await sleep(300);
    const renamed = daemon!
      .logs()
      .slice(offset)
      .split("\n")
      .filter((l) => /\tINFO\t.*Renamed/.test(l));
    assert.equal(renamed.length, 1, renamed.join("\n"));
  });

  it("a segment left in xlog_incoming that storage already holds is not uploaded again at restart", async () => {
    // pg_receivexlog mode keeps the newest completed segment there for pg_receivewal to resume from.
    await daemon!.stop();
    await writeFile(path.join(env.backupLocation, SITE, "xlog_incoming", SEG), SEG_DATA);
    daemon = await DaemonProcess.start(env, { logName: "daemon2.log" });
    // The start-up walk runs after the HTTP server answers: wait for its verdict on the segment.
    const verdict = new RegExp(`${SEG} (is already in storage with the same hash|when starting up)|UPLOAD transfer`);
    for (let i = 0; i < 100 && !verdict.test(daemon.logs()); i++) await sleep(100);
    await daemon.waitForLog(new RegExp(`${SEG} is already in storage with the same hash, not uploading it again`));
    await sleep(1000);
    assert.doesNotMatch(daemon.logs(), new RegExp(`UPLOAD transfer of key: \\S*${SEG}`));
  });
});
