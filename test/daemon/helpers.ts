/** Shared helpers of the daemon tests: configs, a daemon child process, raw HTTP requests. */
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { generateKeyPairSync, randomFillSync } from "node:crypto";
import { createWriteStream, existsSync, readFileSync } from "node:fs";
import { mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import http from "node:http";
import path from "node:path";
import { decodeBuffer } from "../../src/fileformat/index.js";
import { findFreePort, makeTempDir, type PgCluster } from "../helpers/pgcluster.js";
import { repoRoot } from "../helpers/paths.js";

export const pghoardBin = path.join(repoRoot, "bin", "pghoard.js");
export const postgresCommandBin = path.join(repoRoot, "bin", "pghoard_postgres_command.js");

export interface KeyPair {
  publicPem: string;
  privatePem: string;
}

export function makeKeyPair(): KeyPair {
  const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 3072 });
  return {
    publicPem: publicKey.export({ type: "spki", format: "pem" }).toString(),
    privatePem: privateKey.export({ type: "pkcs8", format: "pem" }).toString(),
  };
}

export interface SiteOptions {
  pgDataDirectory: string;
  keyId?: string;
  keys?: KeyPair;
  extra?: Record<string, unknown>;
}

export interface DaemonEnv {
  dir: string;
  storageDir: string;
  backupLocation: string;
  statePath: string;
  alertDir: string;
  configPath: string;
  port: number;
  /** The port was chosen by the caller (e.g. it is in an archive_command) and must not change. */
  fixedPort: boolean;
  config: Record<string, unknown>;
  writeConfig(config?: Record<string, unknown>): Promise<void>;
}

/** A config with `local` storage and one entry per site; written to `<dir>/pghoard.json`. */
export async function makeDaemonEnv(
  sites: Record<string, SiteOptions>,
  extra: Record<string, unknown> = {},
): Promise<DaemonEnv> {
  const dir = await makeTempDir("pghoard-daemon");
  const storageDir = path.join(dir, "store");
  const backupLocation = path.join(dir, "spool");
  const alertDir = path.join(dir, "alerts");
  await mkdir(storageDir, { recursive: true });
  await mkdir(alertDir, { recursive: true });
  const port = typeof extra.http_port === "number" ? extra.http_port : await findFreePort();
  const backupSites: Record<string, unknown> = {};
  for (const [name, site] of Object.entries(sites)) {
    backupSites[name] = {
      active_backup_mode: "archive_command",
      basebackup_interval_hours: null,
      pg_data_directory: site.pgDataDirectory,
      nodes: [{ host: "127.0.0.1" }],
      object_storage: { storage_type: "local", directory: storageDir },
      ...(site.keyId && site.keys
        ? {
            encryption_key_id: site.keyId,
            encryption_keys: { [site.keyId]: { public: site.keys.publicPem, private: site.keys.privatePem } },
          }
        : {}),
      ...(site.extra ?? {}),
    };
  }
  const config: Record<string, unknown> = {
    backup_location: backupLocation,
    alert_file_dir: alertDir,
    json_state_file_path: path.join(dir, "pghoard_state.json"),
    maintenance_mode_file: path.join(dir, "maintenance_mode_file"),
    http_address: "127.0.0.1",
    http_port: port,
    log_level: "DEBUG",
    compression: { algorithm: "snappy", thread_count: 2 },
    transfer: { thread_count: 2 },
    backup_sites: backupSites,
    ...extra,
  };
  const configPath = path.join(dir, "pghoard.json");
  const env: DaemonEnv = {
    dir,
    storageDir,
    backupLocation,
    statePath: config.json_state_file_path as string,
    alertDir,
    configPath,
    port,
    fixedPort: typeof extra.http_port === "number",
    config,
    async writeConfig(newConfig?: Record<string, unknown>) {
      if (newConfig) env.config = newConfig;
      await writeFile(configPath, JSON.stringify(env.config, null, 2));
    },
  };
  await env.writeConfig();
  return env;
}

export interface HttpResult {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** A request with the raw path as given (no URL normalisation, so traversal attempts reach the server). */
export function httpRequest(
  port: number,
  method: string,
  rawPath: string,
  headers: Record<string, string> = {},
): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port, method, path: rawPath, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () =>
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString("utf8") }),
      );
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end();
  });
}

export class DaemonProcess {
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  private constructor(
    readonly child: ChildProcess,
    readonly logPath: string,
    readonly port: number,
  ) {
    // "close": the output pipes are drained too, so logs() is complete once this resolves.
    this.exited = new Promise((resolve) => child.once("close", (code, signal) => resolve({ code, signal })));
  }

  /**
   * Starts `node bin/pghoard.js --config <path>` and waits until /status answers. When another
   * test grabbed the free port in the meantime, a new one is chosen (unless the port is fixed).
   */
  static async start(
    env: DaemonEnv,
    opts: { logName?: string; env?: Record<string, string>; readyTimeoutMs?: number } = {},
  ): Promise<DaemonProcess> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await DaemonProcess.startOnce(env, opts);
      } catch (err) {
        if (env.fixedPort || attempt >= 3 || !/EADDRINUSE/.test(String(err))) throw err;
        env.port = await findFreePort();
        env.config.http_port = env.port;
        await env.writeConfig();
      }
    }
  }

  private static async startOnce(
    env: DaemonEnv,
    opts: { logName?: string; env?: Record<string, string>; readyTimeoutMs?: number },
  ): Promise<DaemonProcess> {
    const daemon = DaemonProcess.spawn(env, opts);
    await daemon.waitReady(env, opts.readyTimeoutMs);
    return daemon;
  }

  /** Starts the daemon without waiting for it (a SIGKILL during start-up is a fault worth injecting). */
  static spawn(env: DaemonEnv, opts: { logName?: string; env?: Record<string, string> } = {}): DaemonProcess {
    const logPath = path.join(env.dir, opts.logName ?? "daemon.log");
    const log = createWriteStream(logPath, { flags: "a" });
    const child = spawn(process.execPath, [pghoardBin, "--config", env.configPath], {
      cwd: env.dir,
      env: { ...process.env, ...opts.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    child.stdout!.pipe(log, { end: false });
    child.stderr!.pipe(log, { end: false });
    return new DaemonProcess(child, logPath, env.port);
  }

  /** Waits until /status answers (SIGKILLs the daemon and throws after `timeoutMs` or when it exits first). */
  async waitReady(env: DaemonEnv, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let exited = false;
    void this.exited.then(() => {
      exited = true;
    });
    for (;;) {
      if (exited) throw new Error(`daemon exited during start-up: ${this.logs()}`);
      try {
        const res = await httpRequest(env.port, "GET", "/status");
        // 401: authentication is on; the state file shows the main loop has run once.
        if (res.status === 200 || (res.status === 401 && existsSync(env.statePath))) return;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) {
        this.child.kill("SIGKILL");
        throw new Error(`daemon did not start: ${this.logs()}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  logs(): string {
    try {
      return readFileSync(this.logPath, "utf8");
    } catch {
      return "";
    }
  }

  /**
   * Waits until the log has a line matching `pattern`. The daemon's output reaches the log file
   * through a pipe and a write stream of this process, so a line the daemon wrote before an effect
   * the test saw (an alert file, a stored object) may not be in the file yet.
   */
  async waitForLog(pattern: RegExp, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pattern.test(this.logs())) {
      if (Date.now() > deadline) {
        assert.match(this.logs().slice(-3000), pattern, `no log line matching ${pattern} within ${timeoutMs} ms`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return this.exited;
  }
}

/** Runs pghoard_postgres_command; resolves with its exit code and output. */
export function runPostgresCommand(
  args: string[],
  opts: { cwd?: string; env?: Record<string, string> } = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [postgresCommandBin, ...args], {
      cwd: opts.cwd,
      env: { ...process.env, ...opts.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.once("error", reject);
    child.once("exit", (code) => resolve({ code, stdout, stderr }));
  });
}

/** Decodes a stored object of the local store: `<storageDir>/<key>` with its sidecar. */
export async function decodeStoredObject(
  storageDir: string,
  key: string,
  keys: Record<string, string>,
): Promise<{ data: Buffer; metadata: Record<string, string> }> {
  const file = path.join(storageDir, key);
  const metadata = JSON.parse(await readFile(`${file}.metadata`, "utf8")) as Record<string, string>;
  const stored = await readFile(file);
  const meta = { ...metadata };
  delete meta._hash;
  const data = await decodeBuffer(stored, meta, (id) => keys[id]);
  return { data, metadata };
}

export async function listStoredNames(storageDir: string, site: string, type: string): Promise<string[]> {
  try {
    return (await readdir(path.join(storageDir, site, type)))
      .filter((n) => !n.endsWith(".metadata") && !n.startsWith("."))
      .sort();
  } catch {
    return [];
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Waits until PostgreSQL reports `name` (or a later segment) archived. */
export async function waitArchived(cluster: PgCluster, name: string, timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const rows = await cluster.query<{ last_archived_wal: string | null; failed_count: string }>(
      "SELECT last_archived_wal, failed_count FROM pg_stat_archiver",
    );
    const last = rows[0]?.last_archived_wal;
    if (last && last >= name) return;
    if (Date.now() > deadline) throw new Error(`${name} not archived in time: ${JSON.stringify(rows)}`);
    await sleep(200);
  }
}

/** Forces a segment switch and returns the name of the segment that was just completed. */
export async function switchWal(cluster: PgCluster): Promise<string> {
  const rows = await cluster.query<{ name: string }>("SELECT pg_walfile_name(pg_switch_wal()) AS name");
  return rows[0].name;
}

export async function doneSegments(cluster: PgCluster): Promise<string[]> {
  const statusDir = path.join(cluster.dataDir, "pg_wal", "archive_status");
  return (await readdir(statusDir))
    .filter((n) => n.endsWith(".done"))
    .map((n) => n.slice(0, -".done".length))
    .sort();
}

/**
 * A synthetic 16 MiB WAL segment whose page header is valid for `name` (PostgreSQL 15 magic,
 * long header with the segment size); the rest is random so compression and hashing have work.
 */
export function syntheticSegment(name: string): Buffer {
  const buf = Buffer.alloc(16 * 1024 * 1024);
  for (let off = 0; off < buf.length; off += 65536) {
    buf.fill(off % 7, off, off + 32768); // half compressible
    randomFillSync(buf, off + 32768, 32768);
  }
  const log = BigInt(`0x${name.slice(8, 16)}`);
  const seg = BigInt(`0x${name.slice(16, 24)}`);
  const lsn = (log * 256n + seg) * 16777216n;
  buf.writeUInt16LE(0xd110, 0);
  buf.writeUInt16LE(0x0002, 2);
  buf.writeUInt32LE(Number.parseInt(name.slice(0, 8), 16), 4);
  buf.writeBigUInt64LE(lsn, 8);
  buf.writeUInt32LE(0, 16);
  buf.writeBigUInt64LE(7000000000000000000n, 24);
  buf.writeUInt32LE(16 * 1024 * 1024, 32);
  buf.writeUInt32LE(8192, 36);
  return buf;
}

/** A directory that looks enough like PGDATA for the daemon (PG_VERSION, pg_wal/). */
export async function makeFakePgdata(): Promise<string> {
  const dir = path.join(await makeTempDir("pghoard-fake-pgdata"), "data");
  await mkdir(path.join(dir, "pg_wal"), { recursive: true });
  await writeFile(path.join(dir, "PG_VERSION"), "15\n");
  return dir;
}
