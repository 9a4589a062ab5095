/**
 * One daemon per config / backup_location: a second start refuses before touching anything (the
 * first daemon's pg_receivewal keeps running and streaming), and a lock left by a dead process
 * does not block a restart.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { PidLock, LockHeldError } from "../../src/common/pid_lock.js";
import { makeTempDir, startCluster, type PgCluster } from "../helpers/pgcluster.js";
import { pghoardBin, type DaemonEnv, type DaemonProcess } from "./helpers.js";
import {
  makeStreamingEnv,
  receivewalPid,
  startDaemon,
  storedWal,
  switchWal,
  waitFor,
  waitForStored,
  writeLoad,
} from "../wal/streaming.js";

const SITE = "locktest";

function runPghoard(args: string[], cwd: string): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [pghoardBin, ...args], { cwd, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (d: Buffer) => (output += d.toString()));
    child.stderr.on("data", (d: Buffer) => (output += d.toString()));
    child.once("error", reject);
    child.once("close", (code) => resolve({ code, output }));
  });
}

describe("a second daemon on the same config", { timeout: 300_000 }, () => {
  let cluster: PgCluster;
  let env: DaemonEnv;
  let daemon: DaemonProcess | undefined;

  before(async () => {
    cluster = await startCluster({ settings: { wal_keep_size: "1GB", max_wal_size: "2GB" } });
    env = await makeStreamingEnv(cluster, SITE, "pg_receivexlog");
  });

  after(async () => {
    await daemon?.stop();
    await cluster?.destroy();
  });

  it("refuses with one line and exit 1, leaving the first daemon's pg_receivewal streaming", async () => {
    daemon = await startDaemon(env);
    const pid = await waitFor(
      "pg_receivewal running",
      () => receivewalPid(env, SITE).then((p) => p ?? undefined),
      30_000,
      () => daemon!.logs(),
    );

    const second = await runPghoard(["--config", env.configPath], env.dir);
    assert.equal(second.code, 1, second.output);
    const lines = second.output.trim().split("\n");
    assert.equal(lines.length, 1, `expected one line, got:\n${second.output}`);
    assert.match(lines[0], /another pghoard \(PID \d+\) is already running with config file/);
    assert.doesNotMatch(second.output, /EADDRINUSE|terminating pg_receivewal|\n\s+at /);

    // The same backup_location under another config file is refused too.
    const otherConfig = path.join(env.dir, "other.json");
    await writeFile(otherConfig, JSON.stringify({ ...env.config, http_port: 1 }));
    const third = await runPghoard(["--config", otherConfig], env.dir);
    assert.equal(third.code, 1, third.output);
    assert.match(third.output, /already running with backup_location /);
    assert.equal(third.output.trim().split("\n").length, 1, third.output);

    assert.equal(await receivewalPid(env, SITE), pid, "the first daemon's pg_receivewal was not touched");
    assert.doesNotMatch(daemon.logs(), /terminating pg_receivewal/);
    // Still streaming: a new segment reaches storage.
    const before = (await storedWal(env, SITE)).length;
    await writeLoad(cluster, 100);
    const name = await switchWal(cluster);
    await waitForStored(env, SITE, name, daemon);
    assert.ok((await storedWal(env, SITE)).length > before);
    assert.equal(await receivewalPid(env, SITE), pid);
    assert.equal(daemon.child.exitCode, null, "first daemon still running");
  });
});

describe("PidLock", () => {
  it("is exclusive while the holder lives and taken over from a dead holder", async () => {
    const dir = await makeTempDir("pghoard-pidlock");
    const file = path.join(dir, "x.lock");
    // A live holder: this test's parent process (PID 1 is always alive too, but may be us in a container).
    await writeFile(file, `${process.ppid} -\n`);
    await assert.rejects(PidLock.acquire(file, "thing"), (err: unknown) => {
      assert.ok(err instanceof LockHeldError);
      assert.equal(err.holderPid, process.ppid);
      assert.match(err.message, /already running with thing \(lock file .*x\.lock\)/);
      return true;
    });
    assert.equal(await readFile(file, "utf8"), `${process.ppid} -\n`, "a live holder's lock is untouched");

    // A dead holder: a process that has exited.
    const dead = spawn(process.execPath, ["-e", ""]);
    const deadPid = dead.pid!;
    await new Promise((r) => dead.once("close", r));
    await writeFile(file, `${deadPid} 12345\n`);
    const lock = await PidLock.acquire(file, "thing");
    assert.match(await readFile(file, "utf8"), new RegExp(`^${process.pid} `));
    lock.release();
    assert.equal(existsSync(file), false, "released");

    // A live PID with another start time: the PID was reused, the lock is stale.
    await writeFile(file, `${process.ppid} 1\n`);
    const again = await PidLock.acquire(file, "thing");
    again.release();
  });
});
