/**
 * Restore throughput: `pghoard_restore get-basebackup` of a pgbench database, per basebackup mode
 * and compression, with peak RSS, next to GNU `tar -xf` of the same data uncompressed (same run,
 * same disk).
 *
 *   npm run build && node dist/bench/restore.js [--scale 70] [--runs 1] [--combos local-tar:snappy,local-tar:zstd,...]
 *
 * A throwaway PostgreSQL 15 cluster is loaded with `pgbench -i -s <scale>` (70 ≈ 1.05 GB), the
 * daemon takes one backup per combination (encrypted), then each backup is restored with the real
 * command (a child process, timed with /usr/bin/time for the peak RSS). MB/s = plaintext bytes
 * (`total-size-plain`, else `original-file-size`) / wall time. Upstream pghoard's published
 * figures for comparison: 171 MiB/s (snappy), 222 MiB/s (zstd).
 *
 * `--delta` also times `get-basebackup --delta` over each fresh restore after a 1% change (see
 * changeOnePercent), next to the full restore of the same backup. `--partitions N` passes
 * `--partitions N` to `pgbench -i`, so a change can stay inside some files as it does in a real
 * database with many relations (a 1 GB pgbench_accounts segment touched anywhere is one changed file).
 *
 * Each restore is followed by `pghoard_restore verify` of the same backup (MiB/s = decoded bytes,
 * WAL included / wall time).
 *
 * `--pgbackrest`: a pgBackRest full backup of the same database (lz4, aes-256-cbc, process-max 2)
 * is restored right after each of ours (A/B/A/B, so machine load hits both), and the medians are
 * printed with ours ÷ pgBackRest. Both restores are durable: pgBackRest fsyncs every file and
 * directory, ours too before global/pg_control goes in place. `--no-verify` skips the verify runs.
 *
 * `--compare-with <checkout>` (A/B of two builds): the same backup is also restored by that
 * checkout's `bin/pghoard_restore.js` (its own dist/), right after this build's, each run; the
 * medians of both and this ÷ that (wall and CPU seconds) are printed. `--compare-env "K=V …"` runs
 * that checkout with those environment variables (with `--compare-with .`: a run-time setting A/B).
 * Each restore's wall and CPU seconds and minor page faults are printed as it finishes.
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { open, readdir, readFile, rm, stat, unlink, writeFile } from "node:fs/promises";
import { existsSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";

import { requestBackup, type Scenario } from "../test/basebackup/helpers.js";
import { DaemonProcess, makeDaemonEnv, makeKeyPair, postgresCommandBin } from "../test/daemon/helpers.js";
import { repoRoot } from "../test/helpers/paths.js";
import { chownToPostgres, makeTempDir, startCluster } from "../test/helpers/pgcluster.js";
import { median, pgbackrestInstalled, setArchiveCommand, setupPgBackRest, type PgBackRest } from "./pgbackrest.js";

const execFileAsync = promisify(execFile);
const MiB = 1024 * 1024;

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1] : fallback;
}

interface Row {
  what: string;
  plainBytes: number;
  storedBytes: number;
  seconds: number;
  rssMb: number;
  cpuSeconds: number;
}

async function timed(
  cmd: string,
  args: string[],
  opts: { allowFailure?: boolean } = {},
): Promise<{
  seconds: number;
  rssMb: number;
  cpuSeconds: number;
  minorFaults: number;
  stdout: string;
  failed: boolean;
}> {
  let stdout: string;
  let stderr: string;
  let failed = false;
  try {
    ({ stdout, stderr } = await execFileAsync("/usr/bin/time", ["-f", "BENCH %e %M %U %S %R", cmd, ...args], {
      maxBuffer: 64 * MiB,
    }));
  } catch (err) {
    // `verify` exits 1 when something is missing; its timing is still worth showing.
    const e = err as { stdout?: string; stderr?: string };
    if (!opts.allowFailure || e.stderr === undefined) throw err;
    ({ stdout = "", stderr } = e as { stdout?: string; stderr: string });
    failed = true;
  }
  const m = /BENCH ([\d.]+) (\d+) ([\d.]+) ([\d.]+) (\d+)/.exec(stderr);
  if (!m) throw new Error(`no timing in: ${stderr}`);
  return {
    seconds: Number(m[1]),
    rssMb: Number(m[2]) / 1024,
    cpuSeconds: Number(m[3]) + Number(m[4]),
    minorFaults: Number(m[5]),
    stdout,
    failed,
  };
}

/**
 * A 1% change of a restored data directory, as files of a diverged replica differ: one 8 KiB page
 * rewritten in relation files spread over base/ (every 7th that still fits) until 1% of the bytes
 * lie in changed files, one relation file removed, one new file. Returns a description.
 */
async function changeOnePercent(pgdata: string): Promise<string> {
  const files: Array<{ file: string; size: number }> = [];
  for (const db of await readdir(path.join(pgdata, "base"))) {
    for (const name of await readdir(path.join(pgdata, "base", db))) {
      const file = path.join(pgdata, "base", db, name);
      const st = await stat(file);
      if (st.isFile() && st.size >= 8192) files.push({ file, size: st.size });
    }
  }
  files.sort((a, b) => (a.file < b.file ? -1 : 1));
  const total = files.reduce((n, f) => n + f.size, 0);
  let changedBytes = 0;
  let changed = 0;
  for (let i = 0; i < files.length && changedBytes < total / 100; i += 7) {
    const { file, size } = files[i];
    if (changedBytes + size > total / 100) continue;
    const handle = await open(file, "r+");
    await handle.write(randomBytes(8192), 0, 8192, Math.floor(size / 8192 / 2) * 8192);
    await handle.close();
    changedBytes += size;
    changed += 1;
  }
  await unlink(files[files.length - 1].file);
  await writeFile(path.join(pgdata, "base", "1", "999999"), randomBytes(100_000));
  return `${changed} of ${files.length} relation files (${((changedBytes / total) * 100).toFixed(1)}% of ${(total / MiB).toFixed(0)} MiB) changed, 1 removed, 1 added`;
}

async function main(): Promise<void> {
  const scale = Number(arg("--scale", "70"));
  const runs = Number(arg("--runs", "1"));
  // e.g. --node-args "--cpu-prof --cpu-prof-dir=/tmp/prof" to profile the restore command
  const nodeArgs = arg("--node-args", "")
    .split(" ")
    .filter((a) => a !== "");
  const combos = arg("--combos", "local-tar:snappy,local-tar:zstd,basic:snappy,delta:zstd").split(",");
  const deltaBench = process.argv.includes("--delta");
  const partitions = Number(arg("--partitions", "0"));
  const compareWith = arg("--compare-with", "");
  // e.g. --compare-env "MALLOC_ARENA_MAX=2": the --compare-with build runs with these variables
  // (the same build twice then compares a run-time setting side by side).
  const compareEnv = arg("--compare-env", "")
    .split(" ")
    .filter((a) => a.includes("="));
  const site = "bench";
  const keys = makeKeyPair();
  const work = await makeTempDir("bench-restore");
  console.log(
    `# restore bench: pgbench scale ${scale}, ${os.cpus().length} CPUs, load average ${os
      .loadavg()
      .map((l) => l.toFixed(1))
      .join(" ")}`,
  );

  const cluster = await startCluster({
    archiveCommand: "/bin/true",
    settings: { checkpoint_timeout: "15min", max_wal_size: "4GB" },
  });
  const rows: Row[] = [];
  try {
    const t0 = Date.now();
    await cluster.pgbench([
      "-i",
      "-s",
      String(scale),
      "-q",
      ...(partitions ? ["--partitions", String(partitions)] : []),
    ]);
    await cluster.query("CHECKPOINT");
    const dbBytes = Number((await cluster.query<{ s: string }>("SELECT pg_database_size('postgres')::text AS s"))[0].s);
    console.log(
      `# pgbench -i -s ${scale}: ${(dbBytes / MiB).toFixed(0)} MiB in ${((Date.now() - t0) / 1000).toFixed(0)} s`,
    );

    let pgbr: PgBackRest | undefined;
    if (process.argv.includes("--pgbackrest")) {
      if (!pgbackrestInstalled()) throw new Error("pgbackrest is not installed (apt-get install -y pgbackrest)");
      pgbr = setupPgBackRest(cluster, work);
      pgbr.run(["stanza-create"]);
      await setArchiveCommand(cluster, pgbr.archiveCommand);
      const b = pgbr.run(["--type=full", "backup"]);
      console.log(`# pgBackRest full backup (lz4, aes-256-cbc, process-max 2) in ${b.seconds.toFixed(1)} s`);
    }
    const ratios: string[] = [];

    for (const combo of combos) {
      const [mode, algorithm] = combo.split(":");
      const env = await makeDaemonEnv(
        {
          [site]: {
            pgDataDirectory: cluster.dataDir,
            keyId: "bench-key",
            keys,
            extra: { nodes: [cluster.connectionInfo()], basebackup_mode: mode, basebackup_interval_hours: null },
          },
        },
        { compression: { algorithm }, log_level: "WARNING" },
      );
      await cluster.query(
        `ALTER SYSTEM SET archive_command = '${process.execPath} ${postgresCommandBin} --mode archive --port ${env.port} --site ${site} --xlog %f'`,
      );
      await cluster.query("SELECT pg_reload_conf()");
      const daemon = await DaemonProcess.start(env);
      const b0 = Date.now();
      let backupName: string;
      try {
        const scenario = { site, env, daemon, cluster } as unknown as Scenario;
        const entry = await requestBackup(scenario, 1_800_000);
        backupName = entry.name;
      } finally {
        await daemon.stop();
      }
      const meta = JSON.parse(
        await readFile(path.join(env.storageDir, site, "basebackup", `${backupName}.metadata`), "utf8"),
      ) as Record<string, string>;
      const plainBytes = Number(meta["total-size-plain"] ?? meta["original-file-size"]);
      const storedBytes = Number(
        meta["total-size-enc"] ?? (await stat(path.join(env.storageDir, site, "basebackup", backupName))).size,
      );
      // The objects a restore fetches (their sizes decide how evenly the workers share the work).
      const chunkDir = path.join(env.storageDir, site, "basebackup_chunk", backupName.replace(/\.\d{8}\.pghoard$/, ""));
      const chunkSizes = existsSync(chunkDir)
        ? (await readdir(chunkDir))
            .filter((n) => !n.endsWith(".metadata"))
            .sort()
            .map((n) => statSync(path.join(chunkDir, n)).size)
        : [];
      console.log(
        `# ${combo}: backup ${(plainBytes / MiB).toFixed(0)} MiB → ${(storedBytes / MiB).toFixed(0)} MiB stored in ${((Date.now() - b0) / 1000).toFixed(0)} s` +
          (chunkSizes.length ? `; chunk objects ${chunkSizes.map((b) => (b / MiB).toFixed(1)).join(" + ")} MiB` : ""),
      );
      const oursSeconds: number[] = [];
      const theirSeconds: number[] = [];
      const oursCpu: number[] = [];
      const theirCpu: number[] = [];
      const otherSeconds: number[] = [];
      const otherCpu: number[] = [];
      for (let run = 0; run < runs; run++) {
        const target = path.join(work, `restore-${mode}-${algorithm}`);
        const restore = (...extra: string[]): ReturnType<typeof timed> =>
          timed(process.execPath, [
            ...nodeArgs,
            path.join(repoRoot, "bin", "pghoard_restore.js"),
            "get-basebackup",
            "--config",
            env.configPath,
            "--target-dir",
            target,
            ...extra,
          ]);
        const r = await restore();
        rows.push({ what: `pghoard_restore ${mode} ${algorithm}+enc`, plainBytes, storedBytes, ...r });
        console.log(
          `# ${combo} run ${run}: ours ${r.seconds} s, ${r.cpuSeconds.toFixed(2)} CPU s, ${r.minorFaults} minor page faults`,
        );
        oursSeconds.push(r.seconds);
        oursCpu.push(r.cpuSeconds);
        if (compareWith) {
          const otherTarget = path.join(work, `restore-other-${mode}-${algorithm}`);
          const o = await timed(compareEnv.length ? "env" : process.execPath, [
            ...(compareEnv.length ? [...compareEnv, process.execPath] : []),
            ...nodeArgs,
            path.join(path.resolve(compareWith), "bin", "pghoard_restore.js"),
            "get-basebackup",
            "--config",
            env.configPath,
            "--target-dir",
            otherTarget,
          ]);
          console.log(
            `# ${combo} run ${run}: ${compareWith} ${compareEnv.join(" ")} ${o.seconds} s, ${o.cpuSeconds.toFixed(2)} CPU s, ${o.minorFaults} minor page faults`,
          );
          rows.push({
            what: `pghoard_restore ${mode} ${algorithm}+enc, build in ${compareWith}${compareEnv.length ? ` with ${compareEnv.join(" ")}` : ""}`,
            plainBytes,
            storedBytes,
            ...o,
          });
          otherSeconds.push(o.seconds);
          otherCpu.push(o.cpuSeconds);
          await rm(otherTarget, { recursive: true, force: true });
        }
        if (pgbr) {
          const theirs = path.join(work, "restore-pgbackrest");
          await rm(theirs, { recursive: true, force: true });
          await execFileAsync("mkdir", ["-m", "700", theirs]);
          await chownToPostgres(theirs);
          const t = pgbr.run([`--pg1-path=${theirs}`, "restore"]);
          theirSeconds.push(t.seconds);
          theirCpu.push(t.cpuSeconds);
          rows.push({
            what: "pgbackrest restore (lz4, aes-256-cbc, process-max 2)",
            plainBytes,
            storedBytes: 0,
            seconds: t.seconds,
            rssMb: 0,
            cpuSeconds: t.cpuSeconds,
          });
          await rm(theirs, { recursive: true, force: true });
        }
        if (deltaBench) {
          console.log(`# ${combo} run ${run}: ${await changeOnePercent(target)}`);
          const d = await restore("--delta");
          const what = `pghoard_restore --delta ${mode} ${algorithm}+enc after the change printed above (${(r.seconds / d.seconds).toFixed(1)}x faster)`;
          rows.push({ what, plainBytes, storedBytes, ...d });
        }
        await rm(target, { recursive: true, force: true });
        if (process.argv.includes("--no-verify")) continue;
        // verify of the same backup (and the WAL archived since its start), decoded bytes per second
        const v = await timed(
          process.execPath,
          [
            ...nodeArgs,
            path.join(repoRoot, "bin", "pghoard_restore.js"),
            "verify",
            "--config",
            env.configPath,
            "--json",
          ],
          { allowFailure: true },
        );
        const report = JSON.parse(v.stdout) as { decoded_bytes: number; stored_bytes: number; objects: number };
        rows.push({
          what: `pghoard_restore verify ${mode} ${algorithm}+enc (${report.objects} objects${v.failed ? ", problems found" : ""})`,
          plainBytes: report.decoded_bytes,
          storedBytes: report.stored_bytes,
          ...v,
        });
      }
      await rm(env.dir, { recursive: true, force: true });
      if (compareWith) {
        const [a, b] = [median(oursSeconds), median(otherSeconds)];
        const [ca, cb] = [median(oursCpu), median(otherCpu)];
        ratios.push(
          `${combo}: this build ${a.toFixed(2)} s, ${compareWith} ${b.toFixed(2)} s (medians of ${runs}, interleaved): this ÷ that ${(a / b).toFixed(2)}×; CPU s this ${ca.toFixed(2)}, that ${cb.toFixed(2)}: ${(ca / cb).toFixed(2)}×`,
        );
      }
      if (pgbr) {
        const ours = median(oursSeconds);
        const theirs = median(theirSeconds);
        const cpuOurs = median(oursCpu);
        const cpuTheirs = median(theirCpu);
        ratios.push(
          `${combo}: ours ${ours.toFixed(2)} s, pgBackRest ${theirs.toFixed(2)} s (medians of ${runs}, interleaved): ours ÷ pgBackRest ${(ours / theirs).toFixed(2)}× (target ≤ 1.00×); CPU s (user+sys) ours ${cpuOurs.toFixed(2)}, pgBackRest ${cpuTheirs.toFixed(2)}: ${(cpuOurs / cpuTheirs).toFixed(2)}×`,
        );
      }
    }
    for (const ratio of ratios) console.log(`# ${ratio}`);

    // Baseline: GNU tar extracting the same data, uncompressed.
    const tarFile = path.join(work, "base.tar");
    await execFileAsync("tar", [
      "-cf",
      tarFile,
      "-C",
      cluster.dataDir,
      "--exclude=./pg_wal",
      "--exclude=./postmaster.pid",
      ".",
    ]);
    const tarBytes = (await stat(tarFile)).size;
    for (let run = 0; run < runs; run++) {
      const target = path.join(work, "tar-x");
      await execFileAsync("mkdir", ["-p", target]);
      const r = await timed("tar", ["-xf", tarFile, "-C", target]);
      rows.push({ what: "tar -xf (uncompressed, no decryption)", plainBytes: tarBytes, storedBytes: tarBytes, ...r });
      await rm(target, { recursive: true, force: true });
    }
  } finally {
    await cluster.destroy();
    await rm(work, { recursive: true, force: true });
  }

  console.log(
    `# load average at the end ${os
      .loadavg()
      .map((l) => l.toFixed(1))
      .join(" ")}`,
  );
  console.log("");
  // CPU seconds (user + sys) say more than wall time on a shared, busy machine.
  console.log("| what | data MiB | stored MiB | seconds | MiB/s | CPU s | peak RSS MB |");
  console.log("|---|---|---|---|---|---|---|");
  for (const row of rows) {
    console.log(
      `| ${row.what} | ${(row.plainBytes / MiB).toFixed(0)} | ${(row.storedBytes / MiB).toFixed(0)} | ${row.seconds.toFixed(2)} | ${(row.plainBytes / MiB / row.seconds).toFixed(0)} | ${row.cpuSeconds.toFixed(2)} | ${row.rssMb.toFixed(0)} |`,
    );
  }
}

await main();
