/**
 * SIGKILL loop in CI: 51 kills by default (`PGHOARD_KILLS` sets the total), a third each in
 * archive_command (with basebackups running), pg_receivexlog and walreceiver mode, the modes side
 * by side; bench/soak.ts runs the same loop with 50 kills per mode by default. See
 * test/faults/kill_loop.ts for the kill moments and what is checked.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { describeResult, runKillLoop, type KillMode, type KillResult } from "./kill_loop.js";

const TOTAL = Number(process.env.PGHOARD_KILLS ?? 51);
const MODES: KillMode[] = ["archive_command", "pg_receivexlog", "walreceiver"];
const results: KillResult[] = [];

// The modes run side by side: most of the time goes to waiting for restarts and PostgreSQL.
describe("SIGKILL loop under write load", { concurrency: 3, timeout: 900_000 }, () => {
  for (const mode of MODES) {
    it(`${mode}: no acknowledged segment lost, nothing left behind`, async () => {
      const kills = Math.max(2, Math.round(TOTAL / MODES.length));
      const result = await runKillLoop(mode, kills, (m) => console.log(`# ${m}`));
      results.push(result);
      assert.ok(result.segmentsChecked >= 3, `${mode}: only ${result.segmentsChecked} segments checked`);
      assert.ok(result.killsWhileWorking >= 1, `${mode}: no kill hit a working daemon`);
      if (mode === "archive_command") assert.ok(result.killsDuringBasebackup >= 1, "no kill hit a basebackup");
      else {
        // Every working kill waited for a receiver start, and so did the set-up and the last start.
        assert.ok(result.receiverStarts >= result.killsWhileWorking + 2, `${mode}: ${result.receiverStarts} starts`);
      }
      if (results.length === MODES.length) {
        const total = results.reduce((a, r) => a + r.kills, 0);
        console.log(`# kills survived: ${total} (${results.map(describeResult).join("; ")})`);
      }
    });
  }
});
