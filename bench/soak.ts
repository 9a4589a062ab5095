/**
 * Soak run of the SIGKILL loop of test/faults/kill_loop.ts, longer than CI's: the daemon is
 * SIGKILLed at random moments under pgbench load in each WAL mode (archive_command with
 * basebackups running, pg_receivexlog, walreceiver), restarted each time, then checked (every
 * acknowledged segment stored byte for byte; nothing left behind after a clean start).
 *
 *   node dist/bench/soak.js [--kills N per mode, default 50] [--rounds R, default 1] [--modes a,b]
 *
 * Exits 1 on the first failed check. Prints kills survived and segments checked per mode.
 */
import { describeResult, runKillLoop, type KillMode, type KillResult } from "../test/faults/kill_loop.js";

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1]! : fallback;
}

const kills = Number(arg("kills", "50"));
const rounds = Number(arg("rounds", "1"));
const modes = arg("modes", "archive_command,pg_receivexlog,walreceiver").split(",") as KillMode[];
if (!(kills > 0) || !(rounds > 0)) {
  console.error("usage: soak.js [--kills N] [--rounds R] [--modes archive_command,pg_receivexlog,walreceiver]");
  process.exit(2);
}

const started = Date.now();
const results: KillResult[] = [];
for (let round = 1; round <= rounds; round++) {
  // Modes side by side, as in CI: each has its own cluster and daemon. Settled, not raced: a failed
  // mode must not leave the others' daemons and clusters running when the process exits.
  const settled = await Promise.allSettled(
    modes.map((mode) => runKillLoop(mode, kills, (m) => console.log(`round ${round}: ${m}`))),
  );
  const failed = settled.flatMap((r, i) => (r.status === "rejected" ? [`${modes[i]}: ${String(r.reason)}`] : []));
  for (const r of settled) if (r.status === "fulfilled") results.push(r.value);
  if (failed.length) {
    for (const r of results) console.log(describeResult(r));
    console.error(`FAILED in round ${round}:\n${failed.join("\n")}`);
    process.exit(1);
  }
}
const total = results.reduce((a, r) => a + r.kills, 0);
for (const r of results) console.log(describeResult(r));
for (const mode of modes) {
  const mine = results.filter((r) => r.mode === mode);
  const k = mine.reduce((a, r) => a + r.kills, 0);
  const segs = mine.reduce((a, r) => a + r.segmentsChecked, 0);
  const bb = mine.reduce((a, r) => a + r.killsDuringBasebackup, 0);
  console.log(
    `${mode}: ${k} kills survived, ${segs} segments checked byte for byte${bb ? `, ${bb} kills during a basebackup` : ""}`,
  );
}
console.log(`total: ${total} kills survived in ${((Date.now() - started) / 1000).toFixed(0)} s`);
