/**
 * pgBackRest next to us in the same bench run: a stanza for a throwaway cluster (repo encrypted
 * with aes-256-cbc, lz4, process-max 2 by default, as the comparison), its archive_command,
 * and commands timed with /usr/bin/time (wall time including process start, CPU of every process).
 */
import { execFileSync, spawnSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { runAsPostgres, type PgCluster } from "../test/helpers/pgcluster.js";

export interface Timed {
  seconds: number;
  cpuSeconds: number;
  stdout: string;
}

export interface PgBackRest {
  conf: string;
  repo: string;
  /** archive_command archiving into this stanza (synchronous archive-push). */
  archiveCommand: string;
  /** Runs `pgbackrest --config=… --stanza=bench ARGS` as postgres; throws on failure. */
  run(args: string[]): Timed;
}

/** Runs a command under /usr/bin/time; the last stderr line holds "wall user sys". */
export function timeCommand(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Timed {
  const res = spawnSync("/usr/bin/time", ["-f", "BENCH %e %U %S", cmd, ...args], {
    encoding: "utf8",
    env,
    maxBuffer: 64 * 1024 * 1024,
  });
  if (res.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed: ${res.stderr}${res.stdout}`);
  const m = /BENCH ([\d.]+) ([\d.]+) ([\d.]+)\s*$/.exec(res.stderr);
  if (!m) throw new Error(`no timing in: ${res.stderr}`);
  return { seconds: Number(m[1]), cpuSeconds: Number(m[2]) + Number(m[3]), stdout: res.stdout };
}

export function pgbackrestInstalled(): boolean {
  if (spawnSync("sh", ["-c", "command -v pgbackrest"]).status === 0) return true;
  const install = spawnSync("sh", ["-c", "DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbackrest"]);
  return install.status === 0;
}

export function setupPgBackRest(
  cluster: PgCluster,
  workDir: string,
  opts: { processMax?: number; compressType?: string } = {},
): PgBackRest {
  const repo = path.join(workDir, "pgbackrest-repo");
  const conf = path.join(workDir, "pgbackrest.conf");
  const log = path.join(workDir, "pgbackrest-log");
  const lock = path.join(workDir, "pgbackrest-lock");
  for (const dir of [repo, log, lock]) mkdirSync(dir, { recursive: true });
  writeFileSync(
    conf,
    [
      "[global]",
      `repo1-path=${repo}`,
      "repo1-cipher-type=aes-256-cbc",
      "repo1-cipher-pass=bench-cipher-passphrase-0123456789",
      `log-path=${log}`,
      `lock-path=${lock}`,
      `compress-type=${opts.compressType ?? "lz4"}`,
      `process-max=${opts.processMax ?? 2}`,
      "start-fast=y",
      "log-level-console=warn",
      "",
      "[bench]",
      `pg1-path=${cluster.dataDir}`,
      `pg1-port=${cluster.port}`,
      `pg1-socket-path=${cluster.socketDir}`,
      "",
    ].join("\n"),
  );
  if (runAsPostgres) execFileSync("chown", ["-R", "postgres:postgres", repo, conf, log, lock]);
  const asPostgres = (args: string[]): [string, string[]] =>
    runAsPostgres ? ["runuser", ["-u", "postgres", "--", "pgbackrest", ...args]] : ["pgbackrest", args];
  return {
    conf,
    repo,
    archiveCommand: `pgbackrest --config=${conf} --stanza=bench archive-push %p`,
    run(args) {
      const [cmd, argv] = asPostgres([`--config=${conf}`, "--stanza=bench", ...args]);
      return timeCommand(cmd, argv);
    },
  };
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** Points the cluster's archive_command at `command` (and wakes the archiver). */
export async function setArchiveCommand(cluster: PgCluster, command: string): Promise<void> {
  await cluster.query(`ALTER SYSTEM SET archive_command = '${command.replace(/'/g, "''")}'`);
  await cluster.query("SELECT pg_reload_conf()");
}
