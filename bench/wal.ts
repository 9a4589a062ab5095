/**
 * WAL round trips as PostgreSQL drives them: one `pghoard_postgres_command` process per segment.
 *
 *   node dist/bench/wal.js [--runs N]
 *
 * Side by side, in one run, against one daemon (child process, snappy + RSA/AES encryption,
 * `local` storage on the temp filesystem):
 *   floor       `node -e 0` (bare Node.js start-up)
 *   archive     `pghoard_postgres_command --mode archive` for a 16 MiB segment → exit 0
 *               (the daemon compresses, encrypts and stores it durably before answering 201)
 *   restore/prefetched  `--mode restore` when `<seg>.pghoard.prefetch` is already next to %p
 *   restore/on-demand   `--mode restore` for a segment the daemon must fetch and decode first
 * Targets (differences to the floor measured in the same run): archive ≤ +50 ms,
 * prefetched restore ≤ +15 ms.
 *
 * The WAL comes from a throwaway PostgreSQL 15 cluster (`pgbench -i -s 4`).
 */
import { spawn } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { copyFileSync, existsSync, mkdirSync, readdirSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { findFreePort, makeTempDir, startCluster } from "../test/helpers/pgcluster.js";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const pghoardBin = path.join(repoRoot, "bin", "pghoard.js");
const commandBin = path.join(repoRoot, "bin", "pghoard_postgres_command.js");

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}

function runProcess(args: string[], cwd?: string): Promise<{ ms: number; code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const start = process.hrtime.bigint();
    const child = spawn(process.execPath, args, { cwd, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (out += d.toString()));
    child.once("error", reject);
    child.once("exit", (code) => resolve({ ms: Number(process.hrtime.bigint() - start) / 1e6, code, out }));
  });
}

function get(port: number, p: string): Promise<number> {
  return new Promise((resolve) => {
    const req = http.request({ host: "127.0.0.1", port, path: p, agent: false }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode ?? 0));
    });
    req.on("error", () => resolve(0));
    req.end();
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function waitFor(condition: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("timed out");
    await sleep(5);
  }
}

function stats(values: number[]): { median: number; p90: number; min: number } {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return { median: at(0.5), p90: at(0.9), min: sorted[0] };
}

async function makeSegments(dir: string): Promise<string[]> {
  const cluster = await startCluster({ settings: { wal_recycle: "off" } });
  try {
    await cluster.pgbench(["-i", "-s", "4"]);
    const rows = await cluster.query<{ name: string }>("SELECT pg_walfile_name(pg_switch_wal()) AS name");
    const last = rows[0].name;
    const walDir = path.join(cluster.dataDir, "pg_wal");
    const names = readdirSync(walDir)
      .filter((n) => /^[0-9A-F]{24}$/.test(n) && n <= last)
      .sort();
    for (const name of names) copyFileSync(path.join(walDir, name), path.join(dir, name));
    return names;
  } finally {
    await cluster.destroy();
  }
}

async function main(): Promise<void> {
  const runs = arg("--runs", 20);
  const work = await makeTempDir("pghoard-bench-wal");
  const archiveData = path.join(work, "archive-pgdata");
  const restoreData = path.join(work, "restore-pgdata");
  for (const d of [archiveData, restoreData]) {
    mkdirSync(path.join(d, "pg_wal"), { recursive: true });
    writeFileSync(path.join(d, "PG_VERSION"), "15\n");
  }
  process.stdout.write("creating WAL with pgbench -i -s 4 ...\n");
  const segments = await makeSegments(path.join(archiveData, "pg_wal"));
  if (segments.length < 3) throw new Error(`need at least 3 segments, got ${segments.length}`);

  const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 3072 });
  const keys = {
    k1: {
      public: publicKey.export({ type: "spki", format: "pem" }).toString(),
      private: privateKey.export({ type: "pkcs8", format: "pem" }).toString(),
    },
  };
  const port = await findFreePort();
  const storage = { storage_type: "local", directory: path.join(work, "store") };
  const site = {
    active_backup_mode: "archive_command",
    basebackup_interval_hours: null,
    nodes: [{ host: "127.0.0.1" }],
    object_storage: storage,
    encryption_key_id: "k1",
    encryption_keys: keys,
  };
  const config = {
    backup_location: path.join(work, "spool"),
    alert_file_dir: work,
    json_state_file_path: path.join(work, "state.json"),
    maintenance_mode_file: path.join(work, "maintenance"),
    http_port: port,
    log_level: "WARNING",
    compression: { algorithm: "snappy" },
    restore_prefetch: 1,
    backup_sites: {
      bench: { ...site, pg_data_directory: archiveData },
      benchrestore: { ...site, prefix: "bench", active: false, pg_data_directory: restoreData },
    },
  };
  const configPath = path.join(work, "pghoard.json");
  writeFileSync(configPath, JSON.stringify(config));
  const daemon = spawn(process.execPath, [pghoardBin, "--config", configPath], { cwd: work, stdio: ["ignore", "ignore", "inherit"] });
  try {
    await waitFor(() => existsSync(config.json_state_file_path), 30_000);
    while ((await get(port, "/status")) !== 200) await sleep(50);

    const floor: number[] = [];
    const archive: number[] = [];
    const prefetched: number[] = [];
    const onDemand: number[] = [];
    const restoreWal = path.join(restoreData, "pg_wal");
    const common = ["--port", String(port)];

    // Warm-up: first uploads create directories, first process starts fill the page cache.
    for (const name of segments) {
      const r = await runProcess([commandBin, ...common, "--site", "bench", "--mode", "archive", "--xlog", name]);
      if (r.code !== 0) throw new Error(`archive ${name} failed: ${r.out}`);
    }
    await runProcess(["-e", "0"]);

    for (let i = 0; i < runs; i++) {
      floor.push((await runProcess(["-e", "0"])).ms);

      const name = segments[i % segments.length];
      const a = await runProcess([commandBin, ...common, "--site", "bench", "--mode", "archive", "--xlog", name]);
      if (a.code !== 0) throw new Error(`archive failed: ${a.out}`);
      archive.push(a.ms);

      // On demand: nothing prefetched, no download pending for this name.
      const index = i % (segments.length - 1);
      const seg = segments[index];
      const next = segments[index + 1];
      for (const f of readdirSync(restoreWal)) unlinkSync(path.join(restoreWal, f));
      const restoreArgs = (xlog: string): string[] => [
        commandBin, ...common, "--site", "benchrestore", "--mode", "restore", "--xlog", xlog, "--output", "pg_wal/RECOVERYXLOG",
      ];
      const d = await runProcess(restoreArgs(seg), restoreData);
      if (d.code !== 0) throw new Error(`restore failed: ${d.out}`);
      onDemand.push(d.ms);

      // The on-demand request prefetched the next segment; restore it the way PostgreSQL would.
      await waitFor(() => existsSync(path.join(restoreWal, `${next}.pghoard.prefetch`)), 30_000);
      const p = await runProcess(restoreArgs(next), restoreData);
      if (p.code !== 0) throw new Error(`prefetched restore failed: ${p.out}`);
      prefetched.push(p.ms);
    }

    const f = stats(floor);
    const rows: Array<[string, number[], number | null]> = [
      ["floor: node -e 0", floor, null],
      ["archive 16 MiB (snappy+enc)", archive, 50],
      ["restore, prefetched", prefetched, 15],
      ["restore, on demand", onDemand, null],
    ];
    process.stdout.write(`\n${runs} runs each, ${os.cpus().length} CPUs, node ${process.version}, storage ${storage.directory}\n`);
    process.stdout.write(`${"".padEnd(30)}${"median".padStart(9)}${"p90".padStart(9)}${"min".padStart(9)}${"Δ floor".padStart(10)}  target\n`);
    for (const [label, values, target] of rows) {
      const s = stats(values);
      const delta = s.median - f.median;
      const verdict = target === null ? "" : `≤ +${target} ms: ${delta <= target ? "met" : "MISSED"}`;
      process.stdout.write(
        `${label.padEnd(30)}${s.median.toFixed(1).padStart(9)}${s.p90.toFixed(1).padStart(9)}${s.min.toFixed(1).padStart(9)}` +
          `${(label.startsWith("floor") ? "" : `+${delta.toFixed(1)}`).padStart(10)}  ${verdict}\n`,
      );
    }
  } finally {
    daemon.kill("SIGTERM");
    await new Promise((r) => daemon.once("exit", r));
    rmSync(work, { recursive: true, force: true });
  }
}

await main();
