/**
 * bench/wal.ts's side-by-side section: per-call times of our client (the native front
 * dist/native/pghoard_postgres_command where it was built, which hands all but a prefetched restore
 * to the bash client bin/pghoard_postgres_command; else the bash client)
 * against pgBackRest's archive-push / archive-get, in one run on the same segments, as PostgreSQL
 * calls them (one process per file, serially):
 *   archive, one at a time     a single ready segment (ours: the PUT does the work; pgBackRest sync,
 *                              and async with that one `.ready`)
 *   archive, burst of N        N segments marked `.ready` at once, then N calls in a row, each
 *                              `.ready` renamed to `.done` after its call as PostgreSQL does (ours:
 *                              the daemon works ahead; pgBackRest async pushes ahead with process-max 2)
 *   restore, prefetched        the call after a previous one, once the file was fetched ahead (%p
 *                              removed first, as PostgreSQL does before every restore_command)
 *   restore, on demand         a segment nobody fetched yet
 * Every call is timed as PostgreSQL makes it: forked from a small process, through `/bin/sh -c`
 * (bench/lean_spawn.ts), so Node's costly fork is in no figure.
 * pgBackRest 2.45 from apt: repo encrypted with aes-256-cbc, lz4 and zst, process-max 2.
 * Ours: snappy + RSA/AES (the daemon's config in bench/wal.ts), `local` storage.
 */
import {
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import path from "node:path";
import os from "node:os";
import { LeanSpawner, type Timed } from "./lean_spawn.js";
import { measureArchiveFloor } from "./wal_floor.js";

export interface CompareSetup {
  work: string;
  port: number;
  /** Our site: a PGDATA-like directory whose pg_wal holds `segments`. */
  site: string;
  siteDataDir: string;
  /** Our restore site and its PGDATA-like directory. */
  restoreSite: string;
  restoreDataDir: string;
  /** The real cluster the segments came from (pgBackRest checks its pg_control). */
  clusterDataDir: string;
  clusterPort: number;
  clusterSocketDir: string;
  segments: string[];
  shellBin: string;
  runs: number;
  /** Only our rows (no pgBackRest): quicker runs while profiling the daemon. */
  oursOnly?: boolean;
  /** The daemon's pid: its CPU time per burst segment is printed (Linux /proc). */
  daemonPid?: number;
}

let spawner: LeanSpawner | undefined;

/** One call timed as PostgreSQL's `system()` makes it (bench/lean_spawn.ts). */
function run(cmd: string, args: string[], cwd?: string): Promise<Timed> {
  spawner ??= new LeanSpawner();
  return spawner.run(cmd, args, cwd);
}

async function ok(what: string, p: Promise<Timed>): Promise<number> {
  const r = await p;
  if (r.code !== 0) throw new Error(`${what} failed (${r.code}): ${r.out}`);
  return r.ms;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? NaN;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function waitFor(condition: () => boolean, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("timed out");
    await sleep(5);
  }
}

interface Variant {
  name: string;
  compress: "lz4" | "zst";
  async: boolean;
  config: string;
  dir: string;
}

function makeVariant(s: CompareSetup, compress: "lz4" | "zst", async: boolean): Variant {
  const name = `${async ? "async" : "sync"} ${compress}`;
  const dir = path.join(s.work, `pgbackrest-${compress}-${async ? "async" : "sync"}`);
  mkdirSync(dir, { recursive: true });
  const config = path.join(dir, "pgbackrest.conf");
  writeFileSync(
    config,
    [
      "[global]",
      `repo1-path=${dir}/repo`,
      "repo1-cipher-type=aes-256-cbc",
      "repo1-cipher-pass=bench-cipher-pass",
      `compress-type=${compress}`,
      "process-max=2",
      `archive-async=${async ? "y" : "n"}`,
      `spool-path=${dir}/spool`,
      `lock-path=${dir}/lock`,
      `log-path=${dir}/log`,
      "log-level-console=warn",
      "log-level-file=off",
      "",
      "[bench]",
      `pg1-path=${s.clusterDataDir}`,
      `pg1-port=${s.clusterPort}`,
      `pg1-socket-path=${s.clusterSocketDir}`,
      "pg1-user=postgres",
      "",
    ].join("\n"),
  );
  return { name, compress, async, config, dir };
}

const pgbr = (v: Variant, args: string[], cwd?: string): Promise<Timed> =>
  run("pgbackrest", [`--config=${v.config}`, "--stanza=bench", ...args], cwd);

/** Removes a segment from a pgBackRest repo and its async spool (so the next push does the work). */
function forget(v: Variant, seg: string): void {
  const archiveRoot = path.join(v.dir, "repo", "archive", "bench");
  if (existsSync(archiveRoot)) {
    for (const dbId of readdirSync(archiveRoot)) {
      const dir = path.join(archiveRoot, dbId, seg.slice(0, 16));
      if (!existsSync(dir)) continue;
      for (const f of readdirSync(dir)) if (f.startsWith(seg)) rmSync(path.join(dir, f));
    }
  }
  for (const sub of ["out", "in"]) {
    const spool = path.join(v.dir, "spool", "archive", "bench", sub);
    if (!existsSync(spool)) continue;
    for (const f of readdirSync(spool)) if (f.startsWith(seg)) rmSync(path.join(spool, f), { force: true });
  }
}

/** Waits until no download writes into `dir` (no `.pghoard.tmp` file there for 200 ms). */
async function settled(dir: string): Promise<void> {
  let quietSince = Date.now();
  await waitFor(() => {
    if (readdirSync(dir).some((f) => f.endsWith(".pghoard.tmp"))) quietSince = Date.now();
    return Date.now() - quietSince >= 200;
  });
}

function statusDir(dataDir: string): string {
  const dir = path.join(dataDir, "pg_wal", "archive_status");
  mkdirSync(dir, { recursive: true });
  return dir;
}

function clearStatus(dataDir: string): void {
  const dir = statusDir(dataDir);
  for (const f of readdirSync(dir)) rmSync(path.join(dir, f));
}

/** /proc/<pid>/stat fields after the command name; null where /proc is missing. */
function procStat(pid: number | undefined): string[] | null {
  if (pid === undefined) return null;
  try {
    return readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  } catch {
    return null;
  }
}

/** CPU seconds (user + system, all threads) a process used so far; NaN where /proc is missing. */
function cpuSeconds(pid: number | undefined): number {
  const fields = procStat(pid);
  return fields ? (Number(fields[11]) + Number(fields[12])) / 100 : NaN; // utime, stime in USER_HZ (100) ticks
}

/**
 * Minor page faults of a process so far (all threads): a load-independent count of fresh memory
 * touched, which costs several µs a fault on a VM.
 */
function minorFaults(pid: number | undefined): number {
  const fields = procStat(pid);
  return fields ? Number(fields[7]) : NaN;
}

/** A new identity for our copy of the segment: the daemon must do the work again. */
function touch(dataDir: string, seg: string): void {
  const now = new Date();
  utimesSync(path.join(dataDir, "pg_wal", seg), now, now);
}

export async function compareWithPgBackRest(s: CompareSetup): Promise<void> {
  const version = (await run("pgbackrest", ["version"])).out.trim();
  const variants = [
    makeVariant(s, "lz4", false),
    makeVariant(s, "zst", false),
    makeVariant(s, "lz4", true),
    makeVariant(s, "zst", true),
  ].filter(() => !s.oursOnly);
  for (const v of variants) await ok(`stanza-create ${v.name}`, pgbr(v, ["stanza-create"]));
  const theirWal = (seg: string): string => path.join(s.clusterDataDir, "pg_wal", seg);
  const ours = (args: string[], cwd?: string): Promise<Timed> =>
    run(s.shellBin, ["--port", String(s.port), ...args], cwd);
  const oursArchive = (seg: string): Promise<Timed> => ours(["--site", s.site, "--mode", "archive", "--xlog", seg]);
  const results = new Map<string, number[]>();
  const daemonCpu: number[] = [];
  const daemonFaults: number[] = [];
  const add = (row: string, ms: number): void => {
    const list = results.get(row) ?? [];
    list.push(ms);
    results.set(row, list);
  };

  // Archive, one at a time (with the process-start floor, measured the same way).
  clearStatus(s.clusterDataDir);
  for (let i = 0; i < s.runs; i++) {
    add("floor /bin/true|ours", await ok("/bin/true", run("/bin/true", [])));
    add("floor bash -c exit|ours", await ok("bash -c exit", run("bash", ["-c", "exit"])));
    const seg = s.segments[i % s.segments.length];
    touch(s.siteDataDir, seg);
    add("archive 1|ours", await ok("ours archive", oursArchive(seg)));
    for (const v of variants) {
      forget(v, seg);
      const ready = path.join(statusDir(s.clusterDataDir), `${seg}.ready`);
      if (v.async) writeFileSync(ready, "");
      add(`archive 1|${v.name}`, await ok(`${v.name} archive-push`, pgbr(v, ["archive-push", theirWal(seg)])));
      if (v.async) renameSync(ready, ready.replace(/\.ready$/, ".done"));
    }
  }

  // Archive, a burst: every segment ready at once, then the calls in a row.
  const burst = s.segments;
  const burstRounds = Math.max(2, Math.min(5, Math.ceil(s.runs / 4)));
  for (let round = 0; round < burstRounds; round++) {
    clearStatus(s.siteDataDir);
    for (const seg of burst) touch(s.siteDataDir, seg);
    for (const seg of burst) writeFileSync(path.join(statusDir(s.siteDataDir), `${seg}.ready`), "");
    let total = 0;
    const cpu0 = cpuSeconds(s.daemonPid);
    const faults0 = minorFaults(s.daemonPid);
    for (const seg of burst) {
      total += await ok("ours burst archive", oursArchive(seg));
      const ready = path.join(statusDir(s.siteDataDir), `${seg}.ready`);
      renameSync(ready, ready.replace(/\.ready$/, ".done"));
    }
    add("archive burst|ours", total / burst.length);
    daemonCpu.push(((cpuSeconds(s.daemonPid) - cpu0) * 1000) / burst.length);
    daemonFaults.push((minorFaults(s.daemonPid) - faults0) / burst.length);
    clearStatus(s.siteDataDir);
    for (const v of variants) {
      clearStatus(s.clusterDataDir);
      for (const seg of burst) forget(v, seg);
      for (const seg of burst) writeFileSync(path.join(statusDir(s.clusterDataDir), `${seg}.ready`), "");
      let theirs = 0;
      for (const seg of burst) {
        theirs += await ok(`${v.name} burst archive-push`, pgbr(v, ["archive-push", theirWal(seg)]));
        const ready = path.join(statusDir(s.clusterDataDir), `${seg}.ready`);
        renameSync(ready, ready.replace(/\.ready$/, ".done"));
      }
      add(`archive burst|${v.name}`, theirs / burst.length);
    }
  }
  clearStatus(s.clusterDataDir);

  // Restore: every repo holds every segment (pushed synchronously once more).
  for (const v of variants) {
    for (const seg of s.segments) {
      forget(v, seg);
      await ok(`${v.name} push`, pgbr(v, ["archive-push", "--no-archive-async", theirWal(seg)]));
    }
  }
  const restoreWal = path.join(s.restoreDataDir, "pg_wal");
  const theirRestore = path.join(s.work, "pgbackrest-restore", "pg_wal");
  mkdirSync(theirRestore, { recursive: true });
  const emptyDir = (dir: string): void => {
    for (const f of readdirSync(dir)) rmSync(path.join(dir, f), { recursive: true, force: true });
  };
  const oursRestore = (seg: string): Promise<Timed> =>
    ours(
      ["--site", s.restoreSite, "--mode", "restore", "--xlog", seg, "--output", "pg_wal/RECOVERYXLOG"],
      s.restoreDataDir,
    );
  for (let i = 0; i < s.runs; i++) {
    const index = i % (s.segments.length - 1);
    const seg = s.segments[index];
    const next = s.segments[index + 1];
    // The daemon's downloads ahead still writing must not lose their temp file to emptyDir.
    await settled(restoreWal);
    emptyDir(restoreWal);
    add("restore on demand|ours", await ok("ours restore", oursRestore(seg)));
    await waitFor(() => existsSync(path.join(restoreWal, `${next}.pghoard.prefetch`)));
    // PostgreSQL removes %p before each restore_command (xlogarchive.c, RestoreArchivedFile); on this
    // ext4 (mounted with `discard`) replacing a 16 MiB file costs ~7 ms of block freeing in the call.
    rmSync(path.join(restoreWal, "RECOVERYXLOG"), { force: true });
    add("restore prefetched|ours", await ok("ours restore prefetched", oursRestore(next)));
    for (const v of variants) {
      emptyDir(theirRestore);
      for (const sub of ["in"]) {
        const spool = path.join(v.dir, "spool", "archive", "bench", sub);
        if (existsSync(spool)) emptyDir(spool);
      }
      const out = path.join(theirRestore, "RECOVERYXLOG");
      add(`restore on demand|${v.name}`, await ok(`${v.name} archive-get`, pgbr(v, ["archive-get", seg, out])));
      if (v.async) {
        // The async get queued the segments after it into the spool: the next call is "prefetched".
        const spooled = path.join(v.dir, "spool", "archive", "bench", "in", next);
        await waitFor(() => existsSync(spooled) || existsSync(`${spooled}.ok`));
        await sleep(50);
        rmSync(out, { force: true }); // as PostgreSQL does before each call (see above)
        add(
          `restore prefetched|${v.name}`,
          await ok(`${v.name} archive-get next`, pgbr(v, ["archive-get", next, out])),
        );
      }
    }
  }

  // The floor rows: what starting a process costs here, measured like every call (spawn → exit).
  const rows = [
    "floor /bin/true",
    "floor bash -c exit",
    "archive 1",
    "archive burst",
    "restore prefetched",
    "restore on demand",
  ];
  const cols = ["ours", ...variants.map((v) => v.name)];
  const bashFloor = median(results.get("floor bash -c exit|ours") ?? []);
  process.stdout.write(
    `\n--- per call, median ms, timed as PostgreSQL's system() runs them: our ${path.basename(path.dirname(s.shellBin)) === "native" ? "native front and bash client" : "bash client"} vs ${version} (aes-256-cbc, process-max 2) ---\n` +
      `burst = ${burst.length} segments ready at once, ${burstRounds} rounds; ${s.runs} runs otherwise; ` +
      `"− bash" = ours minus the \`bash -c exit\` floor\n`,
  );
  process.stdout.write(
    `${"".padEnd(20)}${cols.map((c) => c.padStart(11)).join("")}${"− bash".padStart(9)}   ours ÷ theirs\n`,
  );
  for (const row of rows) {
    const med = cols.map((c) => (results.has(`${row}|${c}`) ? median(results.get(`${row}|${c}`) ?? []) : NaN));
    const ratios = variants
      .map((v, i) => (Number.isNaN(med[i + 1]) ? "" : `${v.name} ${(med[0] / med[i + 1]).toFixed(2)}`))
      .filter(Boolean)
      .join(", ");
    const over = med[0] - bashFloor;
    const overFloor = row.startsWith("floor") ? "" : `${over >= 0 ? "+" : ""}${over.toFixed(1)}`;
    process.stdout.write(
      `${row.padEnd(20)}${med.map((m) => (Number.isNaN(m) ? "—" : m.toFixed(1)).padStart(11)).join("")}` +
        `${overFloor.padStart(9)}   ${ratios}\n`,
    );
  }
  spawner?.close();
  spawner = undefined;
  if (daemonCpu.length && !Number.isNaN(daemonCpu[0]!)) {
    process.stdout.write(
      `daemon CPU per burst segment (all threads): ${daemonCpu.map((c) => c.toFixed(0)).join(", ")} ms\n` +
        `daemon minor page faults per burst segment: ${daemonFaults.map((c) => c.toFixed(0)).join(", ")}\n`,
    );
  }
  // The burst's floor here: the unavoidable work per segment plus one process start per call,
  // spread over every core (bench/wal_floor.ts).
  const floor = measureArchiveFloor(
    burst.map((seg) => path.join(s.siteDataDir, "pg_wal", seg)),
    s.work,
  );
  const cores = os.cpus().length;
  const start = median(results.get("floor /bin/true|ours") ?? []);
  process.stdout.write(
    `archive floor per segment, one thread, synchronous (read, sha1, snappy, AES-CTR + HMAC, write, fsync): ` +
      `${floor.cpuMs.toFixed(1)} ms CPU, ${floor.wallMs.toFixed(1)} ms wall\n` +
      `burst floor per call on ${cores} cores: (${floor.cpuMs.toFixed(1)} + ${start.toFixed(1)} process start) ÷ ${cores} = ` +
      `${((floor.cpuMs + start) / cores).toFixed(1)} ms; ours ${median(results.get("archive burst|ours") ?? []).toFixed(1)} ms\n`,
  );
}
