/**
 * WAL round trips as PostgreSQL drives them: one `pghoard_postgres_command` process per segment.
 *
 *   node dist/bench/wal.js [--runs N] [--compare-only] [--ours-only]
 *
 * Side by side, in one run, against one daemon (child process, snappy + RSA/AES encryption,
 * `local` storage on the temp filesystem):
 *   floor       `node -e 0` (bare Node.js start-up)
 *   archive     `pghoard_postgres_command --mode archive` for a 16 MiB segment → exit 0
 *               (the daemon compresses, encrypts and stores it durably before answering 201)
 *   restore/prefetched  `--mode restore` when `<seg>.pghoard.prefetch` is already next to %p
 *   restore/on-demand   `--mode restore` for a segment the daemon must fetch and decode first
 *   direct/prefetched, direct/on-demand   the same with `--config` (the direct mode, no daemon:
 *               the command reads the store itself; its detached read-ahead made the prefetch file)
 * Targets (differences to the floor measured in the same run): archive ≤ +50 ms,
 * prefetched restore ≤ +15 ms. Each measured process is paired with a floor sample taken right
 * before it; the verdict uses the median of those paired differences, which is robust against
 * other load on the machine. "daemon share" is the same archive PUT sent without a new process.
 *
 * The WAL comes from a throwaway PostgreSQL 15 cluster (`pgbench -i -s 12`).
 *
 * Then (unless `--no-pgbackrest`; `--compare-only` runs just this part) bench/wal_compare.ts: our
 * client (the native front dist/native/pghoard_postgres_command where built, else the bash client
 * bin/pghoard_postgres_command; no Node.js start-up; the daemon works ahead on `.ready` files),
 * every call timed as PostgreSQL's system() runs it, against pgBackRest archive-push /
 * archive-get, sync and async, lz4 and zst, aes-256-cbc, process-max 2: per-call medians and
 * ours ÷ pgBackRest, for one segment at a time, a burst of ready segments, and restores, and the
 * daemon's CPU time per burst segment (all its threads). `--ours-only` leaves pgBackRest out.
 *
 * `--streaming [--seconds N]` adds the sustained-rate section (`streamingSection`, see
 * bench/wal_streaming.ts): segments/s and lag of archive_command, pg_receivexlog and walreceiver
 * under a write-heavy pgbench load; `--streaming-only` runs just that section.
 */
import { spawn } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  rmSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { findFreePort, makeTempDir, startCluster, type PgCluster } from "../test/helpers/pgcluster.js";
import { compareWithPgBackRest } from "./wal_compare.js";
import { benchStreamingArchiving } from "./wal_streaming.js";

// BENCH_REPO=<checkout with dist/> runs that checkout's daemon and clients (A/B against another build).
const repoRoot = process.env.BENCH_REPO ?? path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const pghoardBin = path.join(repoRoot, "bin", "pghoard.js");
const commandBin = path.join(repoRoot, "bin", "pghoard_postgres_command.js");
// The client PostgreSQL would run: the native front where it was built (it hands all but the
// prefetched restore to the bash client), else the bash client.
const nativeBin = path.join(repoRoot, "dist", "native", "pghoard_postgres_command");
const shellBin = existsSync(nativeBin) ? nativeBin : path.join(repoRoot, "bin", "pghoard_postgres_command");

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

function request(port: number, p: string, method = "GET"): Promise<number> {
  return new Promise((resolve) => {
    const req = http.request({ host: "127.0.0.1", port, path: p, method, agent: false }, (res) => {
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

/** The cluster stays up: pgBackRest (bench/wal_compare.ts) reads its pg_control and pg_wal. */
async function makeSegments(dir: string): Promise<{ names: string[]; cluster: PgCluster }> {
  const cluster = await startCluster({ settings: { wal_recycle: "off", wal_keep_size: "4GB", max_wal_size: "4GB" } });
  try {
    await cluster.pgbench(["-i", "-s", String(SCALE)]);
    const rows = await cluster.query<{ name: string }>("SELECT pg_walfile_name(pg_switch_wal()) AS name");
    const last = rows[0].name;
    const walDir = path.join(cluster.dataDir, "pg_wal");
    const names = readdirSync(walDir)
      .filter((n) => /^[0-9A-F]{24}$/.test(n) && n <= last)
      .sort();
    for (const name of names) copyFileSync(path.join(walDir, name), path.join(dir, name));
    return { names, cluster };
  } catch (err) {
    await cluster.destroy();
    throw err;
  }
}

/** pgbench scale: enough WAL for a burst of at least 10 full segments. */
const SCALE = 12;

async function main(): Promise<void> {
  const runs = arg("--runs", 20);
  const work = await makeTempDir("pghoard-bench-wal");
  const archiveData = path.join(work, "archive-pgdata");
  const restoreData = path.join(work, "restore-pgdata");
  for (const d of [archiveData, restoreData]) {
    mkdirSync(path.join(d, "pg_wal"), { recursive: true });
    writeFileSync(path.join(d, "PG_VERSION"), "15\n");
  }
  process.stdout.write(`creating WAL with pgbench -i -s ${SCALE} ...\n`);
  const { names: segments, cluster } = await makeSegments(path.join(archiveData, "pg_wal"));
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
    // Profiling: BENCH_LOG_LEVEL=INFO shows each call's stages with their times.
    log_level: process.env.BENCH_LOG_LEVEL ?? "WARNING",
    compression: { algorithm: "snappy" },
    restore_prefetch: 1,
    backup_sites: {
      bench: { ...site, pg_data_directory: archiveData },
      benchrestore: { ...site, prefix: "bench", active: false, pg_data_directory: restoreData },
    },
  };
  const configPath = path.join(work, "pghoard.json");
  writeFileSync(configPath, JSON.stringify(config));
  // BENCH_DAEMON_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof" profiles the daemon.
  const daemonNodeArgs = (process.env.BENCH_DAEMON_NODE_ARGS ?? "").split(" ").filter(Boolean);
  const daemon = spawn(process.execPath, [...daemonNodeArgs, pghoardBin, "--config", configPath], {
    cwd: work,
    stdio: ["ignore", "ignore", "inherit"],
  });
  try {
    await waitFor(() => existsSync(config.json_state_file_path), 30_000);
    while ((await request(port, "/status")) !== 200) await sleep(50);

    if (process.argv.includes("--compare-only")) {
      await compareSection();
      return;
    }
    const floor: number[] = [];
    type Kind = "archive" | "prefetched" | "onDemand" | "directPrefetched" | "directOnDemand";
    const samples: Record<Kind | "archiveHttp", number[]> = {
      archive: [],
      archiveHttp: [],
      prefetched: [],
      onDemand: [],
      directPrefetched: [],
      directOnDemand: [],
    };
    // Paired differences: a fresh floor sample right before each measured process, so that load
    // from elsewhere on the machine affects both sides of a difference alike.
    const paired: Record<Kind, number[]> = {
      archive: [],
      prefetched: [],
      onDemand: [],
      directPrefetched: [],
      directOnDemand: [],
    };
    const restoreWal = path.join(restoreData, "pg_wal");
    const common = ["--port", String(port)];
    const measure = async (kind: Kind, args: string[], cwd?: string): Promise<void> => {
      const f0 = (await runProcess(["-e", "0"])).ms;
      floor.push(f0);
      const r = await runProcess(args, cwd);
      if (r.code !== 0) throw new Error(`${kind} failed: ${r.out}`);
      samples[kind].push(r.ms);
      paired[kind].push(r.ms - f0);
    };

    // Warm-up: first uploads create directories, first process starts fill the page cache.
    for (const name of segments) {
      const r = await runProcess([commandBin, ...common, "--site", "bench", "--mode", "archive", "--xlog", name]);
      if (r.code !== 0) throw new Error(`archive ${name} failed: ${r.out}`);
    }
    await runProcess(["-e", "0"]);

    for (let i = 0; i < runs; i++) {
      const name = segments[i % segments.length];
      // A new mtime: the daemon must not answer from its work-ahead entry for the unchanged file.
      const touch = (): void => utimesSync(path.join(archiveData, "pg_wal", name), new Date(), new Date());
      touch();
      await measure("archive", [commandBin, ...common, "--site", "bench", "--mode", "archive", "--xlog", name]);
      // The daemon's share: the same PUT without starting a process.
      touch();
      const t0 = process.hrtime.bigint();
      if ((await request(port, `/bench/archive/${name}`, "PUT")) !== 201) throw new Error("PUT failed");
      samples.archiveHttp.push(Number(process.hrtime.bigint() - t0) / 1e6);

      // On demand: nothing prefetched, no download pending for this name.
      const index = i % (segments.length - 1);
      const seg = segments[index];
      const next = segments[index + 1];
      for (const f of readdirSync(restoreWal)) unlinkSync(path.join(restoreWal, f));
      // `via`: how the command reaches the WAL (the daemon's port, or --config for the direct mode).
      const restoreArgs = (xlog: string, via = common): string[] => [
        commandBin,
        ...via,
        "--site",
        "benchrestore",
        "--mode",
        "restore",
        "--xlog",
        xlog,
        "--output",
        "pg_wal/RECOVERYXLOG",
      ];
      await measure("onDemand", restoreArgs(seg), restoreData);
      // That request prefetched the next segment; restore it the way PostgreSQL would.
      await waitFor(() => existsSync(path.join(restoreWal, `${next}.pghoard.prefetch`)), 30_000);
      // PostgreSQL removes %p before each restore_command (xlogarchive.c, RestoreArchivedFile).
      rmSync(path.join(restoreWal, "RECOVERYXLOG"), { force: true });
      await measure("prefetched", restoreArgs(next), restoreData);

      // The direct mode on the same segments: no daemon involved, the command's own read-ahead.
      for (const f of readdirSync(restoreWal)) unlinkSync(path.join(restoreWal, f));
      const directArgs = (xlog: string): string[] => restoreArgs(xlog, ["--config", configPath]);
      // A read-ahead process still running would load the next measurement: wait until it is done.
      // (A short pause first: a just-spawned one has not written its marker yet.)
      const readAheadDone = async (): Promise<void> => {
        await sleep(300);
        await waitFor(() => !readdirSync(restoreWal).some((f) => f.endsWith(".pghoard.prefetcher")), 30_000);
      };
      await measure("directOnDemand", directArgs(seg), restoreData);
      await waitFor(() => existsSync(path.join(restoreWal, `${next}.pghoard.prefetch`)), 30_000);
      await readAheadDone();
      rmSync(path.join(restoreWal, "RECOVERYXLOG"), { force: true });
      await measure("directPrefetched", directArgs(next), restoreData);
      await readAheadDone();
    }

    const f = stats(floor);
    const rows: Array<[string, number[], number[] | null, number | null]> = [
      ["floor: node -e 0", floor, null, null],
      ["archive 16 MiB (snappy+enc)", samples.archive, paired.archive, 50],
      ["  daemon share (PUT, no spawn)", samples.archiveHttp, null, null],
      ["restore, prefetched", samples.prefetched, paired.prefetched, 15],
      ["restore, on demand", samples.onDemand, paired.onDemand, null],
      ["direct restore, prefetched", samples.directPrefetched, paired.directPrefetched, null],
      ["direct restore, on demand", samples.directOnDemand, paired.directOnDemand, null],
    ];
    process.stdout.write(
      `\n${runs} runs each, ${os.cpus().length} CPUs, load average ${os.loadavg()[0].toFixed(1)}, node ${process.version}, storage ${storage.directory}\n`,
    );
    process.stdout.write(
      `${"".padEnd(31)}${"median".padStart(9)}${"p90".padStart(9)}${"min".padStart(9)}${"Δ floor".padStart(10)}${"Δ paired".padStart(10)}  target (on Δ paired median)\n`,
    );
    for (const [label, values, deltas, target] of rows) {
      const s = stats(values);
      const pairedMedian = deltas ? stats(deltas).median : null;
      const verdict =
        target === null || pairedMedian === null ? "" : `≤ +${target} ms: ${pairedMedian <= target ? "met" : "MISSED"}`;
      process.stdout.write(
        `${label.padEnd(31)}${s.median.toFixed(1).padStart(9)}${s.p90.toFixed(1).padStart(9)}${s.min.toFixed(1).padStart(9)}` +
          `${(deltas ? `+${(s.median - f.median).toFixed(1)}` : "").padStart(10)}` +
          `${(pairedMedian === null ? "" : `+${pairedMedian.toFixed(1)}`).padStart(10)}  ${verdict}\n`,
      );
    }
    if (process.argv.includes("--no-pgbackrest")) return;
    await compareSection();
  } finally {
    daemon.kill("SIGTERM");
    await new Promise((r) => daemon.once("exit", r));
    await cluster.destroy();
    rmSync(work, { recursive: true, force: true });
  }

  async function compareSection(): Promise<void> {
    await compareWithPgBackRest({
      work,
      port,
      site: "bench",
      siteDataDir: archiveData,
      restoreSite: "benchrestore",
      restoreDataDir: restoreData,
      clusterDataDir: cluster.dataDir,
      clusterPort: cluster.port,
      clusterSocketDir: cluster.socketDir,
      segments,
      shellBin,
      runs,
      daemonPid: daemon.pid,
      oursOnly: process.argv.includes("--ours-only"),
    });
    process.stdout.write(
      `load average after: ${os
        .loadavg()
        .map((l) => l.toFixed(1))
        .join(" ")}\n`,
    );
  }
}

/** Sustained archiving in the three WAL modes side by side (bench/wal_streaming.ts). */
async function streamingSection(): Promise<void> {
  process.stdout.write("\n--- sustained archiving under write load ---\n");
  await benchStreamingArchiving({ seconds: arg("--seconds", 20), clients: arg("--clients", 4) });
}

if (!process.argv.includes("--streaming-only")) await main();
if (process.argv.includes("--streaming") || process.argv.includes("--streaming-only")) await streamingSection();
