/**
 * `pghoard_restore drill`: proves a backup restores, and measures how long that takes (the RTO).
 * Restores a basebackup into a scratch directory, starts PostgreSQL on it with WAL fetched
 * straight from the archive (`pghoard_postgres_command --mode restore --config`, no daemon),
 * waits for recovery to end, checks the result with queries, then stops the server and removes
 * everything, also on failure and on Ctrl-C / SIGTERM.
 *
 * Safety: the server listens on a unix socket in the scratch directory only (no TCP), trusts
 * only that socket (our own hba file), and runs with `archive_mode=off` and no
 * `archive_cleanup_command`, so the drill can never write to or prune the production archive.
 * Tablespaces go below the scratch directory, never to their original paths.
 *
 * Root: PostgreSQL refuses to run as root, so a drill started as root runs the server (and the
 * restore_command it calls) as the owner of the site's `pg_data_directory`, else as the `postgres`
 * OS user, and hands the scratch directory to that user; without either it refuses.
 */
import { spawn, execFile, type ChildProcess } from "node:child_process";
import { accessSync, constants as fsConstants, existsSync, openSync, closeSync, readFileSync, statSync } from "node:fs";
import { chmod, mkdir, mkdtemp, readFile, rm, statfs, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import pg from "pg";

import { objectKey } from "../catalog/index.js";
import { findPgBinary } from "../config/pgbinary.js";
import type { PghoardConfig, SiteConfig } from "../config/types.js";
import { isWalName, parseWalName, nextWalName, walNameToLsn } from "../wal/names.js";
import { parseLsn } from "../wal/lsn.js";
import { RestoreError, describeError } from "./errors.js";
import { getBasebackup, listSiteBasebackups, closeStores, type RestoreDeps } from "./get_basebackup.js";
import { selectBasebackup } from "./select.js";
import { findFreePort } from "../common/net.js";
import { parseTimestamp } from "../common/pycompat.js";

const execFileAsync = promisify(execFile);
const GIB = 1024 * 1024 * 1024;
/** Room for WAL beside the restored files: pg_wal is bounded by the max_wal_size we set. */
const WAL_ROOM_BYTES = GIB;
const DRILL_MAX_WAL_SIZE = "512MB";
/** sun_path is 108 bytes on Linux. */
const MAX_SOCKET_PATH = 100;

export interface DrillTarget {
  name?: string;
  time?: string;
  xid?: string;
  lsn?: string;
  immediate?: boolean;
}

export interface DrillOptions {
  config: PghoardConfig;
  /** Absolute path of the config: the restore_command reads it (direct mode). */
  configPath: string;
  site: string;
  basebackup?: string;
  target?: DrillTarget;
  /** Directory the scratch directory is created in; default beside backup_location, else the system temp dir. */
  scratchDir?: string;
  /** Program written into restore_command (default: node and the installed pghoard_postgres_command). */
  postgresCommandBin?: string;
  signal?: AbortSignal;
  /** Give up (stop, clean up, report the failure) after this many seconds; 0/absent: no limit. */
  timeoutSeconds?: number;
  /** Progress lines (human output). */
  progress?(line: string): void;
}

export interface DrillReport {
  site: string;
  success: boolean;
  /** Why the drill failed (one line), null on success. */
  error: string | null;
  /** The WAL segment recovery could not get past, when that is why it failed. */
  failed_segment: string | null;
  basebackup: string | null;
  recovery_target: DrillTarget | null;
  pg_version: string | null;
  started_at: string;
  finished_at: string;
  timings: {
    download_extract_seconds: number | null;
    wal_replay_seconds: number | null;
    checks_seconds: number | null;
    /** Download + extract + replay + checks: the recovery time an operator can plan on. */
    total_seconds: number;
    cleanup_seconds: number;
  };
  basebackup_stored_bytes: number | null;
  basebackup_restored_bytes: number | null;
  wal: {
    segments_replayed: number;
    /** LSN distance from the backup's start segment to the end of redo. */
    bytes_replayed: number | null;
    first_segment: string | null;
    last_segment: string | null;
    /** Newest segment in the archive (on its newest timeline) when the server started. */
    newest_archived_segment: string | null;
  };
  recovered: {
    lsn: string | null;
    timeline: number | null;
    last_transaction_time: string | null;
    in_recovery: boolean | null;
    databases: number | null;
    pg_class_rows: number | null;
  };
  scratch_dir: string | null;
}

interface PgUser {
  uid: number;
  gid: number;
  name: string;
}

const seconds = (ms: number): number => Math.round(ms) / 1000;

/**
 * The directory drills create their scratch directory in: beside `backup_location` (the disk
 * sized for backups), else inside it when its parent is not ours to write (e.g. /var/lib for the
 * `postgres` user), else the system temp dir.
 */
export function defaultScratchBase(config: PghoardConfig): string {
  const writable = (dir: string): boolean => {
    try {
      accessSync(dir, fsConstants.W_OK | fsConstants.X_OK);
      return statSync(dir).isDirectory();
    } catch {
      return false;
    }
  };
  if (config.backup_location) {
    const location = path.resolve(config.backup_location);
    for (const dir of [path.dirname(location), location]) if (writable(dir)) return dir;
  }
  return os.tmpdir();
}

function passwdEntry(name: string): PgUser | null {
  try {
    for (const line of readFileSync("/etc/passwd", "utf8").split("\n")) {
      const fields = line.split(":");
      if (fields[0] === name && fields.length >= 4) return { name, uid: Number(fields[2]), gid: Number(fields[3]) };
    }
  } catch {
    // no passwd file: no such user
  }
  return null;
}

/** Who runs PostgreSQL: ourselves, or when root the owner of pg_data_directory or `postgres`. */
export function drillUser(siteConfig: SiteConfig): PgUser | null {
  if (process.getuid?.() !== 0) return null;
  const dataDir = siteConfig.pg_data_directory;
  if (typeof dataDir === "string" && dataDir) {
    try {
      const st = statSync(dataDir);
      if (st.uid !== 0) {
        const name = readFileSync("/etc/passwd", "utf8")
          .split("\n")
          .map((l) => l.split(":"))
          .find((f) => Number(f[2]) === st.uid)?.[0];
        return { uid: st.uid, gid: st.gid, name: name ?? String(st.uid) };
      }
    } catch {
      // not on this machine
    }
  }
  const postgres = passwdEntry("postgres");
  if (postgres && postgres.uid !== 0) return postgres;
  throw new RestoreError(
    "PostgreSQL refuses to run as root and there is no 'postgres' OS user (nor a non-root owner of pg_data_directory) to run it as; run the drill as the PostgreSQL OS user",
  );
}

/** The newest segment of the archive's newest timeline (the point recovery must reach). */
export function newestSegment(names: string[]): string | null {
  const segments = names.filter(isWalName);
  if (segments.length === 0) return null;
  const newestTimeline = Math.max(...segments.map((n) => parseWalName(n).timeline));
  return (
    segments
      .filter((n) => parseWalName(n).timeline === newestTimeline)
      .sort()
      .at(-1) ?? null
  );
}

/** Segment position without the timeline, comparable across timelines. */
const position = (name: string): string => name.slice(8);

export interface ServerLog {
  restored: string[];
  redoDoneLsn: string | null;
  lastTransactionTime: string | null;
  lines: string[];
}

/** What the server's log (lc_messages=C) says about recovery. */
export function parseServerLog(text: string): ServerLog {
  const lines = text.split("\n");
  const restored: string[] = [];
  let redoDoneLsn: string | null = null;
  let lastTransactionTime: string | null = null;
  for (const line of lines) {
    const r = /restored log file "([0-9A-F]{24})" from archive/.exec(line);
    if (r && !restored.includes(r[1])) restored.push(r[1]);
    const d = /redo done at ([0-9A-F]+\/[0-9A-F]+)/.exec(line);
    if (d) redoDoneLsn = d[1];
    const t = /last completed transaction was at log time (.+)$/.exec(line);
    if (t) lastTransactionTime = t[1].trim();
  }
  return { restored, redoDoneLsn, lastTransactionTime, lines };
}

/** Connection attempts while the server starts are logged as FATAL too; they explain nothing. */
const NOISE = /database system is (starting up|shutting down|in recovery mode)|connection (received|authorized)/;

/** The log line that best says why `segment` could not be used (restore_command output, server errors). */
export function reasonFor(log: ServerLog, segment: string | null): string | null {
  const lines = log.lines.filter((l) => l.trim() !== "" && !NOISE.test(l) && !/restored log file/.test(l));
  const strip = (l: string): string => l.replace(/^\S+ \S+ \S+ \[\d+\] /, "").trim();
  const aboutSegment = segment ? lines.filter((l) => l.includes(segment)) : [];
  const serious = (l: string): boolean => /corrupt|integrity|mismatch|invalid|fail|error|fatal|panic/i.test(l);
  const line =
    aboutSegment.find(serious) ??
    lines.find((l) => /\b(PANIC|FATAL):/.test(l)) ??
    lines.find((l) => /\bERROR:/.test(l)) ??
    aboutSegment[0];
  return line ? strip(line) : null;
}

function tail(text: string, lines = 8): string {
  return text.trim().split("\n").slice(-lines).join(" | ");
}

interface Server {
  child: ChildProcess;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  socketDir: string;
  port: number;
  logFile: string;
}

async function stopServer(server: Server): Promise<void> {
  const done = (ms: number): Promise<boolean> =>
    Promise.race([server.exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms).unref())]);
  if (server.child.exitCode !== null || server.child.signalCode !== null) return;
  // fast shutdown, then immediate, then kill
  for (const [signal, waitMs] of [
    ["SIGINT", 60_000],
    ["SIGQUIT", 10_000],
    ["SIGKILL", 10_000],
  ] as const) {
    try {
      server.child.kill(signal);
    } catch {
      return;
    }
    if (await done(waitMs)) return;
  }
}

async function connect(server: Server, users: string[], databases: string[]): Promise<pg.Client> {
  let lastError: unknown;
  for (const user of users) {
    for (const database of databases) {
      const client = new pg.Client({ host: server.socketDir, port: server.port, user, database });
      try {
        await client.connect();
        return client;
      } catch (err) {
        lastError = err;
        await client.end().catch(() => undefined);
        // starting up / shutting down: the same for every role; wait and retry
        if (/starting up|shutting down|ECONNREFUSED|ENOENT|not (yet )?accepting connections/.test(String(err)))
          throw err;
      }
    }
  }
  throw lastError;
}

function abortError(signal: AbortSignal | undefined): unknown {
  return signal?.reason ?? new RestoreError("Drill interrupted");
}

export async function runDrill(opts: DrillOptions, deps: RestoreDeps): Promise<DrillReport> {
  const started = Date.now();
  const progress = opts.progress ?? ((): void => undefined);
  const siteConfig = opts.config.backup_sites[opts.site];
  const target = opts.target && Object.values(opts.target).some((v) => v) ? opts.target : null;
  const report: DrillReport = {
    site: opts.site,
    success: false,
    error: null,
    failed_segment: null,
    basebackup: null,
    recovery_target: target,
    pg_version: null,
    started_at: new Date(started).toISOString(),
    finished_at: "",
    timings: {
      download_extract_seconds: null,
      wal_replay_seconds: null,
      checks_seconds: null,
      total_seconds: 0,
      cleanup_seconds: 0,
    },
    basebackup_stored_bytes: null,
    basebackup_restored_bytes: null,
    wal: {
      segments_replayed: 0,
      bytes_replayed: null,
      first_segment: null,
      last_segment: null,
      newest_archived_segment: null,
    },
    recovered: {
      lsn: null,
      timeline: null,
      last_transaction_time: null,
      in_recovery: null,
      databases: null,
      pg_class_rows: null,
    },
    scratch_dir: null,
  };
  let scratch: string | undefined;
  let extraSocketDir: string | undefined;
  let server: Server | undefined;
  let client: pg.Client | undefined;
  let interrupted: unknown;
  const timeout = opts.timeoutSeconds ? AbortSignal.timeout(opts.timeoutSeconds * 1000) : undefined;
  const signal = AbortSignal.any([opts.signal, timeout].filter((x): x is AbortSignal => x !== undefined));
  let startSegment: string | undefined;
  /** Between the server's start and the end of recovery: a failure there is a WAL problem. */
  let replaying = false;
  try {
    const user = drillUser(siteConfig);
    const base = path.resolve(opts.scratchDir ?? defaultScratchBase(opts.config));

    // Which backup, and is there room for it?
    const { backups, stores } = await listSiteBasebackups(opts.config, opts.site, deps);
    let selected;
    try {
      const targetTime = target?.time ? parseTimestamp(target.time) : null;
      selected = selectBasebackup(backups, {
        name: opts.basebackup ?? "latest",
        recoveryTargetTime: targetTime,
      }).backup;
    } finally {
      await closeStores(stores);
    }
    report.basebackup = selected.name;
    const meta = selected.metadata;
    startSegment = meta["start-wal-segment"];
    report.basebackup_stored_bytes = Number(meta["total-size-enc"] ?? selected.size) || selected.size;
    const plain = Number(meta["total-size-plain"] ?? meta["original-file-size"]);
    report.basebackup_restored_bytes = Number.isFinite(plain) && plain > 0 ? plain : null;
    // Unknown original size: assume the stored size compressed 1:4.
    const needed = (report.basebackup_restored_bytes ?? report.basebackup_stored_bytes * 4) + WAL_ROOM_BYTES;
    await mkdir(base, { recursive: true });
    const fsStats = await statfs(base);
    const free = Number(fsStats.bavail) * Number(fsStats.bsize);
    if (free < needed) {
      throw new RestoreError(
        `Not enough free space in '${base}' for a drill of ${selected.name}: ${Math.ceil(needed / 1024 ** 2)} MiB needed, ${Math.floor(free / 1024 ** 2)} MiB free (choose another --scratch-dir)`,
      );
    }

    scratch = await mkdtemp(path.join(base, "pghoard-drill-"));
    report.scratch_dir = scratch;
    const dataDir = path.join(scratch, "data");
    if (user) await chmod(scratch, 0o700);
    if (signal.aborted) throw abortError(signal);

    // 1. Download and extract.
    progress(`Restoring ${selected.name} into ${dataDir}`);
    const restoreStart = Date.now();
    const sink = { write: () => true } as unknown as NodeJS.WritableStream;
    await getBasebackup(
      {
        config: opts.config,
        site: opts.site,
        targetDir: dataDir,
        basebackup: selected.name,
        tablespaceRelocateDir: path.join(scratch, "tablespaces"),
        restoreToPrimary: true,
        recoveryTargetAction: target ? "promote" : undefined,
        recoveryTargetName: target?.name,
        recoveryTargetTime: target?.time,
        recoveryTargetXid: target?.xid,
        recoveryTargetLsn: target?.lsn,
        recoveryTargetImmediate: target?.immediate,
        cancelPreserveOnSuccess: true,
        // WAL straight from the object store, exactly as a restore by get-basebackup would fetch it.
        restoreCommandMode: "direct",
        configPath: opts.configPath,
        pghoardPostgresCommandBin: opts.postgresCommandBin,
        out: sink,
        isTTY: false,
        signal,
      },
      deps,
    );
    report.timings.download_extract_seconds = seconds(Date.now() - restoreStart);
    const pgVersion = (await readFile(path.join(dataDir, "PG_VERSION"), "utf8")).trim();
    report.pg_version = pgVersion;

    // 2. The server binaries of the backup's major version.
    const binDir = await postgresBinDir(siteConfig, opts.site, pgVersion);

    // 3. Our own settings (command line wins over everything the backup carries).
    const port = await findFreePort();
    let socketDir = path.join(scratch, "sock");
    if (`${socketDir}/.s.PGSQL.${port}`.length > MAX_SOCKET_PATH) {
      extraSocketDir = await mkdtemp(path.join(os.tmpdir(), "pghoard-drill-sock-"));
      socketDir = extraSocketDir;
    } else {
      await mkdir(socketDir, { mode: 0o700 });
    }
    const hbaFile = path.join(scratch, "pg_hba.drill.conf");
    const identFile = path.join(scratch, "pg_ident.drill.conf");
    const confFile = path.join(scratch, "postgresql.drill.conf");
    await writeFile(hbaFile, "# pghoard drill: only the private unix socket, trusted\nlocal all all trust\n");
    await writeFile(identFile, "");
    await writeFile(confFile, "# pghoard drill: settings are on the postgres command line\n");
    const logFile = path.join(scratch, "postgres.log");
    if (user) {
      await execFileAsync("chown", ["-R", `${user.uid}:${user.gid}`, scratch]);
      if (extraSocketDir) await execFileAsync("chown", [`${user.uid}:${user.gid}`, extraSocketDir]);
    }

    // 4. The newest archived WAL: recovery must get there.
    report.wal.newest_archived_segment = await newestArchivedSegment(opts, deps, selected.site ?? opts.site);
    if (signal.aborted) throw abortError(signal);

    // 5. Start PostgreSQL and wait until recovery has ended.
    const settings: Record<string, string> = {
      config_file: confFile,
      hba_file: hbaFile,
      ident_file: identFile,
      port: String(port),
      listen_addresses: "",
      unix_socket_directories: socketDir,
      unix_socket_permissions: "0700",
      archive_mode: "off",
      archive_command: "",
      archive_cleanup_command: "",
      recovery_target_timeline: "latest",
      hot_standby: "off",
      ssl: "off",
      max_wal_size: DRILL_MAX_WAL_SIZE,
      lc_messages: "C",
      log_min_messages: "warning",
      logging_collector: "off",
      log_destination: "stderr",
      log_line_prefix: "%m [%p] ",
      cluster_name: "pghoard-drill",
    };
    const argv = ["-D", dataDir, ...Object.entries(settings).flatMap(([k, v]) => ["-c", `${k}=${v}`])];
    progress(`Starting PostgreSQL ${pgVersion} (${binDir}) on socket ${socketDir}, port ${port}`);
    const replayStart = Date.now();
    const logFd = openSync(logFile, "a");
    let child: ChildProcess;
    try {
      child = spawn(path.join(binDir, "postgres"), argv, {
        cwd: dataDir,
        // own process group: a Ctrl-C reaches us, and we stop the server in order
        detached: true,
        stdio: ["ignore", logFd, logFd],
        ...(user ? { uid: user.uid, gid: user.gid } : {}),
        env: { ...process.env, ...(user ? { HOME: dataDir, USER: user.name, LOGNAME: user.name } : {}) },
      });
    } finally {
      closeSync(logFd);
    }
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      child.once("exit", (code, signal) => resolve({ code, signal }));
      child.once("error", () => resolve({ code: -1, signal: null }));
    });
    server = { child, exited, socketDir, port, logFile };
    replaying = true;
    const users = [...new Set([siteConfig.nodes?.[0]?.user, user?.name ?? os.userInfo().username, "postgres"])].filter(
      (u): u is string => typeof u === "string" && u !== "",
    );
    const databases = [...new Set([siteConfig.nodes?.[0]?.dbname, "postgres", "template1"])].filter(
      (d): d is string => typeof d === "string" && d !== "",
    );
    client = await waitForRecoveryEnd(server, users, databases, signal, startSegment);
    replaying = false;
    report.timings.wal_replay_seconds = seconds(Date.now() - replayStart);

    // 6. Checks.
    const checksStart = Date.now();
    const state = await client.query<{ in_recovery: boolean; lsn: string; walfile: string }>(
      "SELECT pg_is_in_recovery() AS in_recovery, pg_current_wal_lsn()::text AS lsn, pg_walfile_name(pg_current_wal_lsn()) AS walfile",
    );
    report.recovered.in_recovery = state.rows[0].in_recovery;
    report.recovered.timeline = Number.parseInt(state.rows[0].walfile.slice(0, 8), 16);
    const dbs = await client.query<{ datname: string }>(
      "SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname",
    );
    report.recovered.databases = dbs.rows.length;
    let relations = 0;
    const connected = client.database;
    for (const { datname } of dbs.rows) {
      const db: pg.Client =
        datname === connected ? client : new pg.Client({ host: socketDir, port, user: client.user, database: datname });
      try {
        if (db !== client) await db.connect();
        const rows = await db.query<{ n: string }>("SELECT count(*)::text AS n FROM pg_class");
        relations += Number(rows.rows[0].n);
      } finally {
        if (db !== client) await db.end().catch(() => undefined);
      }
    }
    report.recovered.pg_class_rows = relations;
    report.timings.checks_seconds = seconds(Date.now() - checksStart);

    const log = parseServerLog(await readFile(logFile, "utf8").catch(() => ""));
    applyLog(report, log, startSegment);
    if (report.recovered.in_recovery) throw new RestoreError("The server is still in recovery after recovery ended");
    if (relations === 0) throw new RestoreError("No relations in pg_class: the restored cluster is empty");
    const newest = report.wal.newest_archived_segment;
    const last = report.wal.last_segment;
    if (!target && newest && (!last || position(last) < position(newest))) {
      const failed = last ? nextWalName(last) : (meta["start-wal-segment"] ?? newest);
      report.failed_segment = failed;
      const why = reasonFor(log, failed);
      throw new RestoreError(
        `Recovery stopped ${last ? `after WAL segment ${last}` : "before the first WAL segment"} but the archive reaches ${newest}: segment ${failed} could not be restored${why ? ` (${why})` : ""}`,
      );
    }
    report.success = true;
  } catch (err) {
    if (opts.signal?.aborted) interrupted = abortError(opts.signal);
    report.error = timeout?.aborted
      ? `The drill did not finish within --timeout ${opts.timeoutSeconds} s`
      : err instanceof RestoreError
        ? err.message
        : describeError(err);
    if (server) {
      applyLog(report, parseServerLog(await readFile(server.logFile, "utf8").catch(() => "")), startSegment);
      if (replaying && !interrupted && !timeout?.aborted && !report.failed_segment) {
        const last = report.wal.last_segment;
        report.failed_segment = last ? nextWalName(last) : (startSegment ?? null);
      }
    }
  } finally {
    const cleanupStart = Date.now();
    report.timings.total_seconds = seconds(cleanupStart - started);
    await client?.end().catch(() => undefined);
    if (server) await stopServer(server);
    if (scratch) await removeScratch(scratch);
    if (extraSocketDir) await removeScratch(extraSocketDir);
    report.timings.cleanup_seconds = seconds(Date.now() - cleanupStart);
    report.finished_at = new Date().toISOString();
  }
  if (interrupted) throw interrupted;
  return report;
}

function applyLog(report: DrillReport, log: ServerLog, startSegment: string | undefined): void {
  report.wal.segments_replayed = log.restored.length;
  report.wal.first_segment = log.restored[0] ?? null;
  report.wal.last_segment = log.restored.at(-1) ?? null;
  report.recovered.lsn = log.redoDoneLsn;
  report.recovered.last_transaction_time = log.lastTransactionTime;
  if (log.redoDoneLsn && startSegment && isWalName(startSegment)) {
    const bytes = parseLsn(log.redoDoneLsn) - walNameToLsn(startSegment);
    report.wal.bytes_replayed = bytes > 0n ? Number(bytes) : 0;
  }
}

async function removeScratch(dir: string): Promise<void> {
  try {
    await rm(dir, { recursive: true, force: true, maxRetries: 3 });
  } catch (err) {
    process.stderr.write(`Could not remove the drill's scratch directory '${dir}': ${describeError(err)}\n`);
  }
}

/** The directory of `postgres`/`pg_ctl` for the backup's major version. */
async function postgresBinDir(siteConfig: SiteConfig, site: string, major: string): Promise<string> {
  let binary;
  try {
    binary = await findPgBinary(siteConfig, "pg_basebackup", { wantedMajor: major, siteName: site });
  } catch {
    throw new RestoreError(
      `No PostgreSQL ${major} server binaries found (pg_bin_directory of site '${site}', /usr/lib/postgresql/${major}/bin, /usr/pgsql-${major}/bin, $PATH): the backup needs PostgreSQL ${major}`,
    );
  }
  const dir = path.dirname(binary.path);
  if (!existsSync(path.join(dir, "postgres"))) {
    throw new RestoreError(
      `${dir} has pg_basebackup ${major} but no postgres server binary: install the PostgreSQL ${major} server package`,
    );
  }
  return dir;
}

async function newestArchivedSegment(opts: DrillOptions, deps: RestoreDeps, site: string): Promise<string | null> {
  const prefix = opts.config.backup_sites[site]?.prefix ?? site;
  const storage = await deps.createStorage(site);
  try {
    const objects = await storage.list(objectKey(prefix, "xlog"));
    return newestSegment(objects.map((o) => path.posix.basename(o.name)));
  } finally {
    await storage.close().catch(() => undefined);
  }
}

async function waitForRecoveryEnd(
  server: Server,
  users: string[],
  databases: string[],
  signal: AbortSignal | undefined,
  startSegment: string | undefined,
): Promise<pg.Client> {
  let exitedWith: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  void server.exited.then((e) => (exitedWith = e));
  for (;;) {
    if (signal?.aborted) throw abortError(signal);
    if (exitedWith) {
      const text = await readFile(server.logFile, "utf8").catch(() => "");
      const log = parseServerLog(text);
      const last = log.restored.at(-1);
      const why = reasonFor(log, last ? nextWalName(last) : (startSegment ?? null));
      const how = exitedWith.signal ? `signal ${exitedWith.signal}` : `exit code ${exitedWith.code}`;
      throw new RestoreError(`PostgreSQL exited before recovery ended (${how}): ${why ?? tail(text)}`);
    }
    try {
      const client = await connect(server, users, databases);
      const rows = await client.query<{ r: boolean }>("SELECT pg_is_in_recovery() AS r");
      if (!rows.rows[0].r) return client;
      await client.end().catch(() => undefined);
    } catch (err) {
      if (!/starting up|ECONNREFUSED|ENOENT|not (yet )?accepting connections|hot standby/.test(String(err))) {
        throw new RestoreError(`Cannot connect to the restored cluster: ${describeError(err)}`);
      }
    }
    await new Promise((r) => setTimeout(r, 400));
  }
}

/** Human lines of a report. */
export function formatDrillReport(r: DrillReport): string {
  const out: string[] = [];
  const t = r.timings;
  const s = (v: number | null): string => (v === null ? "-" : `${v.toFixed(1)} s`);
  out.push(`Restore drill of site '${r.site}': ${r.success ? "OK" : "FAILED"}`);
  if (r.basebackup) out.push(`  basebackup:          ${r.basebackup}`);
  if (r.recovery_target) out.push(`  recovery target:     ${JSON.stringify(r.recovery_target)}`);
  out.push(`  download + extract:  ${s(t.download_extract_seconds)}`);
  out.push(`  WAL replay:          ${s(t.wal_replay_seconds)} (${r.wal.segments_replayed} segments)`);
  out.push(`  checks:              ${s(t.checks_seconds)}`);
  out.push(`  total (RTO):         ${s(t.total_seconds)}`);
  if (r.basebackup_stored_bytes !== null) {
    const restored = r.basebackup_restored_bytes === null ? "" : `, ${r.basebackup_restored_bytes} restored`;
    out.push(`  basebackup bytes:    ${r.basebackup_stored_bytes} stored${restored}`);
  }
  if (r.wal.bytes_replayed !== null) out.push(`  WAL bytes replayed:  ${r.wal.bytes_replayed}`);
  if (r.wal.last_segment) out.push(`  WAL segments:        ${r.wal.first_segment} .. ${r.wal.last_segment}`);
  if (r.wal.newest_archived_segment) out.push(`  newest archived:     ${r.wal.newest_archived_segment}`);
  if (r.recovered.lsn) out.push(`  recovered to:        ${r.recovered.lsn} (timeline ${r.recovered.timeline ?? "?"})`);
  if (r.recovered.last_transaction_time) out.push(`  last transaction:    ${r.recovered.last_transaction_time}`);
  if (r.recovered.pg_class_rows !== null) {
    out.push(`  checked:             ${r.recovered.databases} databases, ${r.recovered.pg_class_rows} pg_class rows`);
  }
  if (r.failed_segment) out.push(`  failed segment:      ${r.failed_segment}`);
  return out.join("\n") + "\n";
}
