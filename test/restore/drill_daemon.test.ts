/**
 * Scheduled restore drills in the real daemon: with `restore_drill_interval_hours` set to a few
 * seconds, the daemon drills its own backup of a real PostgreSQL 15 cluster; the result lands in
 * `GET /status` (the state file) and `GET /metrics`; a corrupted WAL object makes the next drill
 * fail and raises the `restore_drill_error` alert, repairing it clears the alert with the next
 * successful drill; no scratch directory is left behind.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { readdir } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";

import { prepareData, requestBackup, startScenario, type Scenario } from "../basebackup/helpers.js";
import { httpRequest, sleep } from "../daemon/helpers.js";
import type { DrillState } from "../../src/restore/drill_daemon.js";
import { archiveMore, corruptSegmentBefore } from "./drill_helpers.js";

const SITE = "drill-daemon";

async function drillState(s: Scenario): Promise<DrillState | undefined> {
  const res = await httpRequest(s.env.port, "GET", "/status");
  if (res.status !== 200) return undefined;
  const state = JSON.parse(res.body) as { restore_drills?: Record<string, DrillState> };
  return state.restore_drills?.[SITE];
}

/** Waits for the result of a drill that started after `since`. */
async function nextResult(
  s: Scenario,
  since: number,
  timeoutMs = 300_000,
): Promise<NonNullable<DrillState["last_result"]>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const state = await drillState(s);
    const result = state?.last_result;
    if (result?.started_at && Date.parse(result.started_at) > since) return result;
    if (Date.now() > deadline) {
      throw new Error(`no drill result in time: ${JSON.stringify(state)}\n${s.daemon.logs().slice(-4000)}`);
    }
    await sleep(500);
  }
}

async function metric(s: Scenario, name: string): Promise<number | undefined> {
  const res = await httpRequest(s.env.port, "GET", "/metrics");
  assert.equal(res.status, 200);
  const line = res.body.split("\n").find((l) => l.startsWith(`${name}{`) && l.includes(`site="${SITE}"`));
  return line === undefined ? undefined : Number(line.split(" ").at(-1));
}

describe("scheduled restore drills in the daemon", { timeout: 1_200_000 }, () => {
  let s: Scenario;
  let newest: string;
  const alertFile = (): string => path.join(s.env.alertDir, "restore_drill_error");

  before(async () => {
    s = await startScenario({
      site: SITE,
      siteExtra: { basebackup_mode: "local-tar", restore_drill_interval_hours: 0.001 },
      configExtra: { prometheus: {} },
    });
    await prepareData(s, 1, false);
    // No backup yet: no drill (and no alert) however often the schedule comes round.
    await sleep(6000);
    assert.equal((await drillState(s))?.last_result ?? null, null);
    assert.equal(existsSync(alertFile()), false);
    await requestBackup(s);
    newest = await archiveMore(s, 3);
  });
  after(async () => {
    await s?.cleanup();
  });

  it("runs drills on schedule and reports them in /status, /metrics and the alert file", async () => {
    const t0 = Date.now();
    const ok = await nextResult(s, t0);
    assert.equal(ok.success, true, ok.error ?? "");
    assert.equal(ok.wal?.last_segment, newest);
    assert.ok((ok.timings?.total_seconds ?? 0) > 0);
    assert.equal(await metric(s, "pghoard_restore_drill_success"), 1);
    assert.ok(((await metric(s, "pghoard_restore_drill_seconds")) ?? 0) > 0);
    assert.ok(((await metric(s, "pghoard_restore_drill_wal_segments")) ?? 0) >= 4);
    assert.equal(existsSync(alertFile()), false);

    const { victim, repair } = await corruptSegmentBefore(s, newest);
    const broken = Date.now();
    const failed = await nextResult(s, broken);
    assert.equal(failed.success, false);
    assert.equal(failed.failed_segment, victim);
    assert.match(failed.error ?? "", new RegExp(victim));
    assert.equal(await metric(s, "pghoard_restore_drill_success"), 0);
    assert.equal(existsSync(alertFile()), true, "restore_drill_error alert raised");

    await repair();
    const repaired = Date.now();
    const again = await nextResult(s, repaired);
    assert.equal(again.success, true, again.error ?? "");
    assert.equal(await metric(s, "pghoard_restore_drill_success"), 1);
    assert.equal(existsSync(alertFile()), false, "restore_drill_error alert cleared");

    // The drills ran beside backup_location; every scratch directory is gone.
    await s.daemon.stop();
    const left = (await readdir(s.env.dir)).filter((n) => n.startsWith("pghoard-drill-"));
    assert.deepEqual(left, []);
  });
});
