/**
 * Daemon life cycle: start-up recovery of the spool (operations.md §6.6), the upload-retry alert
 * file (raised after upload_retries_warning_limit failures, removed once uploads work again),
 * SIGHUP reloads (a broken file keeps the old config), SIGTERM/SIGINT exit codes.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { describe, it } from "node:test";
import { encodeBuffer } from "../../src/fileformat/index.js";
import {
  DaemonProcess,
  decodeStoredObject,
  httpRequest,
  listStoredNames,
  makeDaemonEnv,
  makeFakePgdata,
  pghoardBin,
  sleep,
  syntheticSegment,
} from "./helpers.js";

const SITE = "life";

async function waitFor(what: string, condition: () => Promise<boolean> | boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

describe("daemon life cycle", () => {
  it(
    "recovers the spool at start-up, raises the upload alert and clears it when uploads work again",
    { timeout: 120_000 },
    async () => {
      const pgdata = await makeFakePgdata();
      const env = await makeDaemonEnv({ [SITE]: { pgDataDirectory: pgdata } }, { upload_retries_warning_limit: 3 });
      // Storage is broken at first: its directory is a regular file.
      await rm(env.storageDir, { recursive: true });
      await writeFile(env.storageDir, "not a directory");

      const segA = "000000010000000000000041";
      const segB = "000000010000000000000042";
      const dataA = syntheticSegment(segA);
      const dataB = syntheticSegment(segB);
      const spool = path.join(env.backupLocation, SITE);
      for (const dir of ["xlog_incoming", "xlog", "timeline"]) await mkdir(path.join(spool, dir), { recursive: true });
      await writeFile(path.join(spool, "xlog_incoming", segA), dataA);
      const partial = path.join(spool, "xlog_incoming", "000000010000000000000043.partial");
      await writeFile(partial, Buffer.alloc(1000, 1));
      const encodedB = await encodeBuffer(dataB, {
        algorithm: "snappy",
        level: 0,
        encryptionKeyId: null,
        publicKeyPem: null,
      });
      await writeFile(path.join(spool, "xlog", segB), encodedB);
      const metadataB = {
        "compression-algorithm": "snappy",
        "compression-level": 0,
        hash: createHash("sha1").update(dataB).digest("hex"),
        "hash-algorithm": "sha1",
        host: "elsewhere",
        "original-file-size": dataB.length,
        "pg-version": null,
      };
      await writeFile(path.join(spool, "xlog", `${segB}.metadata`), JSON.stringify(metadataB, null, 4) + "\n");

      const daemon = await DaemonProcess.start(env);
      try {
        const alert = path.join(env.alertDir, "upload_retries_warning");
        await waitFor("the upload_retries_warning alert", () => existsSync(alert), 30_000);
        assert.equal(await readFile(alert, "utf8"), "alert");
        assert.equal((await stat(partial)).size, 0, "an odd-sized .partial is truncated");
        assert.equal((await stat(`${partial}_incomplete`)).size, 1000, "and its contents kept aside");

        await rm(env.storageDir);
        await mkdir(env.storageDir);
        await waitFor(
          "both segments in storage",
          async () => (await listStoredNames(env.storageDir, SITE, "xlog")).length === 2,
          60_000,
        );
        await waitFor("the alert to be removed", () => !existsSync(alert), 10_000);
        const a = await decodeStoredObject(env.storageDir, `${SITE}/xlog/${segA}`, {});
        assert.ok(a.data.equals(dataA));
        const b = await decodeStoredObject(env.storageDir, `${SITE}/xlog/${segB}`, {});
        assert.ok(b.data.equals(dataB));
        assert.equal(b.metadata.host, "elsewhere");
        assert.equal(b.metadata["original-file-size"], String(dataB.length));
        assert.ok(!("pg-version" in b.metadata), "null metadata values are dropped");
        await waitFor(
          "the spool to be emptied",
          async () => (await readdir(path.join(spool, "xlog"))).length === 0,
          10_000,
        );
        // pg_receivewal resumes from the newest segment, so the newest uncompressed one stays.
        assert.ok(existsSync(path.join(spool, "xlog_incoming", segA)));
      } finally {
        const exit = await daemon.stop("SIGTERM");
        assert.equal(exit.code, 0);
      }
    },
  );

  it(
    "answers 500 TIMEOUT after 30 s while the upload keeps going, and a retried PUT waits for it",
    { timeout: 180_000 },
    async () => {
      const pgdata = await makeFakePgdata();
      const seg = "000000010000000000000051";
      const data = syntheticSegment(seg);
      await writeFile(path.join(pgdata, "pg_wal", seg), data);
      const env = await makeDaemonEnv({ [SITE]: { pgDataDirectory: pgdata } });
      await rm(env.storageDir, { recursive: true });
      await writeFile(env.storageDir, "not a directory");
      const daemon = await DaemonProcess.start(env);
      try {
        const started = Date.now();
        const first = await httpRequest(env.port, "PUT", `/${SITE}/archive/${seg}`);
        assert.equal(first.status, 500);
        assert.equal(first.body, "TIMEOUT");
        assert.ok(Date.now() - started >= 29_000);
        await rm(env.storageDir);
        await mkdir(env.storageDir);
        const second = await httpRequest(env.port, "PUT", `/${SITE}/archive/${seg}`);
        assert.equal(second.status, 201, second.body);
        await daemon.waitForLog(/already in progress, waiting for it/);
        assert.equal(daemon.logs().match(/Compressed 16777216 byte xlog 000000010000000000000051/g)?.length, 1);
        const stored = await decodeStoredObject(env.storageDir, `${SITE}/xlog/${seg}`, {});
        assert.ok(stored.data.equals(data));
      } finally {
        await daemon.stop();
      }
    },
  );

  it(
    "reloads on SIGHUP, keeps the old config when the new one is broken, exits 0 on SIGTERM",
    { timeout: 60_000 },
    async () => {
      const pgdata = await makeFakePgdata();
      const env = await makeDaemonEnv({ [SITE]: { pgDataDirectory: pgdata } });
      const daemon = await DaemonProcess.start(env);
      assert.equal((await httpRequest(env.port, "GET", `/${SITE}/basebackup`)).status, 200);

      await writeFile(env.configPath, "{ this is not json");
      daemon.child.kill("SIGHUP");
      await waitFor("the reload error", () => daemon.logs().includes("keeping the current configuration"), 10_000);
      assert.equal((await httpRequest(env.port, "GET", `/${SITE}/basebackup`)).status, 200);

      await env.writeConfig({ ...env.config, webserver_username: "a", webserver_password: "b" });
      daemon.child.kill("SIGHUP");
      await waitFor(
        "authentication to be enforced",
        async () => (await httpRequest(env.port, "GET", "/status")).status === 401,
        10_000,
      );

      const exit = await daemon.stop("SIGTERM");
      assert.equal(exit.code, 0);
      await daemon.waitForLog(/pghoard stopped/);
      const state = JSON.parse(await readFile(env.statePath, "utf8")) as Record<string, unknown>;
      assert.ok("startup_time" in state);
    },
  );

  it("stops at once on SIGINT with exit code 0", { timeout: 60_000 }, async () => {
    const env = await makeDaemonEnv({ [SITE]: { pgDataDirectory: await makeFakePgdata() } });
    const daemon = await DaemonProcess.start(env);
    const exit = await daemon.stop("SIGINT");
    assert.equal(exit.code, 0);
  });

  it("refuses to start with an invalid config (exit 1 with upstream's message)", async () => {
    const env = await makeDaemonEnv({ [SITE]: { pgDataDirectory: await makeFakePgdata() } });
    await writeFile(env.configPath, "[]");
    const daemon = DaemonProcess.start(env);
    await assert.rejects(daemon, /daemon exited during start-up: pghoard: failed to load config/);
  });
});

describe("pghoard command line", () => {
  const run = (args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string }> =>
    new Promise((resolve, reject) => {
      const child = spawn(process.execPath, [pghoardBin, ...args], {
        env: { ...process.env, PGHOARD_CONFIG: "", ...env },
      });
      let stdout = "";
      child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
      child.once("error", reject);
      child.once("exit", (code) => resolve({ code, stdout }));
    });

  it("needs a config path, and an existing one", async () => {
    const none = await run([]);
    assert.equal(none.code, 1);
    assert.equal(none.stdout, "pghoard: config file path must be given with --config or via env PGHOARD_CONFIG\n");
    const missing = await run(["--config", "/nonexistent/pghoard.json"]);
    assert.equal(missing.code, 1);
    assert.equal(missing.stdout, "pghoard: '/nonexistent/pghoard.json' doesn't exist\n");
    const positional = await run(["/nonexistent/other.json"]);
    assert.equal(positional.stdout, "pghoard: '/nonexistent/other.json' doesn't exist\n");
    const fromEnv = await run([], { PGHOARD_CONFIG: "/nonexistent/env.json" });
    assert.equal(fromEnv.stdout, "pghoard: '/nonexistent/env.json' doesn't exist\n");
    const version = await run(["--version"]);
    assert.equal(version.code, 0);
    assert.match(version.stdout, /^\d+\.\d+\.\d+\n$/);
  });

  it("refuses a missing state-file or alert directory with one line naming the key", async () => {
    const env = await makeDaemonEnv({ [SITE]: { pgDataDirectory: await makeFakePgdata() } });
    const missing = path.join(env.dir, "missing");
    env.config.json_state_file_path = path.join(missing, "pghoard_state.json");
    await env.writeConfig();
    const state = await run(["--config", env.configPath]);
    assert.equal(state.code, 1);
    assert.equal(
      state.stdout,
      `pghoard: failed to load config ${env.configPath}: json_state_file_path: directory ${missing} does not exist (create it for the daemon's user, or change json_state_file_path)\n`,
    );
    env.config.json_state_file_path = env.statePath;
    env.config.alert_file_dir = missing;
    await env.writeConfig();
    const alerts = await run(["--config", env.configPath]);
    assert.equal(alerts.code, 1);
    assert.match(
      alerts.stdout,
      /^pghoard: failed to load config .*: alert_file_dir: directory .*missing does not exist .*\n$/,
    );
  });
});
