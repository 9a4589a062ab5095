/**
 * `get-basebackup` never writes into a live cluster (issue 11): the data directory of a running
 * PostgreSQL (its postmaster.pid names a live postgres) and the `pg_data_directory` of an active
 * site are refused even with --overwrite or --delta, with one clear line, exit 1, nothing
 * touched and nothing created; the running cluster keeps answering queries. A stale
 * postmaster.pid (dead process, a pid reused by another program, or a postgres of another
 * directory) does not block. (A tablespace directory in use: delta.test.ts, which has a backup
 * with a tablespace.)
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { lstat, mkdir, readFile, readdir, rm, symlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";

import { hasShared } from "../helpers/paths.js";
import { makeTempDir, startCluster, type PgCluster } from "../helpers/pgcluster.js";
import { pghoardMadeDir, runRestoreCli, writeFixtureConfig } from "./helpers.js";

const SET = "zstd-plain-localtar";
const skip =
  hasShared && existsSync(pghoardMadeDir) ? false : "shared fixtures (../shared/fixtures/pghoard-made) absent";

/** Files PostgreSQL itself may rewrite while idle; everything else must keep content and mtime. */
const VOLATILE = /^(pg_wal|pg_stat_tmp|pg_stat|pg_logical|pg_subtrans|pg_xact|pg_multixact)\/|^global\/pg_control$/;

/** path → size and mtime of every file (the "untouched" check). */
async function filesWithMtimes(root: string): Promise<Map<string, string>> {
  const result = new Map<string, string>();
  async function walk(rel: string): Promise<void> {
    for (const name of await readdir(path.join(root, rel))) {
      const childRel = rel ? `${rel}/${name}` : name;
      const st = await lstat(path.join(root, childRel));
      if (st.isDirectory()) await walk(childRel);
      else if (!VOLATILE.test(childRel)) result.set(childRel, `${st.size} ${st.mtimeMs}`);
    }
  }
  await walk("");
  return result;
}

async function deadPid(): Promise<number> {
  const child = spawn("/bin/true");
  await new Promise((resolve) => child.once("exit", resolve));
  return child.pid!;
}

describe("get-basebackup refuses targets in use", { skip, timeout: 300_000 }, () => {
  let work: string;
  let config: string;
  let victim: PgCluster;

  before(async () => {
    work = await makeTempDir("safe-targets");
    config = await writeFixtureConfig(SET, work);
    victim = await startCluster({ settings: { autovacuum: "off" } });
    await victim.query("CREATE TABLE precious AS SELECT i FROM generate_series(1, 1000) i");
    await victim.query("CHECKPOINT");
  });

  after(async () => {
    await victim?.destroy();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it("the data directory of a running PostgreSQL, with --overwrite or --delta: refused, cluster untouched", async () => {
    const before = await filesWithMtimes(victim.dataDir);
    for (const flag of ["--overwrite", "--delta"]) {
      const result = await runRestoreCli(["get-basebackup", "--config", config, "--target-dir", victim.dataDir, flag]);
      assert.equal(result.code, 1, result.stdout + result.stderr);
      assert.match(
        result.stdout,
        /^FATAL: RestoreError: \$PGDATA target directory '.*' is in use by a running PostgreSQL \(postmaster\.pid names live process \d+\), refusing to restore into it, even with --overwrite or --delta; stop that PostgreSQL first\n$/,
      );
      assert.doesNotMatch(result.stdout + result.stderr, /at .*\.js:\d+/, "no stack trace");
    }
    assert.deepEqual(await filesWithMtimes(victim.dataDir), before);
    assert.deepEqual(await victim.query("SELECT count(*)::int AS n FROM precious"), [{ n: 1000 }]);
  });

  it("a directory inside a running cluster's data directory: refused, nothing created", async () => {
    const inside = path.join(victim.dataDir, "restore-here");
    const result = await runRestoreCli(["get-basebackup", "--config", config, "--target-dir", inside]);
    assert.equal(result.code, 1);
    assert.match(result.stdout, /overlaps '.*', the data directory of a running PostgreSQL \(pid \d+\)/);
    assert.ok(!existsSync(inside));
  });

  it("the pg_data_directory of an active site (through a symlink): refused even with --overwrite; inactive: restored", async () => {
    const live = path.join(work, "live-data");
    await mkdir(live);
    await writeFile(path.join(live, "PG_VERSION"), "15\n");
    await writeFile(path.join(live, "keep-me"), "x");
    const link = path.join(work, "link-to-live");
    await symlink(live, link);
    const raw = JSON.parse(await readFile(config, "utf8")) as { backup_sites: Record<string, Record<string, unknown>> };
    raw.backup_sites[SET].pg_data_directory = live;
    raw.backup_sites[SET].active = true;
    const activeConfig = path.join(work, "active.json");
    await writeFile(activeConfig, JSON.stringify(raw));
    for (const flag of ["--overwrite", "--delta"]) {
      const result = await runRestoreCli(["get-basebackup", "--config", activeConfig, "--target-dir", link, flag]);
      assert.equal(result.code, 1, result.stdout + result.stderr);
      assert.match(
        result.stdout,
        new RegExp(
          `^FATAL: RestoreError: \\$PGDATA target directory '${link}' is the pg_data_directory of active site '${SET}' in the configuration, refusing to restore into it, even with --overwrite or --delta; restore elsewhere, or mark the site inactive\\n$`,
        ),
      );
    }
    assert.deepEqual((await readdir(live)).sort(), ["PG_VERSION", "keep-me"]);
    assert.ok((await lstat(link)).isSymbolicLink());

    raw.backup_sites[SET].active = false;
    await writeFile(activeConfig, JSON.stringify(raw));
    const ok = await runRestoreCli(["get-basebackup", "--config", activeConfig, "--target-dir", live, "--overwrite"]);
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    assert.ok(existsSync(path.join(live, "global", "pg_control")));
  });

  it("a stale postmaster.pid does not block: dead pid, pid of another program, postgres of another directory", async () => {
    const victimPid = (await readFile(path.join(victim.dataDir, "postmaster.pid"), "utf8")).split("\n")[0];
    const pids = { dead: String(await deadPid()), "other program": String(process.pid), "other postgres": victimPid };
    for (const [what, pid] of Object.entries(pids)) {
      const target = path.join(work, `stale-${what.replace(/ /g, "-")}`);
      await mkdir(target);
      await writeFile(path.join(target, "postmaster.pid"), `${pid}\n${target}\n1700000000\n5432\n`);
      const result = await runRestoreCli(["get-basebackup", "--config", config, "--target-dir", target, "--overwrite"]);
      assert.equal(result.code, 0, `${what}: ${result.stdout}${result.stderr}`);
      assert.ok(existsSync(path.join(target, "global", "pg_control")), what);
      assert.ok(!existsSync(path.join(target, "postmaster.pid")), what);
    }
    assert.deepEqual(await victim.query("SELECT count(*)::int AS n FROM precious"), [{ n: 1000 }]);
  });
});
