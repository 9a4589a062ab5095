/**
 * The SIGKILL loop shared by test/faults/kill_loop.test.ts (CI) and bench/soak.ts (long runs): a
 * daemon in each WAL mode is killed at random moments under pgbench write load (in
 * archive_command mode also while basebackups run), restarted each time, and finally checked:
 * every segment PostgreSQL marked archived (archive_command: `.done`; streaming modes: every
 * segment up to a final switch) is stored byte for byte, and after a last clean start no temp
 * file, partial copy, work directory or orphan chunk is left, in the spool or in the store.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { readdir, readFile, stat } from "node:fs/promises";
import path from "node:path";
import { findFreePort, startCluster, type PgCluster } from "../helpers/pgcluster.js";
import {
  DaemonProcess,
  decodeStoredObject,
  doneSegments,
  httpRequest,
  listStoredNames,
  makeDaemonEnv,
  postgresCommandBin,
  sleep,
  type DaemonEnv,
} from "../daemon/helpers.js";
import { assertArchiveComplete, makeStreamingEnv, startDaemon, switchWal, waitFor } from "../wal/streaming.js";

export type KillMode = "archive_command" | "pg_receivexlog" | "walreceiver";

export interface KillResult {
  mode: KillMode;
  kills: number;
  /** Kills that hit a running basebackup (archive_command mode). */
  killsDuringBasebackup: number;
  segmentsChecked: number;
}

const WAL_SETTINGS = { wal_keep_size: "4GB", wal_recycle: "off", max_wal_size: "4GB" };

/** Files nobody would ever clean up: temp files, partial copies, short partials. */
export async function leftovers(dir: string): Promise<string[]> {
  const found: string[] = [];
  const walk = async (d: string): Promise<void> => {
    let entries;
    try {
      entries = await readdir(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const entry of entries) {
      const full = path.join(d, entry.name);
      if (entry.isDirectory()) await walk(full);
      else if (/_incomplete$|\.tmp|_tmp$|^\.concurrent_upload_|\.tmp-/.test(entry.name)) found.push(full);
      else if (entry.name.endsWith(".partial") && d.endsWith("xlog_incoming")) {
        const size = (await stat(full)).size;
        if (size !== 0 && size !== 16 * 1024 * 1024) found.push(`${full} (${size} bytes)`);
      }
    }
  };
  await walk(dir);
  return found;
}

async function entries(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).sort();
  } catch {
    return [];
  }
}

/** Chunk directories in the store with no control object (a backup that never completed). */
async function orphanChunkDirs(env: DaemonEnv, site: string): Promise<string[]> {
  const controls = new Set(
    (await entries(path.join(env.storageDir, site, "basebackup"))).filter((n) => !n.endsWith(".metadata")),
  );
  return (await entries(path.join(env.storageDir, site, "basebackup_chunk"))).filter((n) => !controls.has(n));
}

export async function runKillLoop(
  mode: KillMode,
  kills: number,
  log = (m: string): void => void m,
): Promise<KillResult> {
  const site = `kill_${mode}`;
  const began = Date.now();
  const elapsed = (): string => `${((Date.now() - began) / 1000).toFixed(0)} s`;
  let cluster: PgCluster | undefined;
  let daemon: DaemonProcess | undefined;
  try {
    let env: DaemonEnv;
    const basebackups = mode === "archive_command";
    if (mode === "archive_command") {
      const port = await findFreePort();
      cluster = await startCluster({
        archiveCommand: `${process.execPath} ${postgresCommandBin} --mode archive --port ${port} --site ${site} --xlog %f`,
        settings: WAL_SETTINGS,
      });
      env = await makeDaemonEnv(
        {
          [site]: {
            pgDataDirectory: cluster.dataDir,
            extra: {
              nodes: [{ host: "127.0.0.1", port: cluster.port, user: "postgres" }],
              basebackup_mode: "local-tar",
              basebackup_chunk_size: 2 * 1024 * 1024,
              basebackup_chunks_in_progress: 2,
              basebackup_count: 100,
            },
          },
        },
        { http_port: port },
      );
    } else {
      cluster = await startCluster({ settings: WAL_SETTINGS });
      env = await makeStreamingEnv(cluster, site, mode);
    }
    const start = (n: number): Promise<DaemonProcess> =>
      mode === "archive_command"
        ? DaemonProcess.start(env, { logName: `daemon-${n}.log` })
        : startDaemon(env, {}, `daemon-${n}.log`);
    daemon = await start(0);
    await cluster.pgbench(["-i", "-s", "2", "-q"]);
    const first = await switchWal(cluster);
    log(`${mode}: set up in ${elapsed()}`);

    let loadRunning = true;
    const c = cluster;
    const load = (async () => {
      while (loadRunning) await c.pgbench(["-c", "2", "-T", "5"]).catch(() => undefined);
    })();
    const switcher = (async () => {
      while (loadRunning) {
        await switchWal(c).catch(() => undefined);
        await sleep(500);
      }
    })();
    let killsDuringBasebackup = 0;
    const incoming = path.join(env.backupLocation, site, "basebackup_incoming");
    for (let k = 1; k <= kills; k++) {
      if (basebackups && k % 3 === 1) {
        // Kill this time while a basebackup runs: request one and wait until it writes.
        await httpRequest(env.port, "PUT", `/${site}/archive/basebackup`);
        // The backup starts with a spread checkpoint; an immediate one makes it start now.
        await sleep(200);
        await c.query("CHECKPOINT").catch(() => undefined);
        await waitFor("a basebackup running", async () => (await entries(incoming)).length > 0, 20_000).catch(
          () => undefined,
        );
        await sleep(Math.floor(Math.random() * 1000));
      } else {
        await sleep(300 + Math.floor(Math.random() * 1500));
      }
      if (basebackups && (await entries(incoming)).length > 0) killsDuringBasebackup++;
      await daemon.stop("SIGKILL");
      daemon = await start(k);
    }
    loadRunning = false;
    await load;
    await switcher;
    log(`${mode}: ${kills} kills (${killsDuringBasebackup} during a basebackup) in ${elapsed()}`);

    // Everything PostgreSQL was told is archived, byte for byte.
    const last = await switchWal(cluster);
    let segmentsChecked: number;
    if (mode === "archive_command") {
      await waitFor(
        `archiving to catch up to ${last}`,
        async () => {
          const rows = await c.query<{ w: string | null }>("SELECT last_archived_wal AS w FROM pg_stat_archiver");
          if ((rows[0]?.w ?? "") >= last) return true;
          await c.query("SELECT pg_switch_wal()");
          return false;
        },
        240_000,
      );
      const done = (await doneSegments(cluster)).filter((n) => /^[0-9A-F]{24}$/.test(n));
      const stored = new Set(await listStoredNames(env.storageDir, site, "xlog"));
      for (const name of done) {
        assert.ok(stored.has(name), `${mode}: ${name} is .done in pg_wal but missing from storage`);
        const original = await readFile(path.join(cluster.dataDir, "pg_wal", name));
        const { data } = await decodeStoredObject(env.storageDir, `${site}/xlog/${name}`, {});
        assert.ok(data.equals(original), `${mode}: ${name} in storage differs from pg_wal`);
      }
      segmentsChecked = done.length;
    } else {
      await waitFor(
        `${last} stored`,
        async () => (await listStoredNames(env.storageDir, site, "xlog")).includes(last),
        240_000,
        () => daemon!.logs().slice(-3000),
      );
      const names = await assertArchiveComplete(env, site, cluster);
      assert.ok(names.includes(first) && names.includes(last), `${mode}: ${first}..${last} stored: ${names.join(" ")}`);
      segmentsChecked = names.length;
    }

    log(`${mode}: ${segmentsChecked} segments checked at ${elapsed()}`);
    // A last clean start removes what the crashes left; a SIGTERM stop then leaves nothing.
    await daemon.stop("SIGKILL");
    daemon = await start(kills + 1);
    if (basebackups) {
      await waitFor(
        "interrupted basebackups cleaned up",
        async () => (await entries(incoming)).length === 0 && (await orphanChunkDirs(env, site)).length === 0,
        120_000,
        () => daemon!.logs().slice(-3000),
      );
    }
    assert.deepEqual(await daemon.stop("SIGTERM"), { code: 0, signal: null });
    daemon = undefined;
    assert.deepEqual(await leftovers(env.backupLocation), [], `${mode}: left in the spool`);
    assert.deepEqual(await leftovers(env.storageDir), [], `${mode}: left in the store`);
    assert.ok(!existsSync(path.join(env.alertDir, "disk_full_error")));
    return { mode, kills, killsDuringBasebackup, segmentsChecked };
  } finally {
    await daemon?.stop("SIGKILL");
    await cluster?.destroy();
  }
}
