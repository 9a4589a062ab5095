/**
 * SIGKILL loop in CI: 16 kills by default across archive_command (with basebackups running),
 * pg_receivewal and walreceiver modes (`PGHOARD_KILLS` sets the total; `PGHOARD_KILLS=50` takes
 * 6-12 minutes on the 2-core machine, beyond CI's budget); bench/soak.ts runs the same loop with
 * 50 kills per mode by default. See test/faults/kill_loop.ts for what is checked.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { runKillLoop, type KillMode, type KillResult } from "./kill_loop.js";

const TOTAL = Number(process.env.PGHOARD_KILLS ?? 15);
const SHARE: Record<KillMode, number> = { archive_command: 0.4, pg_receivexlog: 0.3, walreceiver: 0.3 };
const results: KillResult[] = [];

// The modes run side by side: most of the time goes to waiting for restarts and PostgreSQL.
describe("SIGKILL loop under write load", { concurrency: 3, timeout: 900_000 }, () => {
  for (const mode of Object.keys(SHARE) as KillMode[]) {
    it(`${mode}: no acknowledged segment lost, nothing left behind`, async () => {
      const kills = Math.max(1, Math.round(TOTAL * SHARE[mode]));
      const result = await runKillLoop(mode, kills, (m) => console.log(`# ${m}`));
      results.push(result);
      assert.ok(result.segmentsChecked >= 3, `${mode}: only ${result.segmentsChecked} segments checked`);
      if (mode === "archive_command") assert.ok(result.killsDuringBasebackup >= 1, "no kill hit a basebackup");
      if (results.length === 3) {
        const total = results.reduce((a, r) => a + r.kills, 0);
        console.log(
          `# kills survived: ${total} (${results.map((r) => `${r.mode} ${r.kills}, ${r.segmentsChecked} segments checked${r.mode === "archive_command" ? `, ${r.killsDuringBasebackup} during a basebackup` : ""}`).join("; ")})`,
        );
      }
    });
  }
});
