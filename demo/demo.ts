/**
 * `npm run demo`: a complete backup and point-in-time restore on this machine, in about a minute.
 *
 *  1. a throwaway PostgreSQL 15 cluster (archive_command → pghoard_postgres_command)
 *  2. pghoard_create_keys adds an encryption key pair to the config; the pghoard daemon starts
 *     with local object storage, snappy compression and encryption
 *  3. some data, then a basebackup requested over the daemon's HTTP API (PUT /<site>/basebackup)
 *  4. more data, a named restore point, and changes after it that must NOT come back
 *  5. pghoard_restore get-basebackup into a new directory, recovery target = the restore point
 *  6. PostgreSQL started on it, WAL fetched from the object store by the restore_command that
 *     get-basebackup wrote (no second daemon); the data is checked
 *
 * Everything lives in one temp directory, removed at the end (`--keep` leaves it, and the
 * clusters stopped, for inspection). Needs PostgreSQL 15 binaries (/usr/lib/postgresql/15/bin
 * or PG_BIN_DIR); as root, PostgreSQL runs as the `postgres` OS user.
 */
import { execFile } from "node:child_process";
import { rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";

import { DaemonProcess, httpRequest, type DaemonEnv } from "../test/daemon/helpers.js";
import { repoRoot } from "../test/helpers/paths.js";
import { chownToPostgres, findFreePort, makeTempDir, startCluster, type PgCluster } from "../test/helpers/pgcluster.js";

const execFileAsync = promisify(execFile);
const SITE = "demo";
const bin = (name: string): string => path.join(repoRoot, "bin", `${name}.js`);
const keep = process.argv.includes("--keep");

const timings: Array<[string, number]> = [];
async function step<T>(title: string, fn: () => Promise<T>): Promise<T> {
  process.stdout.write(`\n▶ ${title}\n`);
  const started = Date.now();
  const result = await fn();
  const seconds = (Date.now() - started) / 1000;
  timings.push([title, seconds]);
  process.stdout.write(`  done in ${seconds.toFixed(1)} s\n`);
  return result;
}

function indent(text: string): string {
  return text
    .trimEnd()
    .split("\n")
    .map((l) => `    ${l}`)
    .join("\n");
}

async function run(cmd: string, args: string[]): Promise<string> {
  const { stdout, stderr } = await execFileAsync(cmd, args, { maxBuffer: 64 * 1024 * 1024 });
  return stdout + stderr;
}

const STATE_SQL = `SELECT (SELECT count(*) FROM orders)::text AS orders,
  (SELECT sum(amount) FROM orders)::text AS total,
  (SELECT count(*) FROM pgbench_accounts)::text AS accounts,
  (SELECT sum(abalance) FROM pgbench_accounts)::text AS balance`;

function daemonEnv(dir: string, configPath: string, port: number): DaemonEnv {
  // DaemonProcess only needs where the config, state file and logs are.
  return { dir, configPath, port, statePath: path.join(dir, "pghoard_state.json") } as DaemonEnv;
}

async function waitForBackup(port: number, timeoutMs: number): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const res = await httpRequest(port, "GET", `/${SITE}/basebackup`);
    const list =
      res.status === 200 ? (JSON.parse(res.body) as { basebackups: Array<{ name: string }> }).basebackups : [];
    if (list.length > 0) return list[0].name;
    if (Date.now() > deadline) throw new Error("the basebackup did not appear in time");
    await new Promise((r) => setTimeout(r, 500));
  }
}

async function main(): Promise<void> {
  const work = await makeTempDir("pghoard-demo-");
  const storeDir = path.join(work, "object-store");
  const restoredDir = path.join(work, "restored-pgdata");
  let source: PgCluster | undefined;
  let restored: PgCluster | undefined;
  let daemon: DaemonProcess | undefined;
  const t0 = Date.now();
  console.log(`pghoard for Node.js demo — working directory ${work}`);
  try {
    const port = await findFreePort();
    source = await step("Start a PostgreSQL 15 cluster that archives WAL through pghoard_postgres_command", async () =>
      startCluster({
        archiveCommand: `${process.execPath} ${bin("pghoard_postgres_command")} --mode archive --port ${port} --site ${SITE} --xlog %f`,
      }),
    );
    console.log(`  data directory ${source.dataDir}, port ${source.port}`);

    const configPath = path.join(work, "pghoard.json");
    await step("Write pghoard.json and add an encryption key with pghoard_create_keys", async () => {
      const config = {
        backup_location: path.join(work, "spool"),
        alert_file_dir: work,
        json_state_file_path: path.join(work, "pghoard_state.json"),
        maintenance_mode_file: path.join(work, "maintenance_mode_file"),
        http_address: "127.0.0.1",
        http_port: port,
        log_level: "INFO",
        compression: { algorithm: "snappy" },
        backup_sites: {
          [SITE]: {
            active_backup_mode: "archive_command",
            basebackup_mode: "local-tar",
            basebackup_interval_hours: null,
            basebackup_chunk_size: 8 * 1024 * 1024,
            pg_data_directory: source!.dataDir,
            nodes: [source!.connectionInfo()],
            object_storage: { storage_type: "local", directory: storeDir },
          },
        },
      };
      await writeFile(configPath, JSON.stringify(config, null, 4));
      console.log(
        indent(
          await run(process.execPath, [
            bin("pghoard_create_keys"),
            "--config",
            configPath,
            "--site",
            SITE,
            "--key-id",
            "demo-key",
          ]),
        ),
      );
    });

    daemon = await step("Start the pghoard daemon (local object storage, snappy, encrypted)", async () =>
      DaemonProcess.start(daemonEnv(work, configPath, port), { logName: "pghoard.log" }),
    );

    await step("Load data: pgbench -i -s 5 and an orders table", async () => {
      await source!.pgbench(["-i", "-s", "5", "-q"]);
      await source!.query("CREATE TABLE orders (id int PRIMARY KEY, amount numeric NOT NULL)");
      await source!.query("INSERT INTO orders SELECT i, i * 1.5 FROM generate_series(1, 10000) i");
    });

    const backupName = await step("Take a basebackup: PUT /demo/basebackup on the daemon", async () => {
      const res = await httpRequest(port, "PUT", `/${SITE}/basebackup`);
      if (res.status >= 300) throw new Error(`basebackup request failed: HTTP ${res.status} ${res.body}`);
      return waitForBackup(port, 300_000);
    });
    console.log(`  backup ${backupName}`);

    const expected = await step(
      "Change data, create restore point 'before-mistake', then make a 'mistake'",
      async () => {
        await source!.pgbench(["-t", "500", "-c", "2", "-n"]);
        await source!.query("INSERT INTO orders SELECT i, i * 2.5 FROM generate_series(10001, 12000) i");
        const state = (await source!.query(STATE_SQL))[0];
        await source!.query("SELECT pg_create_restore_point('before-mistake')");
        await source!.query("DELETE FROM orders WHERE id % 2 = 0"); // the mistake
        await source!.query("UPDATE pgbench_accounts SET abalance = 0");
        const rows = await source!.query<{ name: string }>("SELECT pg_walfile_name(pg_switch_wal()) AS name");
        const last = rows[0].name;
        for (const deadline = Date.now() + 120_000; ;) {
          const [a] = await source!.query<{ last_archived_wal: string | null }>(
            "SELECT last_archived_wal FROM pg_stat_archiver",
          );
          if (a.last_archived_wal && a.last_archived_wal >= last) break;
          if (Date.now() > deadline) throw new Error("WAL was not archived in time");
          await new Promise((r) => setTimeout(r, 200));
        }
        return state;
      },
    );
    console.log(`  at the restore point: ${JSON.stringify(expected)}`);
    console.log(`  after the mistake:    ${JSON.stringify((await source.query(STATE_SQL))[0])}`);

    console.log(
      indent(
        await step("List backups: pghoard_restore list-basebackups", () =>
          run(process.execPath, [bin("pghoard_restore"), "list-basebackups", "--config", configPath]),
        ),
      ),
    );

    // The restored server fetches its WAL straight from the object store (the default direct
    // restore_command): no second daemon; the production daemon keeps running for the live cluster.
    const restoreOutput = await step(
      "Restore: pghoard_restore get-basebackup --recovery-target-name before-mistake",
      () =>
        run(process.execPath, [
          bin("pghoard_restore"),
          "get-basebackup",
          "--config",
          configPath,
          "--target-dir",
          restoredDir,
          "--recovery-target-name",
          "before-mistake",
          "--recovery-target-action",
          "promote",
          "--restore-to-primary",
        ]),
    );
    console.log(
      indent(
        restoreOutput
          .split("\n")
          .filter((l) => !l.startsWith("    metadata"))
          .join("\n"),
      ),
    );

    restored = await step("Start PostgreSQL on the restored directory; WAL comes from the object store", async () => {
      // restore_command runs as PostgreSQL's user, which must read the config (as the daemon's user does).
      await chownToPostgres(configPath);
      await chownToPostgres(restoredDir);
      const cluster = await startCluster({ dataDir: restoredDir, settings: { archive_mode: "off" } });
      await cluster.waitForRecoveryEnd(300_000);
      return cluster;
    });
    const log = await restored.logContents();
    const fetched = (log.match(/restored log file "[0-9A-F]+(\.history)?" from archive/g) ?? []).length;
    const stop = /recovery stopping at restore point "before-mistake".*/.exec(log)?.[0];
    console.log(`  ${fetched} WAL files fetched from the archive; PostgreSQL says: ${stop ?? "(no stop line)"}`);

    const actual = await step("Check the data", async () => (await restored!.query(STATE_SQL))[0]);
    console.log(`  restored:             ${JSON.stringify(actual)}`);
    const ok = JSON.stringify(actual) === JSON.stringify(expected);
    console.log(
      ok ? "  ✔ identical to the restore point — the mistake is undone" : "  ✘ DIFFERENT from the restore point",
    );

    console.log("\nWhere things are:");
    console.log(`  config            ${configPath}`);
    console.log(`  object store      ${storeDir}/${SITE}/{basebackup,basebackup_chunk,xlog,timeline}`);
    console.log(`  daemon log        ${path.join(work, "pghoard.log")}`);
    console.log(`  restored PGDATA   ${restoredDir} (recovery settings appended to postgresql.auto.conf)`);
    console.log("\nTimings:");
    for (const [title, seconds] of timings) console.log(`  ${seconds.toFixed(1).padStart(6)} s  ${title}`);
    console.log(`  ${((Date.now() - t0) / 1000).toFixed(1).padStart(6)} s  total`);
    if (!ok) process.exitCode = 1;
  } finally {
    await restored?.stop().catch(() => undefined);
    await daemon?.stop().catch(() => undefined);
    await source?.stop().catch(() => undefined);
    if (keep) {
      console.log(`\n--keep: everything left in ${work} (clusters stopped)`);
    } else {
      await restored?.destroy().catch(() => undefined);
      await source?.destroy().catch(() => undefined);
      await rm(work, { recursive: true, force: true });
      console.log(`\nCleaned up ${work} (run with --keep to inspect it).`);
    }
  }
}

await main();
