/**
 * Integration-test helpers for basebackups: a source cluster archiving through a daemon
 * (archive_command), backups requested over HTTP, restore with the real pghoard_restore, and a
 * restored cluster recovering to a named restore point with WAL served by the daemon.
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readFile, readdir, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { chownToPostgres, findFreePort, makeTempDir, startCluster, type PgCluster } from "../helpers/pgcluster.js";
import { repoRoot } from "../helpers/paths.js";
import {
  DaemonProcess,
  httpRequest,
  makeDaemonEnv,
  makeKeyPair,
  postgresCommandBin,
  sleep,
  switchWal,
  waitArchived,
  type DaemonEnv,
  type KeyPair,
} from "../daemon/helpers.js";

export const restoreBin = path.join(repoRoot, "bin", "pghoard_restore.js");

export interface Scenario {
  site: string;
  cluster: PgCluster;
  env: DaemonEnv;
  daemon: DaemonProcess;
  keys: KeyPair;
  keyId: string;
  tablespaceDir?: string;
  cleanup(): Promise<void>;
}

export async function startScenario(opts: {
  site: string;
  siteExtra: Record<string, unknown>;
  configExtra?: Record<string, unknown>;
  tablespace?: boolean;
  /** Server binaries of another PostgreSQL version (test/versions/). */
  binDir?: string;
}): Promise<Scenario> {
  const port = await findFreePort();
  const keys = makeKeyPair();
  const keyId = `${opts.site}-key`;
  const cluster = await startCluster({
    archiveCommand: `${process.execPath} ${postgresCommandBin} --mode archive --port ${port} --site ${opts.site} --xlog %f`,
    settings: { checkpoint_timeout: "30s" },
    binDir: opts.binDir,
  });
  let tablespaceDir: string | undefined;
  if (opts.tablespace) {
    tablespaceDir = path.join(await makeTempDir("bb-ts"), "ts1");
    await mkdir(tablespaceDir);
    await chownToPostgres(tablespaceDir);
    await cluster.query(`CREATE TABLESPACE ts1 LOCATION '${tablespaceDir}'`);
  }
  const env = await makeDaemonEnv(
    {
      [opts.site]: {
        pgDataDirectory: cluster.dataDir,
        keyId,
        keys,
        extra: { nodes: [cluster.connectionInfo()], basebackup_interval_hours: null, ...opts.siteExtra },
      },
    },
    { http_port: port, log_level: "INFO", ...opts.configExtra },
  );
  const scenario: Scenario = {
    site: opts.site,
    cluster,
    env,
    daemon: await DaemonProcess.start(env),
    keys,
    keyId,
    tablespaceDir,
    async cleanup() {
      // The daemon of now: tests restart it with other settings and replace `daemon`.
      await scenario.daemon.stop().catch(() => undefined);
      await cluster.destroy().catch(() => undefined);
    },
  };
  return scenario;
}

/** Changes `backup_sites.<site>` of the config, sends SIGHUP and waits until the daemon applied it. */
export async function reloadSite(
  env: DaemonEnv,
  daemon: DaemonProcess,
  site: string,
  change: (siteConfig: Record<string, unknown>) => void,
): Promise<void> {
  const before = daemon.logs().split("Configuration reloaded").length;
  change((env.config.backup_sites as Record<string, Record<string, unknown>>)[site]!);
  await env.writeConfig();
  daemon.child.kill("SIGHUP");
  const deadline = Date.now() + 30_000;
  while (daemon.logs().split("Configuration reloaded").length === before) {
    if (Date.now() > deadline) throw new Error(`config not reloaded: ${daemon.logs().slice(-3000)}`);
    await sleep(100);
  }
}

export interface StoredEntry {
  name: string;
  metadata: Record<string, string>;
  size: number;
}

/** Objects of one type directory of the local store (published ones: with a sidecar). */
export async function listStore(env: DaemonEnv, site: string, type: string, sub = ""): Promise<StoredEntry[]> {
  const dir = path.join(env.storageDir, site, type, sub);
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return [];
  }
  const result: StoredEntry[] = [];
  for (const name of names.sort()) {
    if (name.endsWith(".metadata") || name.startsWith(".") || name.includes(".metadata_tmp")) continue;
    const file = path.join(dir, name);
    if (!existsSync(`${file}.metadata`)) continue;
    const metadata = JSON.parse(await readFile(`${file}.metadata`, "utf8")) as Record<string, string>;
    const { size } = await stat(file);
    result.push({ name, metadata, size });
  }
  return result;
}

async function readState(env: DaemonEnv): Promise<Record<string, unknown>> {
  try {
    return JSON.parse(await readFile(env.statePath, "utf8")) as Record<string, unknown>;
  } catch {
    return {};
  }
}

/**
 * PUT /<site>/archive/basebackup, then waits until the daemon has finished it (and run retention).
 * `list` lists the site's basebackup/ objects (default: the local store).
 */
export async function requestBackup(
  s: Scenario,
  timeoutMs = 240_000,
  list: () => Promise<StoredEntry[]> = () => listStore(s.env, s.site, "basebackup"),
): Promise<StoredEntry> {
  const before = new Set((await list()).map((e) => e.name));
  const res = await httpRequest(s.env.port, "PUT", `/${s.site}/archive/basebackup`);
  if (res.status >= 300) throw new Error(`basebackup request failed: ${res.status} ${res.body}`);
  const deadline = Date.now() + timeoutMs;
  let created: StoredEntry | undefined;
  for (;;) {
    if (!created) created = (await list()).find((e) => !before.has(e.name));
    const state = await readState(s.env);
    const bb = (state.pg_basebackups as Record<string, { running: boolean }> | undefined)?.[s.site];
    if (created && bb && bb.running === false) return created;
    if (Date.now() > deadline)
      throw new Error(`basebackup did not finish in time; daemon log:\n${s.daemon.logs().slice(-5000)}`);
    await sleep(250);
  }
}

export const SNAPSHOT_SQL = `
  SELECT (SELECT count(*) FROM pgbench_accounts)::text AS accounts,
         (SELECT sum(abalance) FROM pgbench_accounts)::text AS abalance,
         (SELECT count(*) FROM pgbench_history)::text AS history,
         (SELECT sum(bbalance) FROM pgbench_branches)::text AS bbalance,
         (SELECT md5(string_agg(id::text || v, ',' ORDER BY id)) FROM marker)::text AS marker`;

export const TS_SQL = "SELECT count(*)::text AS n, md5(string_agg(id::text || v, ',' ORDER BY id)) AS h FROM ts_t";

/** Runs pghoard_restore get-basebackup; returns its output. */
export async function runRestore(args: string[]): Promise<string> {
  return await new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [restoreBin, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (out += d.toString()));
    child.once("error", reject);
    child.once("exit", (code) =>
      code === 0 ? resolve(out) : reject(new Error(`pghoard_restore exited ${code}:\n${out}`)),
    );
  });
}

/**
 * Restores the latest backup with pghoard_restore to a new directory, starts PostgreSQL with
 * restore_command served by a second, recovery-only daemon on the same store (the daemon only
 * writes WAL into its site's pg_data_directory), recovers to `restorePoint` and returns the cluster.
 */
export async function restoreAndRecover(
  s: Scenario,
  /** A restore point name, or other target options (e.g. `["--recovery-target-time", T]`). */
  restorePoint: string | string[],
): Promise<{ cluster: PgCluster; daemon: DaemonProcess }> {
  const workDir = await makeTempDir("bb-restore");
  const dataDir = path.join(workDir, "data");
  const port = await findFreePort();
  const renv = await makeDaemonEnv(
    { [s.site]: { pgDataDirectory: dataDir, keyId: s.keyId, keys: s.keys } },
    { http_port: port, log_level: "INFO" },
  );
  const sites = renv.config.backup_sites as Record<string, Record<string, unknown>>;
  // the source site's store (by default the local store in s.env.storageDir)
  sites[s.site].object_storage = (s.env.config.backup_sites as Record<string, Record<string, unknown>>)[
    s.site
  ].object_storage;
  sites[s.site].active = false;
  await renv.writeConfig();
  const args = [
    "get-basebackup",
    "--config",
    renv.configPath,
    "--site",
    s.site,
    "--target-dir",
    dataDir,
    ...(typeof restorePoint === "string" ? ["--recovery-target-name", restorePoint] : restorePoint),
    "--recovery-target-action",
    "promote",
    "--restore-to-primary",
    "--restore-command-mode",
    "daemon",
    "--pghoard-postgres-command-bin",
    `${process.execPath} ${postgresCommandBin}`,
  ];
  let tsTarget: string | undefined;
  if (s.tablespaceDir) {
    tsTarget = path.join(workDir, "ts1-restored");
    await mkdir(tsTarget);
    args.push("--tablespace-dir", `ts1=${tsTarget}`);
  }
  await runRestore(args);
  if (tsTarget) await chownToPostgres(tsTarget);
  await writeFile(path.join(dataDir, "recovery.signal"), "");
  const daemon = await DaemonProcess.start(renv);
  const cluster = await startCluster({
    dataDir,
    noStart: true,
    settings: { archive_mode: "off" },
    binDir: s.cluster.binDir,
  });
  try {
    await cluster.start();
    await cluster.waitForRecoveryEnd(180_000);
  } catch (err) {
    await daemon.stop();
    throw new Error(`${String(err)}\n--- restore daemon log ---\n${daemon.logs().slice(-3000)}`);
  }
  return { cluster, daemon };
}

/** Writes after-backup data, a restore point, more changes that must not survive, and archives it all. */
export async function makeRestorePoint(
  s: Scenario,
  withTablespace: boolean,
): Promise<{ expected: Record<string, unknown>; expectedTs?: Record<string, unknown> }> {
  const c = s.cluster;
  await c.query("INSERT INTO marker SELECT i, 'after-backup-' || i FROM generate_series(1001, 1100) i");
  if (withTablespace) await c.query("INSERT INTO ts_t SELECT i, 'after-' || i FROM generate_series(5001, 5100) i");
  const expected = (await c.query(SNAPSHOT_SQL))[0];
  const expectedTs = withTablespace ? (await c.query(TS_SQL))[0] : undefined;
  await c.query("SELECT pg_create_restore_point('rp1')");
  await c.query("INSERT INTO marker SELECT i, 'too-late' FROM generate_series(2001, 2100) i");
  await c.query("UPDATE pgbench_accounts SET abalance = abalance + 1000 WHERE aid <= 100");
  if (withTablespace) await c.query("DELETE FROM ts_t WHERE id <= 100");
  const last = await switchWal(c);
  await waitArchived(c, last);
  return { expected, expectedTs };
}

export async function prepareData(s: Scenario, scale: number, withTablespace: boolean): Promise<void> {
  const c = s.cluster;
  await c.pgbench(["-i", "-s", String(scale), "-q"]);
  await c.query("CREATE TABLE marker (id int PRIMARY KEY, v text)");
  await c.query("INSERT INTO marker SELECT i, 'before-backup-' || i FROM generate_series(1, 1000) i");
  if (withTablespace) {
    await c.query("CREATE TABLE ts_t (id int PRIMARY KEY, v text) TABLESPACE ts1");
    await c.query("INSERT INTO ts_t SELECT i, repeat(md5(i::text), 10) FROM generate_series(1, 5000) i");
  }
  await c.query("CHECKPOINT");
}

/**
 * Makes the cluster's archive_command store a segment only while a gate file exists (created
 * open); returns its path. Without the work-ahead, removing it holds a backup after its uploads,
 * before its control object (the end-segment check).
 */
export async function installArchiveGate(s: Scenario, name: string): Promise<string> {
  const gateDir = await makeTempDir(name);
  await chownToPostgres(gateDir);
  const gate = path.join(gateDir, "open");
  await writeFile(gate, "");
  const [{ archive_command: command }] = await s.cluster.query<{ archive_command: string }>("SHOW archive_command");
  await s.cluster.query(`ALTER SYSTEM SET archive_command = '${`test -f ${gate} && ${command}`.replace(/'/g, "''")}'`);
  await s.cluster.query("SELECT pg_reload_conf()");
  return gate;
}

/** Relative path → sha256 of every file below `dir` (whose relative path passes `keep`). */
export async function treeDigest(
  dir: string,
  keep: (rel: string) => boolean = () => true,
): Promise<Map<string, string>> {
  const result = new Map<string, string>();
  const walk = async (rel: string): Promise<void> => {
    for (const entry of await readdir(path.join(dir, rel), { withFileTypes: true })) {
      const child = path.join(rel, entry.name);
      if (entry.isDirectory()) await walk(child);
      else if (keep(child))
        result.set(
          child,
          createHash("sha256")
            .update(await readFile(path.join(dir, child)))
            .digest("hex"),
        );
    }
  };
  await walk("");
  return result;
}

/** Sorted names in `dir`; none when it does not exist. */
export async function dirEntries(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).sort();
  } catch {
    return [];
  }
}

/** Polls `condition` for up to 2 minutes; the error shows the end of `logs()`. */
export async function waitUntil(what: string, condition: () => Promise<boolean>, logs: () => string): Promise<void> {
  const deadline = Date.now() + 120_000;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}:\n${logs().slice(-4000)}`);
    await sleep(200);
  }
}

export { makeKeyPair };
