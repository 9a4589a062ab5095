/**
 * Throwaway PostgreSQL clusters for integration tests.
 *
 * Each cluster lives in its own temp directory (data dir, socket dir, log file), listens on a
 * random free port on 127.0.0.1 and trusts every local/loopback connection, including
 * replication. initdb refuses to run as root, so when the test process is root every
 * PostgreSQL binary runs as the `postgres` OS user via `runuser` and the directories it
 * touches are chowned to that user.
 *
 * Clusters still running when the process exits (a failed test, a missing `after`) are
 * stopped by an exit hook so no postmaster outlives the test run.
 */
import { execFile, spawn, spawnSync } from "node:child_process";
import { existsSync, rmSync } from "node:fs";
import { appendFile, chmod, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import pg from "pg";
import { findFreePort } from "../../src/common/net.js";

export { findFreePort };

const execFileAsync = promisify(execFile);

export const defaultPgBinDir = process.env.PG_BIN_DIR ?? "/usr/lib/postgresql/15/bin";
export const runAsPostgres = typeof process.getuid === "function" && process.getuid() === 0;

export interface PgClusterOptions {
  /** Extra postgresql.conf settings (override the defaults below). Values are quoted for you. */
  settings?: Record<string, string>;
  /** Sets archive_command and turns archive_mode on. Runs as `postgres` when tests run as root. */
  archiveCommand?: string;
  /** Sets restore_command. No signal file is created: write recovery.signal/standby.signal yourself. */
  restoreCommand?: string;
  /** Start on an existing (e.g. restored) PGDATA instead of a fresh one; implies `initdb: false`. */
  dataDir?: string;
  /** Run initdb (default: true unless `dataDir` is given). */
  initdb?: boolean;
  /** pg_hba.conf lines placed before the default trust rules (first match wins). */
  hba?: string[];
  /** Server log to `<baseDir>/postgres.log` (default true); false discards it. */
  logToFile?: boolean;
  /** Extra initdb arguments, e.g. `["--data-checksums"]`. */
  initdbArgs?: string[];
  /** Do not start the server yet (call `start()`). */
  noStart?: boolean;
  /**
   * Server binaries (initdb, pg_ctl, postgres) of another version (default `PG_BIN_DIR` or
   * Debian's 15); client programs missing there (pgbench, pg_basebackup) come from the default.
   */
  binDir?: string;
}

export interface ExecOptions {
  env?: Record<string, string>;
  cwd?: string;
  /** Written to the process's stdin. */
  input?: string | Buffer;
  timeoutMs?: number;
}

export interface PgCluster {
  dataDir: string;
  baseDir: string;
  port: number;
  host: "127.0.0.1";
  user: "postgres";
  binDir: string;
  runAsPostgres: boolean;
  /** Unix socket directory. */
  socketDir: string;
  logFile: string;
  /** libpq keywords: host, port, user, dbname (+ extra). */
  connectionInfo(extra?: Record<string, string | number>): Record<string, string | number>;
  /** libpq keyword/value string, e.g. `host=127.0.0.1 port=5433 user=postgres dbname=postgres`. */
  connectionString(extra?: Record<string, string | number>): string;
  query<T = Record<string, unknown>>(sql: string, params?: unknown[], db?: string): Promise<T[]>;
  /** Runs a PostgreSQL binary (name in binDir, or an absolute path) as postgres when root. */
  exec(bin: string, args: string[], opts?: ExecOptions): Promise<{ stdout: string; stderr: string }>;
  /** Runs pgbench against this cluster's `postgres` database; returns stdout + stderr. */
  pgbench(args: string[]): Promise<string>;
  start(): Promise<void>;
  stop(mode?: "fast" | "immediate"): Promise<void>;
  restart(): Promise<void>;
  /** Waits until `pg_is_in_recovery()` is false (archive recovery / promotion finished). */
  waitForRecoveryEnd(timeoutMs?: number): Promise<void>;
  logContents(): Promise<string>;
  /** Stops the server and removes `baseDir` (a caller-supplied `dataDir` outside it is left alone). */
  destroy(): Promise<void>;
}

/** A temp directory every user can traverse and write, so `postgres` can use it when tests run as root. */
export async function makeTempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix.endsWith("-") ? prefix : `${prefix}-`));
  if (runAsPostgres) await chmod(dir, 0o777);
  return dir;
}

/** Recursively hands `target` to the postgres user; no-op when not root. */
export async function chownToPostgres(target: string): Promise<void> {
  if (!runAsPostgres) return;
  await execFileAsync("chown", ["-R", "postgres:postgres", target]);
}

/** True when nothing listens on 127.0.0.1:`port`. */
export async function isPortFree(port: number): Promise<boolean> {
  return await new Promise<boolean>((resolve) => {
    const server = net.createServer();
    server.once("error", () => resolve(false));
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)));
  });
}

function quoteSetting(value: string): string {
  return `'${value.replace(/\\/g, "\\\\").replace(/'/g, "''")}'`;
}

/** argv that runs `binary args` as postgres when we are root. */
function commandLine(binary: string, args: string[]): [string, string[]] {
  return runAsPostgres ? ["runuser", ["-u", "postgres", "--", binary, ...args]] : [binary, args];
}

async function run(
  binary: string,
  args: string[],
  opts: ExecOptions = {},
): Promise<{ stdout: string; stderr: string }> {
  const [cmd, argv] = commandLine(binary, args);
  return await new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, {
      cwd: opts.cwd ?? os.tmpdir(),
      env: { ...process.env, ...opts.env },
      stdio: ["pipe", "pipe", "pipe"],
    });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout.on("data", (d: Buffer) => stdout.push(d));
    child.stderr.on("data", (d: Buffer) => stderr.push(d));
    const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 300_000);
    child.once("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      const result = { stdout: Buffer.concat(stdout).toString("utf8"), stderr: Buffer.concat(stderr).toString("utf8") };
      if (code === 0) {
        resolve(result);
      } else {
        const how = signal ? `signal ${signal}` : `exit code ${code}`;
        const error = new Error(
          `${path.basename(binary)} ${args.join(" ")} failed (${how}): ${result.stderr || result.stdout}`,
        );
        reject(Object.assign(error, result));
      }
    });
    child.stdin.on("error", () => undefined); // the child may exit without reading its input
    child.stdin.end(opts.input);
  });
}

const liveClusters = new Set<ClusterImpl>();
let exitHookInstalled = false;

function stopAllSync(): void {
  for (const cluster of liveClusters) {
    const [cmd, argv] = commandLine(path.join(cluster.binDir, "pg_ctl"), [
      "-D",
      cluster.dataDir,
      "-m",
      "immediate",
      "-w",
      "stop",
    ]);
    spawnSync(cmd, argv, { stdio: "ignore", timeout: 30_000 });
    rmSync(cluster.baseDir, { recursive: true, force: true });
  }
  liveClusters.clear();
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once("exit", stopAllSync);
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    const handler = (): void => {
      stopAllSync();
      process.off(signal, handler);
      process.kill(process.pid, signal);
    };
    process.on(signal, handler);
  }
}

class ClusterImpl implements PgCluster {
  readonly host = "127.0.0.1" as const;
  readonly user = "postgres" as const;
  readonly runAsPostgres = runAsPostgres;
  readonly socketDir: string;
  readonly logFile: string;
  port = 0;
  private running = false;

  constructor(
    readonly baseDir: string,
    readonly dataDir: string,
    readonly binDir: string,
    private readonly logToFile: boolean,
  ) {
    this.socketDir = path.join(baseDir, "sock");
    this.logFile = path.join(baseDir, "postgres.log");
  }

  connectionInfo(extra: Record<string, string | number> = {}): Record<string, string | number> {
    return { host: this.host, port: this.port, user: this.user, dbname: "postgres", ...extra };
  }

  connectionString(extra: Record<string, string | number> = {}): string {
    return Object.entries(this.connectionInfo(extra))
      .map(
        ([k, v]) => `${k}=${String(v).includes(" ") || String(v) === "" ? `'${String(v).replace(/'/g, "\\'")}'` : v}`,
      )
      .join(" ");
  }

  async query<T = Record<string, unknown>>(sql: string, params: unknown[] = [], db = "postgres"): Promise<T[]> {
    const client = new pg.Client({ host: this.host, port: this.port, user: this.user, database: db });
    await client.connect();
    try {
      // pg types rows as `any`; the caller states the row shape with T.
      const result = await client.query(sql, params);
      return result.rows as T[];
    } finally {
      await client.end();
    }
  }

  private binary(bin: string): string {
    if (path.isAbsolute(bin)) return bin;
    const own = path.join(this.binDir, bin);
    return existsSync(own) ? own : path.join(defaultPgBinDir, bin);
  }

  async exec(bin: string, args: string[], opts: ExecOptions = {}): Promise<{ stdout: string; stderr: string }> {
    // Before the first start the port is unknown; PGPORT=0 would make initdb's bootstrap backend fail.
    const portEnv: Record<string, string> = this.port > 0 ? { PGPORT: String(this.port) } : {};
    const env = { PGHOST: this.host, ...portEnv, PGUSER: this.user, PGDATABASE: "postgres", ...opts.env };
    return await run(this.binary(bin), args, { cwd: this.baseDir, ...opts, env });
  }

  async pgbench(args: string[]): Promise<string> {
    const { stdout, stderr } = await this.exec("pgbench", args);
    return stdout + stderr;
  }

  async start(): Promise<void> {
    if (this.running) return;
    installExitHook();
    let lastError: unknown;
    // The free port can be taken between probing and binding; retry with another one.
    for (let attempt = 0; attempt < 5; attempt++) {
      if (attempt > 0 || this.port === 0) this.port = await findFreePort();
      const options = `-p ${this.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=${this.socketDir}`;
      liveClusters.add(this);
      try {
        await this.exec("pg_ctl", [
          "-D",
          this.dataDir,
          "-l",
          this.logToFile ? this.logFile : "/dev/null",
          "-o",
          options,
          "-w",
          "-t",
          "120",
          "start",
        ]);
        this.running = true;
        return;
      } catch (err) {
        lastError = err;
        await this.stopQuietly();
        const log = await this.logContents();
        if (!/could not bind|Address already in use|could not create any TCP\/IP sockets/.test(log)) break;
      }
    }
    liveClusters.delete(this);
    const tail = (await this.logContents()).split("\n").slice(-30).join("\n");
    throw new Error(
      `PostgreSQL failed to start in ${this.dataDir}: ${String(lastError)}\n--- server log tail ---\n${tail}`,
    );
  }

  private async stopQuietly(): Promise<void> {
    await this.exec("pg_ctl", ["-D", this.dataDir, "-m", "immediate", "-w", "stop"]).catch(() => undefined);
  }

  async stop(mode: "fast" | "immediate" = "fast"): Promise<void> {
    if (!existsSync(path.join(this.dataDir, "postmaster.pid"))) {
      this.running = false;
      liveClusters.delete(this);
      return;
    }
    await this.exec("pg_ctl", ["-D", this.dataDir, "-m", mode, "-w", "-t", "120", "stop"]);
    this.running = false;
    liveClusters.delete(this);
  }

  async restart(): Promise<void> {
    await this.stop("fast");
    await this.start();
  }

  async waitForRecoveryEnd(timeoutMs = 120_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let lastError: unknown;
    while (Date.now() < deadline) {
      try {
        const [row] = await this.query<{ in_recovery: boolean }>("SELECT pg_is_in_recovery() AS in_recovery");
        if (row && !row.in_recovery) return;
        lastError = undefined;
      } catch (err) {
        lastError = err; // not accepting connections yet
      }
      if (!existsSync(path.join(this.dataDir, "postmaster.pid"))) break;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    const tail = (await this.logContents()).split("\n").slice(-30).join("\n");
    const why = lastError ? ` (last error: ${String(lastError)})` : "";
    throw new Error(`recovery did not end within ${timeoutMs} ms${why}\n--- server log tail ---\n${tail}`);
  }

  async logContents(): Promise<string> {
    return await readFile(this.logFile, "utf8").catch(() => "");
  }

  async destroy(): Promise<void> {
    try {
      await this.stop("immediate");
    } catch {
      await this.stopQuietly();
    } finally {
      liveClusters.delete(this);
      await rm(this.baseDir, { recursive: true, force: true });
    }
  }
}

async function runInitdb(cluster: ClusterImpl, extraArgs: string[]): Promise<void> {
  const base = ["-D", cluster.dataDir, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync", ...extraArgs];
  try {
    await cluster.exec("initdb", [...base, "--locale=C.UTF-8"]);
  } catch (err) {
    // Some systems lack the C.UTF-8 locale; plain C works everywhere.
    if (!/invalid locale|locale "[^"]*"|setlocale/i.test(String(err))) throw err;
    await rm(cluster.dataDir, { recursive: true, force: true });
    await cluster.exec("initdb", [...base, "--locale=C"]);
  }
}

/** `major`: of the data directory's PG_VERSION (NaN when unreadable: today's settings). */
function configBlock(options: PgClusterOptions, major: number): string {
  const settings: Record<string, string> = {
    wal_level: "replica",
    max_wal_senders: "10",
    max_replication_slots: "10",
    // wal_keep_size replaced wal_keep_segments in 13
    ...(major < 13 ? { wal_keep_segments: "16" } : { wal_keep_size: "256MB" }),
    archive_mode: options.archiveCommand ? "on" : "off",
    fsync: "off",
    shared_buffers: "32MB",
    log_line_prefix: "%m [%p] ",
    ...(options.archiveCommand ? { archive_command: options.archiveCommand } : {}),
    ...(options.restoreCommand ? { restore_command: options.restoreCommand } : {}),
    ...options.settings,
  };
  const lines = Object.entries(settings).map(([key, value]) => `${key} = ${quoteSetting(value)}`);
  return `\n# added by test/helpers/pgcluster.ts\n${lines.join("\n")}\n`;
}

function hbaContents(extra: string[] = []): string {
  return [
    "# written by test/helpers/pgcluster.ts",
    ...extra,
    "local all all trust",
    "local replication all trust",
    "host all all 127.0.0.1/32 trust",
    "host replication all 127.0.0.1/32 trust",
    "",
  ].join("\n");
}

export async function startCluster(options: PgClusterOptions = {}): Promise<PgCluster> {
  const baseDir = await makeTempDir("pghoard-pgcluster-");
  const dataDir = options.dataDir ?? path.join(baseDir, "data");
  const cluster = new ClusterImpl(baseDir, dataDir, options.binDir ?? defaultPgBinDir, options.logToFile ?? true);
  try {
    await mkdir(cluster.socketDir, { mode: 0o700 });
    await chownToPostgres(baseDir);
    if (options.initdb ?? options.dataDir === undefined) {
      await runInitdb(cluster, options.initdbArgs ?? []);
    } else {
      // A restored PGDATA is owned by whoever wrote it; the server insists on 0700/0750 and its own uid.
      await chownToPostgres(dataDir);
      await chmod(dataDir, 0o700);
    }
    const major = Number.parseInt(await readFile(path.join(dataDir, "PG_VERSION"), "utf8").catch(() => ""), 10);
    await appendFile(path.join(dataDir, "postgresql.conf"), configBlock(options, major));
    await writeFile(path.join(dataDir, "pg_hba.conf"), hbaContents(options.hba));
    await chownToPostgres(path.join(dataDir, "pg_hba.conf"));
    await chownToPostgres(path.join(dataDir, "postgresql.conf"));
    if (!options.noStart) await cluster.start();
    return cluster;
  } catch (err) {
    await cluster.destroy().catch(() => undefined);
    throw err;
  }
}
