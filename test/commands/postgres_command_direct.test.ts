/**
 * pghoard_postgres_command's direct restore mode (`--config`: no daemon) against a real local
 * store filled by a real daemon (snappy + encryption): exit codes 0/4/5, the read-ahead and its
 * checked rename, history files, `moved_from`, `--mode cleanup`; and the daemon-mode client's
 * error reporting (the daemon's reason, an unknown site is fatal).
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";

import { makeTempDir } from "../helpers/pgcluster.js";
import {
  DaemonProcess,
  makeDaemonEnv,
  makeFakePgdata,
  makeKeyPair,
  runPostgresCommand,
  sleep,
  syntheticSegment,
  type DaemonEnv,
} from "../daemon/helpers.js";

const SITE = "direct";
const OLD_SITE = "direct-old";
const seg = (n: number): string => `00000001000000000000000${n.toString(16).toUpperCase()}`.slice(-24);
const HISTORY = "00000002.history";
const HISTORY_TEXT = "1\t0/9000000\tno recovery target specified\n";
const TAMPERED = seg(0xc);

async function waitFor(what: string, check: () => boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

describe("pghoard_postgres_command --config (direct restore mode)", { timeout: 300_000 }, () => {
  let env: DaemonEnv;
  let daemon: DaemonProcess;
  let restoreDir: string;
  let brokenConfig: string;
  const segments = new Map<string, Buffer>();

  const restore = (name: string, args: string[] = [], config = env.configPath) =>
    runPostgresCommand(
      [
        "--mode",
        "restore",
        "--config",
        config,
        "--site",
        SITE,
        "--xlog",
        name,
        "--output",
        "pg_wal/RECOVERYXLOG",
        ...args,
      ],
      { cwd: restoreDir },
    );
  const restored = (): Promise<Buffer> => readFile(path.join(restoreDir, "pg_wal", "RECOVERYXLOG"));
  const prefetchFile = (name: string): string => path.join(restoreDir, "pg_wal", `${name}.pghoard.prefetch`);

  before(async () => {
    const pgdata = await makeFakePgdata();
    const oldPgdata = await makeFakePgdata();
    for (const n of [5, 6, 7, 8, 0xc]) segments.set(seg(n), syntheticSegment(seg(n)));
    segments.set(seg(9), syntheticSegment(seg(9)));
    for (const [name, data] of segments) {
      await writeFile(path.join(name === seg(9) ? oldPgdata : pgdata, "pg_wal", name), data);
    }
    await writeFile(path.join(pgdata, "pg_wal", HISTORY), HISTORY_TEXT);
    const keys = makeKeyPair();
    env = await makeDaemonEnv(
      {
        [SITE]: { pgDataDirectory: pgdata, keyId: "k1", keys, extra: { prefix: "new-prefix" } },
        [OLD_SITE]: { pgDataDirectory: oldPgdata, keyId: "k1", keys },
      },
      { restore_prefetch: 2, log_level: "INFO" },
    );
    daemon = await DaemonProcess.start(env);
    const archive = async (site: string, name: string): Promise<void> => {
      const r = await runPostgresCommand([
        "--port",
        String(env.port),
        "--site",
        site,
        "--mode",
        "archive",
        "--xlog",
        name,
      ]);
      assert.equal(r.code, 0, r.stdout + r.stderr);
    };
    for (const name of segments.keys()) await archive(name === seg(9) ? OLD_SITE : SITE, name);
    await archive(SITE, HISTORY);
    // The old site's WAL is found through moved_from, as after a site rename.
    const sites = env.config.backup_sites as Record<string, Record<string, unknown>>;
    sites[SITE].moved_from = [OLD_SITE];
    sites[OLD_SITE].active = false;
    await env.writeConfig();
    // Tamper with one stored object (a flipped byte inside the encrypted payload).
    const tamperedPath = path.join(env.storageDir, "new-prefix", "xlog", TAMPERED);
    const stored = await readFile(tamperedPath);
    stored[Math.floor(stored.length / 2)] ^= 0xff;
    await writeFile(tamperedPath, stored);

    const broken = JSON.parse(JSON.stringify(env.config)) as Record<string, unknown>;
    for (const site of Object.values(broken.backup_sites as Record<string, Record<string, unknown>>)) {
      site.object_storage = { storage_type: "local", directory: path.join(env.dir, "no-such-store") };
    }
    brokenConfig = path.join(env.dir, "broken.json");
    await writeFile(brokenConfig, JSON.stringify(broken));

    restoreDir = path.join(await makeTempDir("direct-restore"), "data");
    await mkdir(path.join(restoreDir, "pg_wal"), { recursive: true });
  });

  after(async () => {
    await daemon?.stop();
  });

  it("exit 0: a segment on demand, then the next ones from the read-ahead by a checked rename", async () => {
    const first = await restore(seg(5));
    assert.equal(first.code, 0, first.stdout + first.stderr);
    assert.ok((await restored()).equals(segments.get(seg(5))!));
    // restore_prefetch = 2: a background process fetches the next two segments.
    await waitFor("the read-ahead", () => existsSync(prefetchFile(seg(6))) && existsSync(prefetchFile(seg(7))));

    // A config whose store does not exist still serves seg 6: it can only come from the prefetch file.
    const fromPrefetch = await restore(seg(6), [], brokenConfig);
    assert.equal(fromPrefetch.code, 0, fromPrefetch.stdout + fromPrefetch.stderr);
    assert.ok((await restored()).equals(segments.get(seg(6))!));
    assert.ok(!existsSync(prefetchFile(seg(6))), "the prefetch file was renamed");

    // A damaged prefetch file is discarded (as the daemon does) and the segment fetched again.
    const damaged = Buffer.from(segments.get(seg(7))!);
    damaged.writeUInt32LE(0xdeadbeef, 8);
    await writeFile(prefetchFile(seg(7)), damaged);
    const refetched = await restore(seg(7));
    assert.equal(refetched.code, 0, refetched.stdout + refetched.stderr);
    assert.match(refetched.stdout, /Discarded invalid .*pghoard\.prefetch/);
    assert.ok((await restored()).equals(segments.get(seg(7))!));
  });

  it("exit 0: timeline history files, and segments of a moved_from site", async () => {
    const history = await restore(HISTORY);
    assert.equal(history.code, 0, history.stdout + history.stderr);
    assert.equal((await restored()).toString(), HISTORY_TEXT);
    const moved = await restore(seg(9));
    assert.equal(moved.code, 0, moved.stdout + moved.stderr);
    assert.ok((await restored()).equals(segments.get(seg(9))!));
  });

  it("exit 4: not in the archive (segment and history file)", async () => {
    for (const name of ["00000001000000000000001F", "00000003.history"]) {
      const r = await restore(name);
      assert.equal(r.code, 4, r.stdout + r.stderr);
      assert.match(r.stdout, new RegExp(`ERROR: '${name.replace(".", "\\.")}' not found from archive`));
    }
  });

  it("exit 5: unknown site, unreadable config, tampered object, bad usage; nothing written", async () => {
    await writeFile(path.join(restoreDir, "pg_wal", "RECOVERYXLOG"), "before");
    const unknown = await runPostgresCommand(
      ["--mode", "restore", "--config", env.configPath, "--site", "nosuch", "--xlog", seg(5), "--output", "pg_wal/X"],
      { cwd: restoreDir },
    );
    assert.equal(unknown.code, 5, unknown.stdout + unknown.stderr);
    assert.match(unknown.stdout, /Restore failed: Site 'nosuch' not defined in configuration file/);
    const noConfig = await restore(seg(5), [], path.join(env.dir, "missing.json"));
    assert.equal(noConfig.code, 5, noConfig.stdout + noConfig.stderr);
    assert.match(noConfig.stdout, /Restore failed: .*missing\.json/);
    const tampered = await restore(TAMPERED);
    assert.equal(tampered.code, 5, tampered.stdout + tampered.stderr);
    assert.match(tampered.stdout, new RegExp(`Restore failed: Fetching 'new-prefix/xlog/${TAMPERED}' failed: .*`));
    assert.equal(tampered.stdout.split("\n").filter(Boolean).length, 1, "one line, no stack trace");
    assert.equal((await readFile(path.join(restoreDir, "pg_wal", "RECOVERYXLOG"), "utf8")).toString(), "before");
    const leftovers = (await readdir(path.join(restoreDir, "pg_wal"))).filter((n) => n.includes(TAMPERED));
    assert.deepEqual(leftovers, [], "no temp file of the failed download is left");

    const directArgs = (mode: string): string[] => [
      "--mode",
      mode,
      "--config",
      env.configPath,
      "--site",
      SITE,
      "--xlog",
      seg(5),
    ];
    const archiveDirect = await runPostgresCommand(directArgs("archive"));
    assert.equal(archiveDirect.code, 5);
    assert.match(archiveDirect.stderr, /archive mode always goes through the daemon/);
    const noOutput = await runPostgresCommand(directArgs("restore"));
    assert.equal(noOutput.code, 5);
    assert.match(noOutput.stderr, /--output: required in the direct restore mode/);
  });

  it("--mode cleanup stops a running prefetch process and removes every read-ahead file", async () => {
    const walDir = path.join(restoreDir, "pg_wal");
    await writeFile(path.join(walDir, `${seg(0xa)}.pghoard.prefetch`), "x");
    await writeFile(path.join(walDir, `${seg(0xb)}.0123456789ab.pghoard.tmp`), "x");
    // Stands in for a prefetch process still downloading (its command line names it as one).
    const sleeper = spawn(
      process.execPath,
      ["-e", "setTimeout(() => {}, 60000)", "pghoard_postgres_command", "prefetch"],
      {
        stdio: "ignore",
      },
    );
    const exited = new Promise((resolve) => sleeper.once("exit", resolve));
    await writeFile(path.join(walDir, `${sleeper.pid}.pghoard.prefetcher`), `${sleeper.pid}\n`);
    await writeFile(path.join(walDir, "999999999.pghoard.prefetcher"), "999999999\n");
    const r = await runPostgresCommand(["--mode", "cleanup"], { cwd: restoreDir });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    await exited;
    const left = (await readdir(walDir)).filter((n) => n.includes(".pghoard."));
    assert.deepEqual(left, []);
    assert.ok(existsSync(path.join(walDir, "RECOVERYXLOG")), "other files are kept");
  });

  it("daemon mode: the daemon's reason is printed, and an unknown site is fatal (5), not 'not found' (4)", async () => {
    const daemonMode = (site: string, output: string) =>
      runPostgresCommand(
        ["--mode", "restore", "--port", String(env.port), "--site", site, "--xlog", seg(5), "--output", output],
        { cwd: restoreDir },
      );
    const unknown = await daemonMode("nosuch", "pg_wal/RECOVERYXLOG");
    assert.equal(unknown.code, 5, unknown.stdout + unknown.stderr);
    assert.match(unknown.stdout, /the daemon at 127\.0\.0\.1:\d+ has no site 'nosuch' \(Site: 'nosuch' not found/);
    // The restored directory is not the site's pg_data_directory: the daemon refuses, and says why.
    const outside = await daemonMode(SITE, "pg_wal/RECOVERYXLOG");
    assert.equal(outside.code, 5, outside.stdout + outside.stderr);
    assert.match(
      outside.stdout,
      /Restore failed with HTTP status 400: Invalid xlog file path .*, it should be in data directory .* of site 'direct'/,
    );
  });
});

describe("daemon start-up", { timeout: 60_000 }, () => {
  it("warns once about a site that cannot serve restore_command (no pg_data_directory)", async () => {
    const env = await makeDaemonEnv({ nodir: { pgDataDirectory: "" } }, { log_level: "INFO" });
    // An inactive site (e.g. one kept for restores only) may leave pg_data_directory out.
    const site = (env.config.backup_sites as Record<string, Record<string, unknown>>).nodir;
    delete site.pg_data_directory;
    site.active = false;
    await env.writeConfig();
    const daemon = await DaemonProcess.start(env);
    await daemon.stop();
    const warnings = daemon
      .logs()
      .split("\n")
      .filter((l) => l.includes("has no pg_data_directory"));
    assert.equal(warnings.length, 1, daemon.logs());
    assert.match(warnings[0], /Site 'nodir' has no pg_data_directory: this daemon cannot serve restore_command for it/);
  });
});
