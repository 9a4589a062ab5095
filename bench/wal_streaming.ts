/**
 * Sustained WAL archiving under a write-heavy load, the three archiving modes side by side in one
 * run: `archive_command` (PostgreSQL runs pghoard_postgres_command per segment), `pg_receivexlog`
 * (the daemon runs pg_receivewal and watches its spool) and `walreceiver` (built-in streaming).
 *
 *   node dist/bench/wal_streaming.js [--seconds N] [--clients N] [--modes a,b] [--log-level INFO]
 *
 * For each mode: a fresh PostgreSQL 15 cluster, a daemon (snappy, no encryption, `local` storage
 * on the temp filesystem) and `pgbench -n -T <seconds>` with an INSERT-heavy script. Every 250 ms
 * the server's flush position is compared with the stored position (end of the contiguous run of
 * full segments in storage). Reported: segments archived per second during the load, WAL bytes
 * per second, the lag in bytes (mean, p90, max), and how long the archive needed after the load
 * ended to hold the last segment that was complete when it ended.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { readdirSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseLsn, walNameToLsn, WAL_SEG_SIZE, nextWalName } from "../src/wal/index.js";
import { findFreePort, makeTempDir, startCluster, type PgCluster } from "../test/helpers/pgcluster.js";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const pghoardBin = path.join(repoRoot, "bin", "pghoard.js");
const commandBin = path.join(repoRoot, "bin", "pghoard_postgres_command.js");

type Mode = "archive_command" | "pg_receivexlog" | "walreceiver";

export interface StreamingBenchResult {
  mode: Mode;
  seconds: number;
  segmentsArchived: number;
  segmentsPerSecond: number;
  walBytesPerSecond: number;
  lagMeanBytes: number;
  lagP90Bytes: number;
  lagMaxBytes: number;
  catchUpSeconds: number;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function statusOk(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.request({ host: "127.0.0.1", port, path: "/status", agent: false }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode === 200));
    });
    req.on("error", () => resolve(false));
    req.end();
  });
}

/** End LSN of the contiguous run of full segments in `<store>/<site>/xlog`, starting at its lowest name. */
function storedEnd(dir: string): bigint | null {
  let names: string[];
  try {
    names = readdirSync(dir)
      .filter((n) => /^[0-9A-F]{24}$/.test(n))
      .sort();
  } catch {
    return null;
  }
  if (names.length === 0) return null;
  const have = new Set(names);
  let cur = names[0];
  while (have.has(nextWalName(cur))) cur = nextWalName(cur);
  return walNameToLsn(cur) + BigInt(WAL_SEG_SIZE);
}

function countSegments(dir: string): number {
  try {
    return readdirSync(dir).filter((n) => /^[0-9A-F]{24}$/.test(n)).length;
  } catch {
    return 0;
  }
}

async function flushLsn(cluster: PgCluster): Promise<bigint> {
  const [row] = await cluster.query<{ lsn: string }>("SELECT pg_current_wal_flush_lsn()::text AS lsn");
  return parseLsn(row.lsn);
}

function percentile(values: number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : 0;
}

async function benchMode(
  mode: Mode,
  seconds: number,
  clients: number,
  logLevel: string,
): Promise<StreamingBenchResult> {
  const work = await makeTempDir(`pghoard-bench-stream-${mode}`);
  const port = await findFreePort();
  const site = "bench";
  const cluster = await startCluster({
    settings: { max_wal_size: "4GB", synchronous_commit: "off", wal_recycle: "off" },
    ...(mode === "archive_command"
      ? { archiveCommand: `${process.execPath} ${commandBin} --mode archive --port ${port} --site ${site} --xlog %f` }
      : {}),
  });
  let daemon: ChildProcess | undefined;
  try {
    const storeDir = path.join(work, "store");
    const config = {
      backup_location: path.join(work, "spool"),
      alert_file_dir: work,
      json_state_file_path: path.join(work, "state.json"),
      maintenance_mode_file: path.join(work, "maintenance"),
      http_address: "127.0.0.1",
      http_port: port,
      log_level: logLevel,
      compression: { algorithm: "snappy" },
      backup_sites: {
        [site]: {
          active_backup_mode: mode,
          basebackup_interval_hours: null,
          pg_data_directory: cluster.dataDir,
          nodes: [{ host: "127.0.0.1", port: cluster.port, user: "postgres", slot: "pghoard_bench" }],
          object_storage: { storage_type: "local", directory: storeDir },
        },
      },
    };
    const configPath = path.join(work, "pghoard.json");
    writeFileSync(configPath, JSON.stringify(config));
    daemon = spawn(process.execPath, [pghoardBin, "--config", configPath], {
      cwd: work,
      env: { ...process.env, HOME: work },
      stdio: ["ignore", "ignore", "inherit"],
    });
    const child = daemon;
    while (!(await statusOk(port))) {
      if (child.exitCode !== null || child.signalCode !== null)
        throw new Error(`${mode}: the daemon exited during start-up (${child.exitCode ?? child.signalCode})`);
      await sleep(50);
    }

    await cluster.query("CREATE TABLE bench_t (id int, payload text)");
    const script = path.join(work, "insert.sql");
    // md5 text compresses about as well as typical row data; 1000 rows ≈ 250 kB of WAL per transaction.
    writeFileSync(
      script,
      "INSERT INTO bench_t SELECT g, md5(g::text) || md5((g * 7)::text) || repeat('x', 100) FROM generate_series(1, 1000) g;\n",
    );
    const xlogDir = path.join(storeDir, site, "xlog");
    // Streaming modes: wait until the receiver runs so the measured window starts in steady state.
    if (mode !== "archive_command") {
      const [{ name }] = await cluster.query<{ name: string }>("SELECT pg_walfile_name(pg_switch_wal()) AS name");
      const deadline = Date.now() + 30_000;
      while (countSegments(xlogDir) === 0 || !readdirSync(xlogDir).some((n) => n >= name)) {
        if (Date.now() > deadline) throw new Error(`${mode}: the daemon stored nothing in 30 s`);
        await cluster.query("SELECT pg_switch_wal()");
        await sleep(200);
      }
    }

    const startFlush = await flushLsn(cluster);
    const startCount = countSegments(xlogDir);
    const lags: number[] = [];
    let loadDone = false;
    const started = Date.now();
    const load = cluster
      .pgbench(["-n", "-c", String(clients), "-j", String(clients), "-T", String(seconds), "-f", script])
      .finally(() => {
        loadDone = true;
      });
    while (!loadDone) {
      const flush = await flushLsn(cluster);
      const end = storedEnd(xlogDir) ?? startFlush;
      lags.push(Number(flush > end ? flush - end : 0n));
      await sleep(250);
    }
    await load;
    const elapsed = (Date.now() - started) / 1000;
    const endCount = countSegments(xlogDir);
    const endFlush = await flushLsn(cluster);
    // Catch-up: until every segment complete at the end of the load is stored.
    const target = endFlush - (endFlush % BigInt(WAL_SEG_SIZE));
    const catchStart = Date.now();
    while ((storedEnd(xlogDir) ?? 0n) < target) {
      if (Date.now() - catchStart > 300_000) throw new Error(`${mode}: no catch-up within 300 s`);
      await sleep(50);
    }
    const catchUpSeconds = (Date.now() - catchStart) / 1000;
    const segmentsArchived = endCount - startCount;
    return {
      mode,
      seconds: elapsed,
      segmentsArchived,
      segmentsPerSecond: segmentsArchived / elapsed,
      walBytesPerSecond: Number(endFlush - startFlush) / elapsed,
      lagMeanBytes: lags.reduce((a, b) => a + b, 0) / Math.max(1, lags.length),
      lagP90Bytes: percentile(lags, 0.9),
      lagMaxBytes: Math.max(0, ...lags),
      catchUpSeconds,
    };
  } finally {
    if (daemon && daemon.exitCode === null) {
      daemon.kill("SIGTERM");
      await new Promise((r) => daemon!.once("exit", r));
    }
    await cluster.destroy();
    rmSync(work, { recursive: true, force: true });
  }
}

/** Runs the three modes one after the other and prints one table. */
export async function benchStreamingArchiving(
  options: { seconds?: number; clients?: number; modes?: Mode[]; logLevel?: string } = {},
): Promise<StreamingBenchResult[]> {
  const seconds = options.seconds ?? 20;
  const clients = options.clients ?? 4;
  const results: StreamingBenchResult[] = [];
  for (const mode of options.modes ?? (["archive_command", "pg_receivexlog", "walreceiver"] as const)) {
    process.stdout.write(`${mode}: ${seconds} s of pgbench INSERTs with ${clients} clients ...\n`);
    results.push(await benchMode(mode, seconds, clients, options.logLevel ?? "WARNING"));
  }
  const mib = (n: number): string => (n / 1024 / 1024).toFixed(1);
  process.stdout.write(
    `\nSustained archiving, ${os.cpus().length} CPUs, load average ${os.loadavg()[0].toFixed(1)}, node ${process.version}, snappy, local storage\n`,
  );
  process.stdout.write(
    `${"mode".padEnd(17)}${"WAL MiB/s".padStart(10)}${"segs".padStart(6)}${"segs/s".padStart(8)}` +
      `${"lag mean MiB".padStart(14)}${"p90".padStart(7)}${"max".padStart(7)}${"catch-up s".padStart(12)}\n`,
  );
  for (const r of results) {
    process.stdout.write(
      `${r.mode.padEnd(17)}${mib(r.walBytesPerSecond).padStart(10)}${String(r.segmentsArchived).padStart(6)}${r.segmentsPerSecond.toFixed(2).padStart(8)}` +
        `${mib(r.lagMeanBytes).padStart(14)}${mib(r.lagP90Bytes).padStart(7)}${mib(r.lagMaxBytes).padStart(7)}${r.catchUpSeconds.toFixed(2).padStart(12)}\n`,
    );
  }
  return results;
}

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const i = process.argv.indexOf("--modes");
  const modes = i >= 0 ? (process.argv[i + 1].split(",") as Mode[]) : undefined;
  const j = process.argv.indexOf("--log-level");
  await benchStreamingArchiving({
    seconds: arg("--seconds", 20),
    clients: arg("--clients", 4),
    modes,
    logLevel: j >= 0 ? process.argv[j + 1] : undefined,
  });
}
