/**
 * The archive_command work-ahead (src/daemon/wal_work_ahead.ts) with PostgreSQL 15 archiving
 * through the bash client: a burst of 30 ready segments is stored once each, byte-exact; a
 * segment changed after it was worked ahead is stored again before it is acknowledged; a SIGKILL
 * of the daemon in the middle of a burst loses nothing PostgreSQL was told is archived and leaves
 * no temp files behind.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { findFreePort, startCluster, type PgCluster } from "../helpers/pgcluster.js";
import { installedClientBin } from "../helpers/paths.js";
import {
  DaemonProcess,
  decodeStoredObject,
  doneSegments,
  listStoredNames,
  makeDaemonEnv,
  makeFakePgdata,
  makeKeyPair,
  runPostgresCommand,
  sleep,
  syntheticSegment,
  waitArchived,
  type DaemonEnv,
} from "./helpers.js";

// The installed client: the native front where built, else the bash client (both as archive_command).
const shellBin = installedClientBin;
const SITE = "ahead";
const KEY_ID = "ahead-key";
const WAL_RE = /^[0-9A-F]{24}$/;

/** Completes `count` segments; returns the last one's name. */
async function burst(cluster: PgCluster, count: number): Promise<string> {
  let last = "";
  for (let i = 0; i < count; i++) {
    await cluster.query("INSERT INTO t VALUES (1)");
    const rows = await cluster.query<{ name: string }>("SELECT pg_walfile_name(pg_switch_wal()) AS name");
    last = rows[0].name;
  }
  return last;
}

async function readyNames(cluster: PgCluster): Promise<string[]> {
  const dir = path.join(cluster.dataDir, "pg_wal", "archive_status");
  return (await readdir(dir)).filter((n) => n.endsWith(".ready")).map((n) => n.slice(0, -".ready".length));
}

/** How many times each key was uploaded, from the daemon's transfer log lines. */
function uploadCounts(logs: string): Map<string, number> {
  const counts = new Map<string, number>();
  for (const m of logs.matchAll(/UPLOAD transfer of key: (\S+),/g)) counts.set(m[1], (counts.get(m[1]) ?? 0) + 1);
  return counts;
}

async function waitFor(what: string, cond: () => Promise<boolean>, timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** Temp files anywhere below `dir` (spool, store): none may survive a restart. */
async function tempFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true });
  return entries.filter((e) => /tmp|concurrent_upload|\.partial_/.test(path.basename(e)));
}

describe("archive_command work-ahead", () => {
  let cluster: PgCluster;
  let env: DaemonEnv;
  let daemon: DaemonProcess;
  const keys = makeKeyPair();

  before(async () => {
    const port = await findFreePort();
    cluster = await startCluster({
      // Archiving starts disabled (exit 1) so that ready segments pile up for the work-ahead.
      archiveCommand: "false",
      settings: { wal_keep_size: "4GB", wal_recycle: "off", max_wal_size: "4GB", archive_timeout: "0" },
    });
    await cluster.query("CREATE TABLE t (x int)");
    env = await makeDaemonEnv(
      { [SITE]: { pgDataDirectory: cluster.dataDir, keyId: KEY_ID, keys } },
      { http_port: port },
    );
    daemon = await DaemonProcess.start(env);
  });

  after(async () => {
    await daemon?.stop();
    await cluster?.destroy();
  });

  const setArchiveCommand = async (command: string): Promise<void> => {
    await cluster.query(`ALTER SYSTEM SET archive_command = '${command}'`);
    await cluster.query("SELECT pg_reload_conf()");
  };
  const clientCommand = (): string =>
    `PGHOARD_NODE=${process.execPath} ${shellBin} --mode archive --port ${env.port} --site ${SITE} --xlog %f`;

  async function assertStoredExactly(names: string[]): Promise<void> {
    for (const name of names) {
      const original = await readFile(path.join(cluster.dataDir, "pg_wal", name));
      const { data } = await decodeStoredObject(env.storageDir, `${SITE}/xlog/${name}`, { [KEY_ID]: keys.privatePem });
      assert.ok(data.equals(original), `${name} differs from pg_wal`);
    }
  }

  it("stores a burst of 30 ready segments ahead of archive_command, once each, byte-exact", async () => {
    const last = await burst(cluster, 30);
    const ready = (await readyNames(cluster)).filter((n) => WAL_RE.test(n));
    assert.ok(ready.length >= 30, `expected 30 ready segments, got ${ready.length}`);
    // Worked ahead: every ready segment is stored while archive_command still fails.
    await waitFor("the work-ahead to store the burst", async () => {
      const stored = await listStoredNames(env.storageDir, SITE, "xlog");
      return ready.every((n) => stored.includes(n));
    });
    await setArchiveCommand(clientCommand());
    await waitArchived(cluster, last);
    const done = (await doneSegments(cluster)).filter((n) => WAL_RE.test(n));
    for (const name of ready) assert.ok(done.includes(name), `${name} not archived`);
    await assertStoredExactly(ready);
    const counts = uploadCounts(daemon.logs());
    for (const name of ready) assert.equal(counts.get(`${SITE}/xlog/${name}`), 1, `${name} uploaded once`);
  });

  it("a SIGKILL during the work-ahead loses nothing PostgreSQL was told is archived", async () => {
    await setArchiveCommand("false");
    const last = await burst(cluster, 20);
    await setArchiveCommand(clientCommand());
    // Kill the daemon once PostgreSQL has had some of the burst acknowledged, the rest in flight.
    const before = new Set(await doneSegments(cluster));
    await waitFor("some acknowledgements", async () => {
      const done = await doneSegments(cluster);
      return done.filter((n) => !before.has(n)).length >= 3;
    });
    daemon.child.kill("SIGKILL");
    await daemon.exited;
    const acknowledged = (await doneSegments(cluster)).filter((n) => WAL_RE.test(n));
    // Everything PostgreSQL marked archived is in storage and decodes to its bytes.
    await assertStoredExactly(acknowledged);
    daemon = await DaemonProcess.start(env, { logName: "daemon2.log" });
    await waitArchived(cluster, last);
    const all = (await doneSegments(cluster)).filter((n) => WAL_RE.test(n));
    await assertStoredExactly(all);
    assert.deepEqual(await tempFiles(env.backupLocation), []);
    assert.deepEqual(await tempFiles(env.storageDir), []);
    assert.deepEqual(
      (await readdir(path.join(cluster.dataDir, "pg_wal"))).filter((n) => n.includes("pghoard")),
      [],
      "no files of ours in pg_wal",
    );
  });
});

describe("archive_command work-ahead: a changed file", () => {
  const SEG = "000000010000000000000007";
  let env: DaemonEnv;
  let daemon: DaemonProcess;
  let pgdata: string;
  const keys = makeKeyPair();

  before(async () => {
    pgdata = await makeFakePgdata();
    env = await makeDaemonEnv({ [SITE]: { pgDataDirectory: pgdata, keyId: KEY_ID, keys } });
    daemon = await DaemonProcess.start(env);
  });

  after(async () => {
    await daemon?.stop();
  });

  it("is archived again before it is acknowledged, never from the stale copy", async () => {
    const walDir = path.join(pgdata, "pg_wal");
    const first = syntheticSegment(SEG);
    await writeFile(path.join(walDir, SEG), first);
    await mkdir(path.join(walDir, "archive_status"), { recursive: true });
    await writeFile(path.join(walDir, "archive_status", `${SEG}.ready`), "");
    const key = `${SITE}/xlog/${SEG}`;
    const decode = async (): Promise<Buffer> =>
      (await decodeStoredObject(env.storageDir, key, { [KEY_ID]: keys.privatePem })).data;
    // The local store writes the object, then its metadata sidecar: wait for both.
    await waitFor(
      "the work-ahead to store the segment",
      async () =>
        existsSync(path.join(env.storageDir, key)) && existsSync(path.join(env.storageDir, `${key}.metadata`)),
    );
    assert.ok((await decode()).equals(first));
    // Same size, same name, new bytes (syntheticSegment's random half differs).
    const second = syntheticSegment(SEG);
    assert.ok(!second.equals(first));
    await writeFile(path.join(walDir, SEG), second);
    const res = await runPostgresCommand([
      "--port",
      String(env.port),
      "--site",
      SITE,
      "--mode",
      "archive",
      "--xlog",
      SEG,
    ]);
    assert.equal(res.code, 0, res.stdout + res.stderr);
    assert.ok((await decode()).equals(second), "the acknowledged object holds the file as it is now");
    assert.equal(uploadCounts(daemon.logs()).get(key), 2);
    await daemon.waitForLog(new RegExp(`${SEG} changed since it was archived ahead`));
  });
});
