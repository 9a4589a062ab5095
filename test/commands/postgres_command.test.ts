/**
 * pghoard_postgres_command exit codes against a real daemon (cli.md §6, http-api.md §9).
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { findFreePort } from "../helpers/pgcluster.js";
import { repoRoot } from "../helpers/paths.js";
import {
  DaemonProcess,
  makeDaemonEnv,
  makeFakePgdata,
  runPostgresCommand,
  syntheticSegment,
  type DaemonEnv,
} from "../daemon/helpers.js";

const SITE = "pgcmd";
const SEG = "000000010000000000000005";
const FAST_RETRY = { PGHOARD_POSTGRES_COMMAND_RETRY_INTERVAL: "0.1" };

describe("pghoard_postgres_command", () => {
  let env: DaemonEnv;
  let daemon: DaemonProcess;
  let pgdata: string;
  const seg = syntheticSegment(SEG);

  before(async () => {
    pgdata = await makeFakePgdata();
    await writeFile(path.join(pgdata, "pg_wal", SEG), seg);
    env = await makeDaemonEnv(
      { [SITE]: { pgDataDirectory: pgdata } },
      { webserver_username: "u", webserver_password: "p" },
    );
    daemon = await DaemonProcess.start(env);
  });

  after(async () => {
    await daemon?.stop();
  });

  const base = (): string[] => ["--port", String(env.port), "--site", SITE, "--username", "u", "--password", "p"];

  it("archive: 201 → 0, anything else → 3, .backup → 0 without contacting the daemon", async () => {
    const ok = await runPostgresCommand([...base(), "--mode", "archive", "--xlog", SEG]);
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    const missing = await runPostgresCommand([...base(), "--mode", "archive", "--xlog", "000000010000000000000006"]);
    assert.equal(missing.code, 3);
    assert.match(missing.stdout, /ERROR: Archival failed with HTTP status 404/);
    const noAuth = await runPostgresCommand([
      "--port",
      String(env.port),
      "--site",
      SITE,
      "--mode",
      "archive",
      "--xlog",
      SEG,
    ]);
    assert.equal(noAuth.code, 3);
    assert.match(noAuth.stdout, /HTTP status 401/);
    const label = await runPostgresCommand([
      "--port",
      "1",
      "--site",
      SITE,
      "--mode",
      "archive",
      "--xlog",
      "000000010000000000000002.00000028.backup",
    ]);
    assert.equal(label.code, 0);
    assert.match(
      label.stdout,
      /Ignoring request to archive backup label '000000010000000000000002.00000028.backup': PGHoard does not use them/,
    );
  });

  it("restore: 201 → 0, HEAD 200 → 0, 404 → 4, relative --output resolved against the cwd", async () => {
    const head = await runPostgresCommand([...base(), "--mode", "restore", "--xlog", SEG]);
    assert.equal(head.code, 0, head.stdout + head.stderr);
    const got = await runPostgresCommand(
      [...base(), "--mode", "restore", "--xlog", SEG, "--output", "pg_wal/RECOVERYXLOG"],
      { cwd: pgdata },
    );
    assert.equal(got.code, 0, got.stdout + got.stderr);
    assert.ok((await readFile(path.join(pgdata, "pg_wal", "RECOVERYXLOG"))).equals(seg));
    const missing = await runPostgresCommand(
      [...base(), "--mode", "restore", "--xlog", "0000000100000000000000A0", "--output", "pg_wal/RECOVERYXLOG"],
      {
        cwd: pgdata,
      },
    );
    assert.equal(missing.code, 4);
    assert.match(missing.stdout, /ERROR: '0000000100000000000000A0' not found from archive/);
    const headMissing = await runPostgresCommand([
      ...base(),
      "--mode",
      "restore",
      "--xlog",
      "0000000100000000000000A0",
    ]);
    assert.equal(headMissing.code, 4);
    const badTarget = await runPostgresCommand([
      ...base(),
      "--mode",
      "restore",
      "--xlog",
      SEG,
      "--output",
      "/etc/passwd",
    ]);
    assert.equal(badTarget.code, 5);
  });

  it("restore: renames a .pghoard.prefetch file without contacting the daemon", async () => {
    const name = "000000010000000000000009";
    const prefetch = path.join(pgdata, "pg_wal", `${name}.pghoard.prefetch`);
    await writeFile(prefetch, "prefetched");
    // Port 1: nothing listens, so success proves no HTTP request was needed.
    const res = await runPostgresCommand(
      ["--port", "1", "--site", SITE, "--mode", "restore", "--xlog", name, "--output", "pg_wal/RECOVERYXLOG"],
      {
        cwd: pgdata,
      },
    );
    assert.equal(res.code, 0, res.stdout + res.stderr);
    assert.equal(await readFile(path.join(pgdata, "pg_wal", "RECOVERYXLOG"), "utf8"), "prefetched");
    assert.ok(!existsSync(prefetch));
  });

  it("refuses header or request-line injection (exit 5, nothing sent)", async () => {
    const injected = await runPostgresCommand(
      [...base(), "--mode", "restore", "--xlog", SEG, "--output", "x\r\nx-pghoard-target-path: /etc/passwd"],
      {
        cwd: pgdata,
      },
    );
    assert.equal(injected.code, 5);
    const badSite = await runPostgresCommand([
      "--port",
      String(env.port),
      "--site",
      "a b",
      "--mode",
      "archive",
      "--xlog",
      SEG,
    ]);
    assert.equal(badSite.code, 2);
  });

  it("daemon down: archive → 2 at once, restore → 5 after 3 attempts", async () => {
    const port = String(await findFreePort());
    const archive = await runPostgresCommand(["--port", port, "--site", SITE, "--mode", "archive", "--xlog", SEG], {
      env: FAST_RETRY,
    });
    assert.equal(archive.code, 2);
    const restore = await runPostgresCommand(
      ["--port", port, "--site", SITE, "--mode", "restore", "--xlog", SEG, "--output", "/tmp/x"],
      {
        env: FAST_RETRY,
      },
    );
    assert.equal(restore.code, 5);
    assert.equal(restore.stdout.match(/retries left, sleeping 0.1 seconds and retrying/g)?.length, 2);
    assert.match(restore.stdout, /HTTP connection to 127.0.0.1:\d+ failed: ECONNREFUSED/);
  });

  it("command-line errors → 5 in both modes", async () => {
    for (const args of [
      ["--mode", "archive", "--xlog", SEG],
      ["--mode", "restore", "--site", SITE],
      ["--mode", "bogus", "--site", SITE, "--xlog", SEG],
      ["--mode", "archive", "--site", SITE, "--xlog", SEG, "--port", "notanint"],
      ["--mode", "archive", "--site", SITE, "--xlog", SEG, "--unknown", "x"],
    ]) {
      const res = await runPostgresCommand(args);
      assert.equal(res.code, 5, args.join(" "));
      assert.match(res.stderr, /usage: pghoard_postgres_command/);
    }
  });
});

describe("pghoard_postgres_command start-up cost", () => {
  it("imports node built-ins only (PostgreSQL starts it once per segment)", async () => {
    for (const file of ["src/commands/postgres_command.ts", "bin/pghoard_postgres_command.js"]) {
      const text = await readFile(path.join(repoRoot, file), "utf8");
      const specifiers = [...text.matchAll(/^\s*import\s[^"']*["']([^"']+)["']/gm)].map((m) => m[1]);
      for (const spec of specifiers) {
        const ok =
          spec.startsWith("node:") || (file.startsWith("bin/") && spec === "../dist/src/commands/postgres_command.js");
        assert.ok(ok, `${file} imports ${spec}`);
      }
    }
  });
});
