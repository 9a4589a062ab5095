/**
 * Basebackup throughput and memory, every mode side by side on one pgbench database.
 *
 *   node dist/bench/basebackup.js [--scale 70] [--modes local-tar,delta,basic,pipe] [--algorithms snappy,zstd]
 *                                 [--threads 2] [--pgbackrest] [--keep]
 *
 * Creates a throwaway PostgreSQL 15 cluster, `pgbench -i -s <scale>` (70 ≈ 1.05 GB), then in the
 * same run: the read floor `pg_basebackup -Ft -D - -X none > /dev/null`, each mode × algorithm with
 * encryption (each backup in a child process so its peak RSS is its own; basic/pipe's
 * pg_basebackup child is not included), and, with --pgbackrest, a full pgBackRest backup (lz4,
 * process-max = threads) of the same database. Output goes to a local store in /tmp.
 *
 * Measured 2026-11-26 on the 2-core dev VM, scale 70 (1069 MiB PGDATA), while other jobs shared
 * the machine (load average 5.7; figures swing ±50 % between runs, so compare within one run):
 *   read floor 407 MiB/s; local-tar snappy+enc 488 MiB/s (120 %, 2.50 CPU-s/GiB, RSS 242 MiB),
 *   zstd+enc 396 MiB/s (97 %, 3.00 CPU-s/GiB, RSS 226 MiB); delta 174/151, basic 185/165,
 *   pipe 212/202 MiB/s (snappy/zstd); pgBackRest 2.45 lz4 process-max=2 (unencrypted) 329 MiB/s,
 *   1.93 CPU-s/GiB.
 */
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { FileFormatPool } from "../src/fileformat/index.js";
import { createStorage } from "../src/storage/index.js";
import { runBasebackup } from "../src/basebackup/index.js";
import type { PghoardConfig } from "../src/config/types.js";
import { makeTempDir, runAsPostgres, startCluster, type PgCluster } from "../test/helpers/pgcluster.js";

const MiB = 1024 * 1024;

interface ChildSpec {
  mode: string;
  algorithm: string;
  threads: number;
  pgdata: string;
  node: Record<string, string | number>;
  storeDir: string;
  spoolDir: string;
  publicKey: string;
  pgVersion: number;
}

interface ChildResult {
  seconds: number;
  plainBytes: number;
  uploadedBytes: number;
  maxRssMiB: number;
  /** user + system CPU seconds of the whole process (main thread and workers). */
  cpuSeconds: number;
}

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1] : fallback;
}

async function child(spec: ChildSpec): Promise<void> {
  const site = {
    prefix: "bench",
    active: true,
    active_backup_mode: "archive_command",
    basebackup_mode: spec.mode,
    pg_data_directory: spec.pgdata,
    pg_data_directory_version: "15",
    nodes: [spec.node],
    encryption_key_id: "benchkey",
    encryption_keys: { benchkey: { public: spec.publicKey } },
    basebackup_chunk_size: 2 * 1024 * MiB,
    basebackup_chunks_in_progress: 5,
    basebackup_threads: spec.threads,
    basebackup_compression_threads: 0,
    basebackup_delta_mode_min_delta_file_size: 10 * MiB,
    basebackup_delta_mode_chunk_size: 500 * MiB,
    object_storage: { storage_type: "local", directory: spec.storeDir },
  };
  // chunk size: 2 GiB as upstream's default would give one chunk here; 256 MiB exercises parallel chunks
  site.basebackup_chunk_size = 256 * MiB;
  const config = {
    backup_location: spec.spoolDir,
    backup_sites: { bench: site },
    compression: { algorithm: spec.algorithm, level: 0, thread_count: spec.threads },
  } as unknown as PghoardConfig;
  const storage = await createStorage(site.object_storage as PghoardConfig["backup_sites"][string]["object_storage"]);
  const pool = new FileFormatPool(spec.threads);
  const quiet = {
    debug: () => undefined,
    info: () => undefined,
    warn: (m: string) => process.stderr.write(`${m}\n`),
    error: (m: string) => process.stderr.write(`${m}\n`),
  };
  const started = process.hrtime.bigint();
  const result = await runBasebackup({
    config,
    site: "bench",
    node: spec.node as Record<string, string>,
    pgVersion: spec.pgVersion,
    storage,
    pool,
    decision: { "backup-reason": "requested" },
    log: quiet,
  });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  await pool.close();
  await storage.close();
  const usage = process.resourceUsage();
  const out: ChildResult = {
    seconds,
    plainBytes: result.plainBytes,
    uploadedBytes: result.uploadedBytes,
    maxRssMiB: usage.maxRSS / 1024,
    cpuSeconds: (usage.userCPUTime + usage.systemCPUTime) / 1e6,
  };
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

function runChild(spec: ChildSpec): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [fileURLToPath(import.meta.url), "--child", JSON.stringify(spec)], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    proc.stdout.on("data", (d: Buffer) => (out += d.toString()));
    proc.once("exit", (code) => {
      if (code !== 0) reject(new Error(`child for ${spec.mode}/${spec.algorithm} exited ${code}`));
      else resolve(JSON.parse(out.trim().split("\n").pop() as string) as ChildResult);
    });
  });
}

function duBytes(dir: string): number {
  return Number(execFileSync("du", ["-sb", dir], { encoding: "utf8" }).split("\t")[0]);
}

function readFloor(cluster: PgCluster): { seconds: number; bytes: number } {
  const bin = path.join(cluster.binDir, "pg_basebackup");
  const started = process.hrtime.bigint();
  const res = spawnSync(
    "sh",
    ["-c", `${bin} -h 127.0.0.1 -p ${cluster.port} -U postgres -Ft -D - -X none -c fast | wc -c`],
    { encoding: "utf8" },
  );
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  if (res.status !== 0) throw new Error(`pg_basebackup failed: ${res.stderr}`);
  return { seconds, bytes: Number(res.stdout.trim()) };
}

function pgbackrest(
  cluster: PgCluster,
  threads: number,
  workDir: string,
): { seconds: number; repoBytes: number; cpuSeconds: number } | string {
  if (spawnSync("sh", ["-c", "command -v pgbackrest"]).status !== 0) {
    const install = spawnSync("sh", ["-c", "DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbackrest"], {
      encoding: "utf8",
    });
    if (install.status !== 0) return `pgbackrest not installable: ${install.stderr.slice(-300)}`;
  }
  const repo = path.join(workDir, "pgbackrest-repo");
  const conf = path.join(workDir, "pgbackrest.conf");
  mkdirSync(repo, { recursive: true });
  mkdirSync(path.join(workDir, "pgbackrest-log"), { recursive: true });
  mkdirSync(path.join(workDir, "pgbackrest-lock"), { recursive: true });
  writeFileSync(
    conf,
    [
      "[global]",
      `repo1-path=${repo}`,
      `log-path=${workDir}/pgbackrest-log`,
      `lock-path=${workDir}/pgbackrest-lock`,
      "compress-type=lz4",
      `process-max=${threads}`,
      "start-fast=y",
      "archive-check=n",
      "log-level-console=warn",
      "",
      "[bench]",
      `pg1-path=${cluster.dataDir}`,
      `pg1-port=${cluster.port}`,
      `pg1-socket-path=${cluster.socketDir}`,
      "",
    ].join("\n"),
  );
  execFileSync("chown", [
    "-R",
    "postgres:postgres",
    repo,
    conf,
    `${workDir}/pgbackrest-log`,
    `${workDir}/pgbackrest-lock`,
  ]);
  // /usr/bin/time adds the CPU seconds of pgBackRest and its worker processes (last stderr line)
  const run = (args: string[]): ReturnType<typeof spawnSync> =>
    spawnSync(
      "/usr/bin/time",
      [
        "-f",
        "%U %S",
        ...(runAsPostgres ? ["runuser", "-u", "postgres", "--"] : []),
        "pgbackrest",
        `--config=${conf}`,
        ...args,
      ],
      { encoding: "utf8" },
    );
  const create = run(["--stanza=bench", "stanza-create"]);
  if (create.status !== 0) return `stanza-create failed: ${String(create.stderr)}${String(create.stdout)}`;
  const started = process.hrtime.bigint();
  const backup = run(["--stanza=bench", "--type=full", "backup"]);
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  if (backup.status !== 0) return `backup failed: ${String(backup.stderr)}${String(backup.stdout)}`;
  const [user, sys] = String(backup.stderr).trim().split("\n").pop()!.split(" ").map(Number);
  return { seconds, repoBytes: duBytes(repo), cpuSeconds: user + sys };
}

async function main(): Promise<void> {
  if (process.argv[2] === "--child") {
    await child(JSON.parse(process.argv[3]) as ChildSpec);
    return;
  }
  const scale = Number(arg("scale", "70"));
  const threads = Number(arg("threads", "2"));
  const modes = arg("modes", "local-tar,delta,basic,pipe").split(",");
  const algorithms = arg("algorithms", "snappy,zstd").split(",");
  const workDir = await makeTempDir("bench-basebackup");
  const cluster = await startCluster({ settings: { max_wal_size: "4GB", checkpoint_timeout: "30min" } });
  try {
    process.stdout.write(`pgbench -i -s ${scale} ...\n`);
    await cluster.pgbench(["-i", "-s", String(scale), "-q"]);
    await cluster.query("CHECKPOINT");
    const pgdataBytes = duBytes(cluster.dataDir) - duBytes(path.join(cluster.dataDir, "pg_wal"));
    const pgVersion = Number(
      (await cluster.query<{ server_version_num: string }>("SHOW server_version_num"))[0].server_version_num,
    );
    process.stdout.write(
      `PGDATA without pg_wal: ${(pgdataBytes / MiB).toFixed(0)} MiB; ${os.cpus().length} CPUs; Node ${process.version}\n\n`,
    );
    const { publicKey } = generateKeyPairSync("rsa", { modulusLength: 3072 });
    const publicPem = publicKey.export({ type: "spki", format: "pem" }).toString();

    const rows: string[] = [];
    const line = (label: string, seconds: number, bytes: number, extra: string): void => {
      const row = `${label.padEnd(34)} ${seconds.toFixed(2).padStart(7)} s ${(bytes / MiB / seconds).toFixed(0).padStart(6)} MiB/s  ${extra}`;
      rows.push(row);
      process.stdout.write(`${row}\n`);
    };
    // warm the page cache once so every contender reads from memory
    readFloor(cluster);
    const floor = readFloor(cluster);
    line("pg_basebackup -Ft -D - (read floor)", floor.seconds, floor.bytes, "");
    const floorRate = floor.bytes / floor.seconds;

    for (const algorithm of algorithms) {
      for (const mode of modes) {
        const storeDir = path.join(workDir, `store-${mode}-${algorithm}`);
        const spoolDir = path.join(workDir, `spool-${mode}-${algorithm}`);
        const result = await runChild({
          mode,
          algorithm,
          threads,
          pgdata: cluster.dataDir,
          node: cluster.connectionInfo(),
          storeDir,
          spoolDir,
          publicKey: publicPem,
          pgVersion,
        });
        const rate = result.plainBytes / result.seconds;
        line(
          `${mode} ${algorithm}+enc (${threads} thr)`,
          result.seconds,
          result.plainBytes,
          `${((100 * rate) / floorRate).toFixed(0).padStart(3)}% of floor, peak RSS ${result.maxRssMiB.toFixed(0)} MiB, ` +
            `CPU ${((result.cpuSeconds * 1024 * MiB) / result.plainBytes).toFixed(2)} s/GiB, stored ${(result.uploadedBytes / MiB).toFixed(0)} MiB`,
        );
        rmSync(storeDir, { recursive: true, force: true });
        rmSync(spoolDir, { recursive: true, force: true });
      }
    }
    if (process.argv.includes("--pgbackrest")) {
      const res = pgbackrest(cluster, threads, workDir);
      if (typeof res === "string") process.stdout.write(`pgbackrest: ${res}\n`);
      else {
        line(
          `pgbackrest full lz4 (process-max=${threads})`,
          res.seconds,
          pgdataBytes,
          `CPU ${((res.cpuSeconds * 1024 * MiB) / pgdataBytes).toFixed(2)} s/GiB, repo ${(res.repoBytes / MiB).toFixed(0)} MiB (rate over PGDATA size)`,
        );
      }
    }
    process.stdout.write(`\nupstream pghoard local-tar reference (2 cores): 221 MiB/s snappy, 290 MiB/s zstd\n`);
    process.stdout.write(
      `load average during the run: ${os
        .loadavg()
        .map((l) => l.toFixed(1))
        .join(" ")}\n`,
    );
  } finally {
    if (!process.argv.includes("--keep")) {
      await cluster.destroy();
      rmSync(workDir, { recursive: true, force: true });
    }
  }
}

if (existsSync(fileURLToPath(import.meta.url))) {
  await main();
}
