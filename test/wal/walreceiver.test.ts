/**
 * walreceiver mode end to end against a real PostgreSQL 15 primary with a replication slot: every
 * completed segment is stored byte-for-byte, an idle incomplete segment is stored only as
 * `<SEG>.partial` (never under its segment name, never served to restore), the slot advances only
 * over stored WAL, and a daemon restart resumes from `walreceivers.<site>.last_flushed_lsn`.
 */
import assert from "node:assert/strict";
import { readdir } from "node:fs/promises";
import { after, before, describe, it } from "node:test";
import { lsnToWalName, parseLsn, WAL_SEG_SIZE } from "../../src/wal/index.js";
import { startCluster, type PgCluster } from "../helpers/pgcluster.js";
import { decodeStoredObject, httpRequest, sleep, type DaemonEnv, type DaemonProcess } from "../daemon/helpers.js";
import {
  assertArchiveComplete,
  fullSegments,
  lsnGreater,
  makeStreamingEnv,
  readState,
  slotRestartLsn,
  startDaemon,
  storedWal,
  switchWal,
  waitFor,
  waitForStored,
  writeLoad,
} from "./streaming.js";

const SITE = "wrtest";
const PARTIAL_ENV = { PGHOARD_TEST_PARTIAL_INTERVAL_MS: "2000" };

describe("walreceiver mode", { timeout: 300_000 }, () => {
  let cluster: PgCluster;
  let env: DaemonEnv;
  let daemon: DaemonProcess | undefined;

  before(async () => {
    cluster = await startCluster({ settings: { wal_keep_size: "2GB", wal_recycle: "off", max_wal_size: "4GB" } });
    env = await makeStreamingEnv(cluster, SITE, "walreceiver");
  });

  after(async () => {
    await daemon?.stop();
    await cluster?.destroy();
  });

  it("stores completed segments byte-for-byte, incomplete ones only as .partial, and resumes after a restart", async () => {
    daemon = await startDaemon(env, PARTIAL_ENV);
    await waitFor(
      "slot creation",
      () => slotRestartLsn(cluster).then((l) => l ?? undefined),
      30_000,
      () => daemon!.logs(),
    );
    await waitFor(
      "streaming",
      async () => daemon!.logs().includes("Starting replication from"),
      30_000,
      () => daemon!.logs(),
    );
    const slot0 = (await slotRestartLsn(cluster))!;
    const senders = await cluster.query<{ application_name: string }>(
      "SELECT application_name FROM pg_stat_replication",
    );
    assert.deepEqual(
      senders.map((r) => r.application_name),
      ["pghoard_walreceiver"],
    );
    await writeLoad(cluster);
    const last1 = await switchWal(cluster);
    await waitForStored(env, SITE, last1, daemon);

    // Idle: the segment being written is stored as .partial only, with exactly the bytes PostgreSQL has.
    await cluster.query("CREATE TABLE IF NOT EXISTS partial_marker (x int); INSERT INTO partial_marker VALUES (1)");
    const [{ lsn }] = await cluster.query<{ lsn: string }>("SELECT pg_current_wal_flush_lsn()::text AS lsn");
    const current = lsnToWalName(parseLsn(lsn), 1);
    await waitForStored(env, SITE, `${current}.partial`, daemon, 30_000);
    assert.ok(
      !(await storedWal(env, SITE)).includes(current),
      "the incomplete segment is not stored under its own name",
    );
    const { data: partial } = await decodeStoredObject(env.storageDir, `${SITE}/xlog/${current}.partial`, {});
    assert.ok(partial.length < WAL_SEG_SIZE && partial.length > 0);
    const pgCopy = (await import("node:fs/promises")).readFile(`${cluster.dataDir}/pg_wal/${current}`);
    assert.ok(
      partial.equals((await pgCopy).subarray(0, partial.length)),
      "the .partial holds the segment's first bytes",
    );
    const resPartial = await httpRequest(env.port, "GET", `/${SITE}/archive/${current}.partial`);
    assert.ok(resPartial.status >= 400, `GET .partial → ${resPartial.status}`);

    // Completing it replaces the .partial.
    assert.equal(await switchWal(cluster), current);
    await waitForStored(env, SITE, current, daemon);
    await waitFor(
      `${current}.partial deleted`,
      async () => !(await storedWal(env, SITE)).includes(`${current}.partial`),
      20_000,
    );

    // The slot moved, but never past what is stored.
    const slot1 = (await slotRestartLsn(cluster))!;
    assert.ok(await lsnGreater(cluster, slot1, slot0), `slot advanced from ${slot0} to ${slot1}`);
    // The state file is rewritten every main-loop iteration (≤ 5 s): wait for one written after streaming began.
    const state = await waitFor(
      "state file showing the running walreceiver",
      async () => {
        const s = await readState(env);
        return (s.walreceivers[SITE] as { running?: boolean } | undefined)?.running ? s : undefined;
      },
      15_000,
      () => daemon!.logs(),
    );
    const flushed = state.walreceivers[SITE] as { last_flushed_lsn: number; running: boolean };
    assert.equal(flushed.running, true);
    assert.equal(flushed.last_flushed_lsn % WAL_SEG_SIZE, 0);

    // Restart: resumes from the state file; more WAL written meanwhile is not lost.
    assert.deepEqual(await daemon.stop(), { code: 0, signal: null });
    const stopped = await readState(env);
    const resumeAt = (stopped.walreceivers[SITE] as { last_flushed_lsn: number }).last_flushed_lsn;
    const slotAtStop = (await slotRestartLsn(cluster))!;
    const storedNames = fullSegments(await storedWal(env, SITE));
    // restart_lsn ≤ end of stored WAL: the slot never ran ahead of the archive.
    const storedEnd = BigInt(resumeAt);
    assert.ok(
      parseLsn(slotAtStop) <= storedEnd,
      `slot ${slotAtStop} ≤ stored end ${storedEnd.toString(16)} (${storedNames.at(-1)})`,
    );
    await writeLoad(cluster);
    await switchWal(cluster);
    daemon = await startDaemon(env, PARTIAL_ENV, "daemon2.log");
    await writeLoad(cluster, 100);
    const last2 = await switchWal(cluster);
    await waitForStored(env, SITE, last2, daemon);
    await daemon.waitForLog(/Starting replication from .* \(from the state file\)/);
    // The restart found the slot without trying to create it again (no ERROR in the server's log).
    assert.doesNotMatch(await cluster.logContents(), /replication slot "\w+" already exists/);

    const names = await assertArchiveComplete(env, SITE, cluster);
    assert.ok(names.length >= 4, `several segments: ${names.join(" ")}`);
  });

  it("after the daemon is SIGKILLed under load, a restart resumes from the state file or the slot and loses nothing", async () => {
    assert.ok(daemon);
    const load = writeLoad(cluster, 400);
    await sleep(500);
    daemon.child.kill("SIGKILL");
    await daemon.exited;
    await load;
    await switchWal(cluster);
    daemon = await startDaemon(env, PARTIAL_ENV, "daemon3.log");
    await writeLoad(cluster, 100);
    const last = await switchWal(cluster);
    await waitForStored(env, SITE, last, daemon);
    await daemon.waitForLog(/Starting replication from .* \(from (the state file|slot pghoard_test_slot)\)/);
    await assertArchiveComplete(env, SITE, cluster);
  });
});

describe("walreceiver mode start-up checks", { timeout: 120_000 }, () => {
  let cluster: PgCluster;
  const daemons: DaemonProcess[] = [];

  before(async () => {
    cluster = await startCluster({
      hba: ["host replication pwuser 127.0.0.1/32 scram-sha-256", "host all pwuser 127.0.0.1/32 scram-sha-256"],
    });
    await cluster.query("CREATE ROLE pwuser LOGIN REPLICATION PASSWORD 'right-password'");
  });

  after(async () => {
    for (const d of daemons) await d.stop();
    await cluster?.destroy();
  });

  it("wrong password: authentication_error, the daemon keeps running; an old server version: version_unsupported_error; both clear once fixed", async () => {
    const env = await makeStreamingEnv(cluster, SITE, "walreceiver", { user: "pwuser", password: "wrong-password" });
    const daemon = await startDaemon(env);
    daemons.push(daemon);
    const alerts = async (): Promise<string[]> => (await readdir(env.alertDir)).sort();
    await waitFor(
      "authentication_error",
      async () => (await alerts()).includes("authentication_error"),
      30_000,
      () => daemon.logs(),
    );
    await daemon.waitForLog(
      /connection to PostgreSQL for the walreceiver version check failed: password authentication failed for user "pwuser"/,
    );
    assert.ok(!daemon.logs().includes("wrong-password"));
    assert.equal((await httpRequest(env.port, "GET", "/status")).status, 200);

    // Right password, but a (pretended) 9.2 server: that check fails next.
    const sites = env.config.backup_sites as Record<string, Record<string, unknown>>;
    (sites[SITE].nodes as Array<Record<string, unknown>>)[0].password = "right-password";
    sites[SITE].pg_version = 90224;
    await env.writeConfig();
    daemon.child.kill("SIGHUP");
    await waitFor(
      "version_unsupported_error",
      async () => (await alerts()).join() === "version_unsupported_error",
      30_000,
      () => daemon.logs().slice(-3000),
    );
    await daemon.waitForLog(/unsupported PostgreSQL server version 90224/);

    delete sites[SITE].pg_version;
    await env.writeConfig();
    daemon.child.kill("SIGHUP");
    await waitFor(
      "alerts cleared and streaming",
      async () => (await alerts()).length === 0 && daemon.logs().includes("Starting replication from"),
      40_000,
      () => daemon.logs().slice(-3000),
    );
  });
});
