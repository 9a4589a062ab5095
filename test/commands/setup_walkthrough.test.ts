/**
 * The README's "Set up a server" walkthroughs (pg_receivexlog, archive_command, walreceiver),
 * followed as written: the role SQL, pg_hba.conf lines, postgresql.conf settings, pghoard.json and
 * commands are taken from the README (blocks marked `<!-- setup-test: NAME -->`) and run against a
 * real PostgreSQL 15 cluster; only paths, ports and the command locations are substituted.
 */
import assert from "node:assert/strict";
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { appendFile, mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { findFreePort, makeTempDir, startCluster, type PgCluster } from "../helpers/pgcluster.js";
import { repoRoot } from "../helpers/paths.js";
import { httpRequest, listStoredNames, postgresCommandBin, sleep } from "../daemon/helpers.js";

async function readmeBlocks(): Promise<Record<string, string>> {
  const readme = await readFile(path.join(repoRoot, "README.md"), "utf8");
  const blocks: Record<string, string> = {};
  for (const m of readme.matchAll(/<!-- setup-test: (\w+) -->\n```\w*\n([\s\S]*?)```/g)) blocks[m[1]] = m[2];
  return blocks;
}

interface Mode {
  mode: string;
  /** README block names: postgresql.conf settings, pghoard.json, commands. */
  conf: string;
  config: string;
  commands: string;
  /** Streaming modes create the slot named in the config. */
  slot: boolean;
}

const MODES: Mode[] = [
  { mode: "pg_receivexlog", conf: "conf", config: "config", commands: "commands", slot: true },
  {
    mode: "archive_command",
    conf: "archive_conf",
    config: "archive_config",
    commands: "archive_commands",
    slot: false,
  },
  { mode: "walreceiver", conf: "conf", config: "walreceiver_config", commands: "commands", slot: true },
];

for (const m of MODES) {
  describe(`README 'Set up a server' walkthrough (${m.mode})`, { timeout: 240_000 }, () => {
    let cluster: PgCluster;
    let daemon: ChildProcess | undefined;
    let dir: string;
    let daemonLog = "";

    before(async () => {
      dir = await makeTempDir("setup-walkthrough");
    });

    after(async () => {
      daemon?.kill("SIGTERM");
      await cluster?.destroy();
    });

    it("a basebackup and WAL reach storage", async () => {
      const blocks = await readmeBlocks();
      for (const name of ["role", "hba", m.conf, m.config, m.commands]) assert.ok(blocks[name], `README lacks ${name}`);
      const pghoardDir = path.join(dir, "var-lib-pghoard");
      await mkdir(pghoardDir, { recursive: true });
      const port = await findFreePort();

      // The README's pg_hba.conf lines go first (before the helper's trust lines).
      cluster = await startCluster({ hba: blocks.hba.trim().split("\n"), noStart: true });
      const conf = blocks[m.conf]
        .replace("pghoard_postgres_command ", `${process.execPath} ${postgresCommandBin} `)
        .replace("--port 16000", `--port ${port}`);
      await appendFile(path.join(cluster.dataDir, "postgresql.conf"), `\n${conf}`);
      await cluster.start();
      await cluster.query(blocks.role);

      const config = blocks[m.config]
        .replaceAll("/var/lib/pghoard", pghoardDir)
        .replaceAll("/var/lib/postgresql/15/main", cluster.dataDir)
        .replace('"port": 5432', `"port": ${cluster.port}`)
        .replace('"http_port": 16000', `"http_port": ${port}`);
      await writeFile(path.join(pghoardDir, "pghoard.json"), config);

      const [startLine, requestLine, ...rest] = blocks[m.commands]
        .trim()
        .split("\n")
        .map((line) => line.replaceAll("/var/lib/pghoard", pghoardDir));
      const startArgs = startLine.split(/\s+/);
      const requestArgs = requestLine.split(/\s+/);
      assert.equal(startArgs[0], "pghoard");
      assert.deepEqual(requestArgs.slice(0, 2), ["pghoard_restore", "request-basebackup"]);
      // HOME: the daemon keeps the role's password in ~/.pgpass for pg_receivewal and pg_basebackup.
      const env = { ...process.env, HOME: dir, PGHOARD_CONFIG: "" };
      daemon = spawn(process.execPath, [path.join(repoRoot, "bin", "pghoard.js"), ...startArgs.slice(1)], {
        env,
        // The daemon writes persisted_progress_file.json into its working directory (as upstream).
        cwd: dir,
        stdio: ["ignore", "pipe", "pipe"],
      });
      daemon.stdout!.on("data", (d: Buffer) => (daemonLog += d.toString()));
      daemon.stderr!.on("data", (d: Buffer) => (daemonLog += d.toString()));
      for (let i = 0; ; i++) {
        const ok = await httpRequest(port, "GET", "/status").then(
          (r) => r.status === 200,
          () => false,
        );
        if (ok) break;
        assert.ok(i < 300 && daemon.exitCode === null, `daemon did not start:\n${daemonLog}`);
        await sleep(100);
      }

      const request = await promisify(execFile)(
        process.execPath,
        [path.join(repoRoot, "bin", "pghoard_restore.js"), ...requestArgs.slice(1)],
        { env, timeout: 180_000 },
      ).catch((err: { stdout?: string; stderr?: string; message: string }) => {
        assert.fail(`request-basebackup failed: ${err.stdout ?? ""}${err.stderr ?? err.message}\n${daemonLog}`);
      });
      const name = /^Basebackup (\S+) of site 'default' completed/m.exec(request.stdout)?.[1];
      assert.ok(name, request.stdout);
      const store = path.join(pghoardDir, "backups");
      assert.ok((await listStoredNames(store, "default", "basebackup")).includes(name));

      const slots = await cluster.query<{ slot_name: string }>("SELECT slot_name FROM pg_replication_slots");
      assert.deepEqual(
        slots.map((r) => r.slot_name),
        m.slot ? ["pghoard"] : [],
      );
      // The segment switch: the README's own command when it has one (psql -c '<SQL>').
      let switchSql = "SELECT pg_switch_wal()";
      for (const line of rest) {
        const sql = /^psql -c '(.*)'$/.exec(line.trim())?.[1];
        assert.ok(sql, `unexpected command ${line}`);
        switchSql = sql;
      }
      await cluster.query("CREATE TABLE walkthrough AS SELECT 1 AS x");
      const before = (await cluster.query<{ name: string }>("SELECT pg_walfile_name(pg_current_wal_lsn()) AS name"))[0]
        .name;
      await cluster.query(switchSql);
      for (let i = 0; !(await listStoredNames(store, "default", "xlog")).includes(before); i++) {
        assert.ok(i < 600, `${before} not stored:\n${daemonLog.slice(-4000)}`);
        await sleep(100);
      }
    });
  });
}
