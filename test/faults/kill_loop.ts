/**
 * The SIGKILL loop shared by test/faults/kill_loop.test.ts (CI) and bench/soak.ts (long runs): a
 * daemon in each WAL mode is killed at random moments under pgbench write load (in
 * archive_command mode also while basebackups run), restarted each time, and finally checked:
 * every segment PostgreSQL marked archived (archive_command: `.done`; streaming modes: every
 * segment up to a final switch) is stored byte for byte, and after a last clean start no temp
 * file, partial copy, work directory or orphan chunk is left, in the spool or in the store.
 *
 * The kills take turns between three moments: during start-up (a random time after the spawn,
 * often before the daemon answers; its spool walk and clean-up are cut off), while working
 * (archive_command: serving requests; streaming modes: only once this daemon's receiver has
 * logged where it starts streaming) and, in archive_command mode, while a basebackup runs. In the
 * streaming modes every receiver start is checked: it never goes back, and never more than one
 * segment behind the newest segment already stored (no re-streaming of stored WAL).
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
  sleep,
  type DaemonEnv,
} from "../daemon/helpers.js";
import { installedClientBin } from "../helpers/paths.js";
import { assertArchiveComplete, makeStreamingEnv, switchWal, waitFor } from "../wal/streaming.js";

export type KillMode = "archive_command" | "pg_receivexlog" | "walreceiver";

export interface KillResult {
  mode: KillMode;
  kills: number;
  /** Kills at a random moment of start-up (before or soon after the daemon answered). */
  killsDuringStartup: number;
  /** Kills of a daemon that was working (streaming modes: its receiver was streaming). */
  killsWhileWorking: number;
  /** Kills that hit a running basebackup (archive_command mode). */
  killsDuringBasebackup: number;
  /** Streaming modes: receiver starts seen in the logs (each checked against what was stored). */
  receiverStarts: number;
  /** Streaming modes: most already stored segments one receiver start streamed again. */
  restreamed: number;
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

/** One mode's figures, as the CI run and the soak print them. */
export function describeResult(r: KillResult): string {
  const moments = [
    `${r.killsDuringStartup} during start-up`,
    `${r.killsWhileWorking} while working`,
    ...(r.mode === "archive_command" ? [`${r.killsDuringBasebackup} during a basebackup`] : []),
  ];
  const starts =
    r.mode === "archive_command"
      ? ""
      : `, ${r.receiverStarts} receiver starts, at most ${r.restreamed} stored segment(s) streamed again`;
  return `${r.mode} ${r.kills} (${moments.join(", ")}${starts}), ${r.segmentsChecked} segments checked`;
}

/** The line each receiver logs when it starts streaming, with the LSN it starts at. */
const RECEIVER_START: Record<Exclude<KillMode, "archive_command">, RegExp> = {
  pg_receivexlog: /starting log streaming at ([0-9A-F]+)\/([0-9A-F]+)/g,
  walreceiver: /Starting replication from ([0-9A-F]+)\/([0-9A-F]+)/g,
};
const SEGMENT_SIZE = 16 * 1024 * 1024;

/** Segment numbers (timeline left out) of the receiver starts logged in `log`. */
export function receiverStartSegments(mode: Exclude<KillMode, "archive_command">, log: string): number[] {
  return [...log.matchAll(RECEIVER_START[mode])].map((m) =>
    Math.floor((parseInt(m[1]!, 16) * 2 ** 32 + parseInt(m[2]!, 16)) / SEGMENT_SIZE),
  );
}

function segmentNumber(name: string): number {
  return parseInt(name.slice(8, 16), 16) * 256 + parseInt(name.slice(16, 24), 16);
}

/** The bash client, as PostgreSQL runs it from a package (it hands unusual cases to the Node one). */
// The installed client: the native front where built, else the bash client.
const shellClient = installedClientBin;

type Moment = "startup" | "working" | "basebackup";

/** Turns: archive_command basebackup, start-up, working; streaming modes working, start-up. */
function momentOf(k: number, basebackups: boolean): Moment {
  if (basebackups) return (["basebackup", "startup", "working"] as const)[(k - 1) % 3]!;
  return k % 2 === 1 ? "working" : "startup";
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
        archiveCommand: `${shellClient} --mode archive --port ${port} --site ${site} --xlog %f`,
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
    const streaming = mode === "archive_command" ? null : mode;
    const daemonEnv: Record<string, string> = streaming ? { HOME: env.dir } : {};
    // The first main-loop round (which writes the state file /status serves) can take long on a
    // loaded machine: readiness gets more than the helpers' usual 30 s.
    const start = (n: number): Promise<DaemonProcess> =>
      DaemonProcess.start(env, { logName: `daemon-${n}.log`, env: daemonEnv, readyTimeoutMs: 120_000 });
    /** Waits until this daemon's receiver logged its start (streaming modes). */
    const streamingStarted = async (d: DaemonProcess): Promise<void> => {
      if (!streaming) return;
      await waitFor(
        `${mode} streaming`,
        async () => {
          if (d.child.exitCode !== null) throw new Error(`daemon exited: ${d.logs().slice(-3000)}`);
          return receiverStartSegments(streaming, d.logs()).length > 0;
        },
        60_000,
        () => d.logs().slice(-3000),
      );
    };
    /** Every receiver start of daemon `n` against the newest segment stored before it was started. */
    let receiverStarts = 0;
    let previousStart = -1;
    const wentBack: string[] = [];
    let restreamed = 0;
    const checkReceiverStarts = (n: number, d: DaemonProcess, newestStoredBefore: number): void => {
      if (!streaming) return;
      for (const segment of receiverStartSegments(streaming, d.logs())) {
        receiverStarts++;
        if (segment < previousStart) wentBack.push(`daemon ${n}: segment ${segment} after ${previousStart}`);
        // Segments already stored that this start streams (and uploads) again.
        restreamed = Math.max(restreamed, newestStoredBefore - segment + 1);
        previousStart = segment;
      }
    };
    const newestStored = async (): Promise<number> =>
      Math.max(
        -1,
        ...(await listStoredNames(env.storageDir, site, "xlog"))
          .filter((n) => /^[0-9A-F]{24}$/.test(n))
          .map(segmentNumber),
      );

    daemon = await start(0);
    await cluster.pgbench(["-i", "-s", basebackups ? "2" : "1", "-q"]);
    await streamingStarted(daemon);
    const first = await switchWal(cluster);
    log(`${mode}: set up in ${elapsed()}`);

    let loadRunning = true;
    const c = cluster;
    // Light, steady write load: the faults matter, not the volume (every segment is checked).
    const load = (async () => {
      while (loadRunning) await c.pgbench(["-c", "1", "-R", "40", "-T", "5"]).catch(() => undefined);
    })();
    // Segment switches (each one a segment to archive and check) are paced by the kills, not the
    // clock: a loaded machine makes the loop slower, not the final check longer.
    let switchesAllowed = 2;
    const switcher = (async () => {
      while (loadRunning) {
        if (switchesAllowed > 0) {
          switchesAllowed--;
          await switchWal(c).catch(() => undefined);
        }
        await sleep(1000);
      }
    })();
    const counts = { startup: 0, working: 0, basebackup: 0 };
    const incoming = path.join(env.backupLocation, site, "basebackup_incoming");
    let storedBefore = -1;
    for (let k = 1; k <= kills; k++) {
      const moment = momentOf(k, basebackups);
      if (moment === "basebackup") {
        // Kill this time while a basebackup runs: request one and wait until it writes.
        await httpRequest(env.port, "PUT", `/${site}/archive/basebackup`);
        // The backup starts with a spread checkpoint; an immediate one makes it start now.
        await sleep(200);
        await c.query("CHECKPOINT").catch(() => undefined);
        await waitFor("a basebackup running", async () => (await entries(incoming)).length > 0, 20_000).catch(
          () => undefined,
        );
        await sleep(Math.floor(Math.random() * 1000));
        if ((await entries(incoming)).length > 0) counts.basebackup++;
        else counts.working++;
      } else if (moment === "working") {
        await streamingStarted(daemon);
        if (streaming) {
          // Working means making progress: a receiver killed each time before it stores a segment
          // (slow catch-up on a loaded machine) would start from the same place for ever.
          const before = storedBefore;
          switchesAllowed = Math.max(switchesAllowed, 1);
          await waitFor(
            `${mode}: a segment newer than ${before} stored`,
            async () => (await newestStored()) > before,
            120_000,
            () => daemon!.logs().slice(-3000),
          );
        }
        await sleep(Math.floor(Math.random() * 1000));
        counts.working++;
      } else {
        counts.startup++;
      }
      await daemon.stop("SIGKILL");
      switchesAllowed = Math.min(switchesAllowed + 2, 4);
      checkReceiverStarts(k - 1, daemon, storedBefore);
      storedBefore = await newestStored();
      if (momentOf(k + 1, basebackups) === "startup" && k < kills) {
        // Killed again at a random moment of start-up: once it has begun to log (Node.js has
        // loaded, it holds its locks), during its spool walk and clean-up, before or a little
        // after it answers.
        const d = DaemonProcess.spawn(env, { logName: `daemon-${k}.log`, env: daemonEnv });
        daemon = d;
        await waitFor("the daemon logging", async () => d.logs().length > 0 || d.child.exitCode !== null, 60_000);
        await sleep(Math.floor(Math.random() * 1500));
      } else {
        daemon = await start(k);
      }
    }
    loadRunning = false;
    await load;
    await switcher;
    log(
      `${mode}: ${kills} kills (${counts.startup} during start-up, ${counts.working} while working, ${counts.basebackup} during a basebackup) in ${elapsed()}`,
    );

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
    checkReceiverStarts(kills, daemon, storedBefore);
    storedBefore = await newestStored();
    daemon = await start(kills + 1);
    await streamingStarted(daemon);
    if (basebackups) {
      await waitFor(
        "interrupted basebackups cleaned up",
        async () => (await entries(incoming)).length === 0 && (await orphanChunkDirs(env, site)).length === 0,
        120_000,
        () => daemon!.logs().slice(-3000),
      );
    }
    assert.deepEqual(await daemon.stop("SIGTERM"), { code: 0, signal: null });
    checkReceiverStarts(kills + 1, daemon, storedBefore);
    daemon = undefined;
    assert.deepEqual(wentBack, [], `${mode}: a restarted receiver started behind the one before`);
    // pg_receivewal resumes after the newest segment in its directory, which is kept until a newer
    // one is stored; the walreceiver resumes from the slot or the state file, either of which may
    // lag the newest stored segment by about a second of WAL.
    const restreamLimit = mode === "pg_receivexlog" ? 0 : 3;
    assert.ok(
      restreamed <= restreamLimit,
      `${mode}: a restarted receiver streamed ${restreamed} already stored segment(s) again (limit ${restreamLimit})`,
    );
    assert.deepEqual(await leftovers(env.backupLocation), [], `${mode}: left in the spool`);
    assert.deepEqual(await leftovers(env.storageDir), [], `${mode}: left in the store`);
    // The state file's directory too (`<state>.<pid>.tmp` of a write cut off by a kill).
    const stateDirLeft = (await entries(path.dirname(env.statePath))).filter((n) => n.endsWith(".tmp"));
    assert.deepEqual(stateDirLeft, [], `${mode}: left beside the state file`);
    assert.ok(!existsSync(path.join(env.alertDir, "disk_full_error")));
    return {
      mode,
      kills,
      killsDuringStartup: counts.startup,
      killsWhileWorking: counts.working,
      killsDuringBasebackup: counts.basebackup,
      receiverStarts,
      restreamed,
      segmentsChecked,
    };
  } finally {
    await daemon?.stop("SIGKILL");
    await cluster?.destroy();
  }
}
