/**
 * pg_receivexlog mode end to end: the daemon runs the real pg_receivewal 15 against a real
 * PostgreSQL 15 primary with a replication slot, watches the spool and archives what it writes.
 * Also the start-up checks (alert files) and the disk-space guard (SIGSTOP/SIGCONT).
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { chmod, readdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { startCluster, type PgCluster } from "../helpers/pgcluster.js";
import { httpRequest, sleep, type DaemonEnv, type DaemonProcess } from "../daemon/helpers.js";
import {
  assertArchiveComplete,
  lsnGreater,
  makeStreamingEnv,
  readState,
  receivewalPid,
  slotRestartLsn,
  startDaemon,
  switchWal,
  waitFor,
  waitForStored,
  writeLoad,
} from "./streaming.js";

const SITE = "rxtest";
const WAL_SETTINGS = { wal_keep_size: "2GB", wal_recycle: "off", max_wal_size: "4GB" };

function procState(pid: number): string {
  // /proc/<pid>/stat: "pid (comm) S ..." — the state letter follows the closing parenthesis.
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
}

describe("pg_receivexlog mode", { timeout: 300_000 }, () => {
  let cluster: PgCluster;
  let env: DaemonEnv;
  let daemon: DaemonProcess | undefined;

  before(async () => {
    cluster = await startCluster({ settings: WAL_SETTINGS });
    env = await makeStreamingEnv(cluster, SITE, "pg_receivexlog");
  });

  after(async () => {
    await daemon?.stop();
    await cluster?.destroy();
  });

  it("archives every completed segment byte-for-byte, creates the slot, advances it, and resumes after a restart", async () => {
    daemon = await startDaemon(env);
    const slot0 = await waitFor(
      "slot creation",
      () => slotRestartLsn(cluster).then((l) => l ?? undefined),
      30_000,
      () => daemon!.logs(),
    );
    await waitFor(
      "pg_receivewal running",
      () => receivewalPid(env, SITE).then((p) => p ?? undefined),
      30_000,
      () => daemon!.logs(),
    );
    await writeLoad(cluster);
    const last1 = await switchWal(cluster);
    await waitForStored(env, SITE, last1, daemon);
    await waitFor(
      "pg_receivexlogs state",
      async () => {
        const state = await readState(env).catch(() => undefined);
        return (state?.pg_receivexlogs?.[SITE] as { running?: boolean } | undefined)?.running === true;
      },
      15_000,
    );

    // Stop the daemon (pg_receivewal with it), write more, start again: nothing lost.
    assert.deepEqual(await daemon.stop(), { code: 0, signal: null });
    assert.equal(await receivewalPid(env, SITE), null, "pg_receivewal stopped with the daemon");
    await writeLoad(cluster);
    await switchWal(cluster);
    daemon = await startDaemon(env, {}, "daemon2.log");
    await writeLoad(cluster, 100);
    const last2 = await switchWal(cluster);
    await waitForStored(env, SITE, last2, daemon);

    const names = await assertArchiveComplete(env, SITE, cluster);
    assert.ok(names.length >= 4, `several segments stored: ${names.join(" ")}`);
    // The restart found the slot instead of trying to create it again (an ERROR in the server's log).
    assert.doesNotMatch(await cluster.logContents(), /replication slot "[a-z0-9_]+" already exists/);
    assert.equal(names.at(-1), last2);
    // Local copies are cleaned up: at most the newest (kept for pg_receivewal) plus the one being written.
    const incoming = (await readdir(path.join(env.backupLocation, SITE, "xlog_incoming"))).filter((n) =>
      /^[0-9A-F]{24}$/.test(n),
    );
    assert.ok(incoming.length <= 2, `xlog_incoming holds ${incoming.join(" ")}`);
    const slot1 = await slotRestartLsn(cluster);
    assert.ok(slot1 && (await lsnGreater(cluster, slot1, slot0)), `slot advanced from ${slot0} to ${slot1}`);
    // A .partial name is never served to restore_command.
    const partial = `${last2.slice(0, 16)}FFFFFFFF.partial`;
    const res = await httpRequest(env.port, "GET", `/${SITE}/archive/${partial}`);
    assert.ok(res.status >= 400, `GET ${partial} → ${res.status}`);
  });

  it("pauses pg_receivewal below min_disk_free_bytes and resumes it after a SIGHUP reload", async () => {
    assert.ok(daemon);
    const sites = env.config.backup_sites as Record<string, Record<string, unknown>>;
    sites[SITE].pg_receivexlog = {
      min_disk_free_bytes: 2 ** 60,
      disk_space_check_interval: 0.2,
      resume_multiplier: 1.5,
    };
    await env.writeConfig();
    daemon.child.kill("SIGHUP");
    const pid = await waitFor("pg_receivewal pid", () => receivewalPid(env, SITE).then((p) => p ?? undefined));
    await waitFor(
      "pg_receivewal stopped (state T)",
      async () => procState(pid) === "T",
      20_000,
      () => daemon!.logs().slice(-3000),
    );
    await daemon.waitForLog(/below configured minimum .* pausing pg_receivewal/);
    sites[SITE].pg_receivexlog = { min_disk_free_bytes: 1024, disk_space_check_interval: 0.2, resume_multiplier: 1.5 };
    await env.writeConfig();
    daemon.child.kill("SIGHUP");
    await waitFor(
      "pg_receivewal running again",
      async () => procState(pid) !== "T",
      20_000,
      () => daemon!.logs().slice(-3000),
    );
    await daemon.waitForLog(/Resuming pg_receivewal/);
    assert.equal(await receivewalPid(env, SITE), pid, "the same pg_receivewal continued");
    // And it still archives.
    await writeLoad(cluster, 50);
    const last = await switchWal(cluster);
    await waitForStored(env, SITE, last, daemon);
  });

  it("after the daemon is SIGKILLed under load, a restart stops the orphaned (paused) pg_receivewal and loses nothing", async () => {
    assert.ok(daemon);
    const orphan = await waitFor("pg_receivewal pid", () => receivewalPid(env, SITE).then((p) => p ?? undefined));
    const load = writeLoad(cluster, 400);
    await sleep(300);
    daemon.child.kill("SIGKILL");
    await daemon.exited;
    await load;
    // An orphan with --verbose dies of SIGPIPE at its next log line; one the disk guard had paused
    // never does. Pause it as the guard would, so the restart has to deal with it.
    process.kill(orphan, "SIGSTOP");
    await switchWal(cluster);
    assert.ok(existsSync(`/proc/${orphan}`), "pg_receivewal outlived the killed daemon");
    daemon = await startDaemon(env, {}, "daemon3.log");
    await waitFor(
      "orphan terminated",
      async () => !existsSync(`/proc/${orphan}`) || procState(orphan) === "Z",
      20_000,
      () => daemon!.logs(),
    );
    await daemon.waitForLog(new RegExp(`terminating pg_receivewal PID ${orphan} left over`));
    await writeLoad(cluster, 100);
    const last = await switchWal(cluster);
    await waitForStored(env, SITE, last, daemon);
    await assertArchiveComplete(env, SITE, cluster);
  });
});

describe("pg_receivexlog mode start-up checks", { timeout: 300_000 }, () => {
  let cluster: PgCluster;
  const daemons: DaemonProcess[] = [];

  before(async () => {
    cluster = await startCluster({
      settings: WAL_SETTINGS,
      hba: [
        "host replication md5user 127.0.0.1/32 scram-sha-256",
        "host all md5user 127.0.0.1/32 scram-sha-256",
        "host replication nohbauser 127.0.0.1/32 reject",
        "host all nohbauser 127.0.0.1/32 reject",
      ],
    });
    await cluster.query("CREATE ROLE md5user LOGIN REPLICATION PASSWORD 'right-password'");
    await cluster.query("CREATE ROLE nohbauser LOGIN REPLICATION");
  });

  after(async () => {
    for (const d of daemons) await d.stop();
    await cluster?.destroy();
  });

  async function alerts(env: DaemonEnv): Promise<string[]> {
    return (await readdir(env.alertDir)).sort();
  }

  it("wrong password: authentication_error and a clear log line; the daemon keeps running; fixed password clears it", async () => {
    const env = await makeStreamingEnv(cluster, SITE, "pg_receivexlog", {
      user: "md5user",
      password: "wrong-password",
    });
    const daemon = await startDaemon(env);
    daemons.push(daemon);
    await waitFor(
      "authentication_error",
      async () => (await alerts(env)).includes("authentication_error"),
      30_000,
      () => daemon.logs(),
    );
    await daemon.waitForLog(/connection to PostgreSQL .* failed: password authentication failed for user "md5user"/);
    assert.ok(!daemon.logs().includes("wrong-password"), "the password is not logged");
    assert.equal((await httpRequest(env.port, "GET", "/status")).status, 200, "the daemon keeps running");
    // Fix the password: the next attempt (backoff 5 s) succeeds and removes the alert.
    const sites = env.config.backup_sites as Record<string, Record<string, unknown>>;
    (sites[SITE].nodes as Array<Record<string, unknown>>)[0].password = "right-password";
    await env.writeConfig();
    daemon.child.kill("SIGHUP");
    await waitFor(
      "alert removed",
      async () => !(await alerts(env)).includes("authentication_error"),
      40_000,
      () => daemon.logs().slice(-3000),
    );
    await waitFor("pg_receivewal started", async () => /Started: \[.*pg_receivewal/.test(daemon.logs()), 20_000);
    await daemon.stop();
  });

  it("missing pg_hba entry: configuration_error", async () => {
    const env = await makeStreamingEnv(cluster, SITE, "pg_receivexlog", { user: "nohbauser" });
    const daemon = await startDaemon(env);
    daemons.push(daemon);
    await waitFor(
      "configuration_error",
      async () => (await alerts(env)).includes("configuration_error"),
      30_000,
      () => daemon.logs(),
    );
    await daemon.waitForLog(/version check failed: pg_hba.conf rejects replication connection/);
    assert.deepEqual(await alerts(env), ["configuration_error"]);
    assert.equal((await httpRequest(env.port, "GET", "/status")).status, 200);
    await daemon.stop();
  });

  it("pg_receivewal of another major version: version_mismatch_error", async () => {
    const env = await makeStreamingEnv(cluster, SITE, "pg_receivexlog", {}, {});
    // Test double for the version check only: a script that answers --version like a 14.0 binary.
    const fake = path.join(env.dir, "pg_receivewal");
    await writeFile(fake, '#!/bin/sh\necho "pg_receivewal (PostgreSQL) 14.0"\n');
    await chmod(fake, 0o755);
    const sites = env.config.backup_sites as Record<string, Record<string, unknown>>;
    sites[SITE].pg_receivexlog_path = fake;
    await env.writeConfig();
    const daemon = await startDaemon(env);
    daemons.push(daemon);
    await waitFor(
      "version_mismatch_error",
      async () => (await alerts(env)).includes("version_mismatch_error"),
      30_000,
      () => daemon.logs(),
    );
    await daemon.waitForLog(/pg_receivewal version 140000 .* does not match the server version 15\d{4}/);
    assert.equal((await httpRequest(env.port, "GET", "/status")).status, 200);
    assert.ok(!existsSync(path.join(env.alertDir, "authentication_error")));
    await sleep(100);
    await daemon.stop();
  });
});
