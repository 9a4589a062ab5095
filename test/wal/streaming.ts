/** Shared helpers of the WAL streaming tests (pg_receivexlog and walreceiver modes). */
import assert from "node:assert/strict";
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { nextWalName } from "../../src/wal/index.js";
import type { PgCluster } from "../helpers/pgcluster.js";
import {
  DaemonProcess,
  decodeStoredObject,
  listStoredNames,
  makeDaemonEnv,
  sleep,
  type DaemonEnv,
} from "../daemon/helpers.js";

export const SLOT = "pghoard_test_slot";

export interface StreamingSetup {
  env: DaemonEnv;
  site: string;
}

/** A daemon config streaming from `cluster` in `mode`; HOME is the env dir so ~/.pgpass stays private. */
export async function makeStreamingEnv(
  cluster: PgCluster,
  site: string,
  mode: "pg_receivexlog" | "walreceiver",
  node: Record<string, unknown> = {},
  siteExtra: Record<string, unknown> = {},
): Promise<DaemonEnv> {
  return await makeDaemonEnv({
    [site]: {
      pgDataDirectory: cluster.dataDir,
      extra: {
        active_backup_mode: mode,
        nodes: [{ host: "127.0.0.1", port: cluster.port, user: "postgres", slot: SLOT, ...node }],
        ...siteExtra,
      },
    },
  });
}

export function startDaemon(
  env: DaemonEnv,
  extraEnv: Record<string, string> = {},
  logName?: string,
): Promise<DaemonProcess> {
  return DaemonProcess.start(env, { env: { HOME: env.dir, ...extraEnv }, ...(logName ? { logName } : {}) });
}

export async function storedWal(env: DaemonEnv, site: string): Promise<string[]> {
  return await listStoredNames(env.storageDir, site, "xlog");
}

export async function waitFor<T>(
  what: string,
  fn: () => Promise<T | undefined | false>,
  timeoutMs = 60_000,
  details?: () => string,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${details ? `: ${details()}` : ""}`);
    await sleep(250);
  }
}

export async function waitForStored(
  env: DaemonEnv,
  site: string,
  name: string,
  daemon?: DaemonProcess,
  timeoutMs = 60_000,
): Promise<void> {
  await waitFor(
    `${name} in storage`,
    async () => (await storedWal(env, site)).includes(name),
    timeoutMs,
    () => daemon?.logs().slice(-4000) ?? "",
  );
}

/** Forces a segment switch and returns the name of the segment that was just completed. */
export async function switchWal(cluster: PgCluster): Promise<string> {
  const rows = await cluster.query<{ name: string }>("SELECT pg_walfile_name(pg_switch_wal()) AS name");
  return rows[0].name;
}

export async function slotRestartLsn(cluster: PgCluster, slot = SLOT): Promise<string | null> {
  const rows = await cluster.query<{ restart_lsn: string | null }>(
    "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
    [slot],
  );
  return rows[0]?.restart_lsn ?? null;
}

export async function lsnGreater(cluster: PgCluster, a: string, b: string): Promise<boolean> {
  const rows = await cluster.query<{ gt: boolean }>("SELECT $1::pg_lsn > $2::pg_lsn AS gt", [a, b]);
  return rows[0].gt;
}

/** Full segment names (no `.partial`) in storage, sorted. */
export function fullSegments(names: string[]): string[] {
  return names.filter((n) => /^[0-9A-F]{24}$/.test(n)).sort();
}

/** Asserts `names` has no hole: every segment follows the previous one on its timeline. */
export function assertContiguous(names: string[]): void {
  for (let i = 1; i < names.length; i++) {
    const prev = names[i - 1];
    const cur = names[i];
    if (prev.slice(0, 8) !== cur.slice(0, 8)) continue; // timeline change
    assert.equal(cur, nextWalName(prev), `gap between ${prev} and ${cur}`);
  }
}

/** Every stored segment in `names` decodes to the bytes of the server's copy in pg_wal. */
export async function assertStoredMatchPgWal(
  env: DaemonEnv,
  site: string,
  cluster: PgCluster,
  names: string[],
): Promise<void> {
  for (const name of names) {
    const { data } = await decodeStoredObject(env.storageDir, `${site}/xlog/${name}`, {});
    const original = await readFile(path.join(cluster.dataDir, "pg_wal", name));
    assert.equal(data.length, original.length, `${name}: size`);
    assert.ok(data.equals(original), `${name}: stored bytes differ from pg_wal`);
  }
}

/** Some WAL: a pgbench run (initialised on first use). */
export async function writeLoad(cluster: PgCluster, transactions = 300): Promise<void> {
  const rows = await cluster.query<{ n: string }>(
    "SELECT count(*) AS n FROM pg_tables WHERE tablename = 'pgbench_accounts'",
  );
  if (rows[0].n === "0") await cluster.pgbench(["-i", "-s", "2", "-q"]);
  await cluster.pgbench(["-c", "2", "-t", String(transactions)]);
}

export async function readState(env: DaemonEnv): Promise<Record<string, Record<string, Record<string, unknown>>>> {
  return JSON.parse(await readFile(env.statePath, "utf8")) as Record<string, Record<string, Record<string, unknown>>>;
}

/** All full segments in storage: contiguous, each byte-for-byte the server's copy. Returns their names. */
export async function assertArchiveComplete(env: DaemonEnv, site: string, cluster: PgCluster): Promise<string[]> {
  // Two compressors finish out of order: the newest segment can be stored just before the one
  // preceding it, so a gap gets a little time to close before it counts.
  let names = fullSegments(await storedWal(env, site));
  for (let i = 0; i < 40; i++) {
    try {
      assertContiguous(names);
      break;
    } catch {
      await sleep(250);
      names = fullSegments(await storedWal(env, site));
    }
  }
  assertContiguous(names);
  await assertStoredMatchPgWal(env, site, cluster, names);
  return names;
}

/** PID of the daemon's pg_receivewal child: the one whose command line names this site's spool directory. */
export async function receivewalPid(env: DaemonEnv, site: string): Promise<number | null> {
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = (await readFile(`/proc/${entry}/cmdline`, "utf8")).split("\0");
      if (
        cmdline[0]?.endsWith("pg_receivewal") &&
        cmdline.includes(path.join(env.backupLocation, site, "xlog_incoming"))
      )
        return Number(entry);
    } catch {
      // process went away
    }
  }
  return null;
}
