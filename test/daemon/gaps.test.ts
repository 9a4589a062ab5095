/**
 * Daemon settings that had no test of their own: `http_address` "" and "::", the state file's
 * `transfer_agent_state` read back at start, a non-default `hash_algorithm` through archive and
 * restore, the critical stop after 3 compression failures, `graceful_shutdown_upload_timeout` and
 * `maintenance_mode_file`. Each runs the real daemon (`bin/pghoard.js`) without PostgreSQL.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { describe, it } from "node:test";
import {
  DaemonProcess,
  decodeStoredObject,
  httpRequest,
  makeDaemonEnv,
  makeFakePgdata,
  makeKeyPair,
  runPostgresCommand,
  sleep,
  syntheticSegment,
} from "./helpers.js";

const SITE = "gaps";

async function waitFor(what: string, condition: () => Promise<boolean> | boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

/** GET /status on an explicit address (IPv6 literals bare, e.g. "::1"). */
function statusAt(host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host, port, path: "/status", agent: false }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode ?? 0));
    });
    req.on("error", reject);
    req.end();
  });
}

/** A non-loopback address of this machine, to tell "all interfaces" from "loopback only". */
function externalAddress(family: "IPv4" | "IPv6"): string | null {
  for (const list of Object.values(os.networkInterfaces())) {
    for (const a of list ?? [])
      if (a.family === family && !a.internal && !a.address.startsWith("fe80")) return a.address;
  }
  return null;
}

describe("daemon settings", () => {
  it(
    'http_address "" listens on every IPv4 interface, "::" on IPv6 and IPv4 (dual stack)',
    { timeout: 60_000 },
    async () => {
      const pgdata = await makeFakePgdata();
      const v4 = externalAddress("IPv4");
      for (const address of ["", "::"]) {
        const env = await makeDaemonEnv({ [SITE]: { pgDataDirectory: pgdata } }, { http_address: address });
        const daemon = await DaemonProcess.start(env); // polls 127.0.0.1
        try {
          assert.equal(await statusAt("127.0.0.1", env.port), 200);
          if (v4) assert.equal(await statusAt(v4, env.port), 200, `not reachable on ${v4}`);
          if (address === "::") assert.equal(await statusAt("::1", env.port), 200);
          else await assert.rejects(statusAt("::1", env.port), /ECONNREFUSED|EADDRNOTAVAIL/);
        } finally {
          assert.equal((await daemon.stop()).code, 0);
        }
      }
    },
  );

  it(
    "hash_algorithm sha256 is stored, served by HEAD and the segment restores; transfer_agent_state counts survive a restart",
    { timeout: 120_000 },
    async () => {
      const pgdata = await makeFakePgdata();
      const env = await makeDaemonEnv({ [SITE]: { pgDataDirectory: pgdata } }, { hash_algorithm: "sha256" });
      const uploads = async () => {
        const state = JSON.parse(await readFile(env.statePath, "utf8")) as {
          transfer_agent_state: Record<string, { upload: { xlog: { count: number } } }>;
        };
        return state.transfer_agent_state[SITE]?.upload.xlog.count ?? 0;
      };
      const archive = async (seg: string) => {
        const data = syntheticSegment(seg);
        await writeFile(path.join(pgdata, "pg_wal", seg), data);
        const res = await httpRequest(env.port, "PUT", `/${SITE}/archive/${seg}`);
        assert.equal(res.status, 201, res.body);
        return data;
      };
      const segA = "000000010000000000000061";
      const segB = "000000010000000000000062";
      let daemon = await DaemonProcess.start(env);
      let dataA: Buffer;
      try {
        dataA = await archive(segA);
        await waitFor("the state file to count the upload", async () => (await uploads()) === 1, 30_000);
      } finally {
        assert.equal((await daemon.stop()).code, 0);
      }
      const stored = await decodeStoredObject(env.storageDir, `${SITE}/xlog/${segA}`, {});
      assert.equal(stored.metadata["hash-algorithm"], "sha256");
      assert.equal(stored.metadata.hash, createHash("sha256").update(dataA).digest("hex"));

      daemon = await DaemonProcess.start(env);
      try {
        await archive(segB);
        // 2, not 1: the first run's count was read back from the state file.
        await waitFor("the state file to count both uploads", async () => (await uploads()) === 2, 30_000);

        // As PostgreSQL asks: the target is in pg_wal, the segment itself no longer is (so storage serves it).
        const target = path.join(pgdata, "pg_wal", "RECOVERYXLOG");
        await rm(path.join(pgdata, "pg_wal", segA));
        const ok = await runPostgresCommand([
          ...["--mode", "restore", "--site", SITE, "--xlog", segA, "--output", target],
          ...["--port", String(env.port)],
        ]);
        assert.equal(ok.code, 0, `${ok.stdout}${ok.stderr}`);
        assert.ok((await readFile(target)).equals(dataA));

        // pghoard_archive_sync compares local WAL by this hash and algorithm (HEAD, http-api.md).
        const head = await httpRequest(env.port, "HEAD", `/${SITE}/archive/${segA}`);
        assert.equal(head.status, 200);
        assert.equal(head.headers["metadata-hash-algorithm"], "sha256");
        assert.equal(head.headers["metadata-hash"], createHash("sha256").update(dataA).digest("hex"));
      } finally {
        assert.equal((await daemon.stop()).code, 0);
      }
    },
  );

  it("after key rotation (A → B) WAL encrypted with the old key A still restores", { timeout: 120_000 }, async () => {
    const pgdata = await makeFakePgdata();
    const keyA = makeKeyPair();
    const keyB = makeKeyPair();
    const env = await makeDaemonEnv({ [SITE]: { pgDataDirectory: pgdata, keyId: "A", keys: keyA } });
    const segA = "000000010000000000000091";
    const segB = "000000010000000000000092";
    const archive = async (seg: string) => {
      const data = syntheticSegment(seg);
      await writeFile(path.join(pgdata, "pg_wal", seg), data);
      const res = await httpRequest(env.port, "PUT", `/${SITE}/archive/${seg}`);
      assert.equal(res.status, 201, res.body);
      await rm(path.join(pgdata, "pg_wal", seg));
      return data;
    };
    let daemon = await DaemonProcess.start(env);
    let dataA: Buffer;
    try {
      dataA = await archive(segA);
    } finally {
      assert.equal((await daemon.stop()).code, 0);
    }
    // Rotate: new uploads use B; A stays configured for reading.
    const site = (env.config.backup_sites as Record<string, Record<string, unknown>>)[SITE]!;
    site.encryption_key_id = "B";
    site.encryption_keys = {
      A: { public: keyA.publicPem, private: keyA.privatePem },
      B: { public: keyB.publicPem, private: keyB.privatePem },
    };
    await env.writeConfig();
    daemon = await DaemonProcess.start(env);
    try {
      const dataB = await archive(segB);
      const metaA = JSON.parse(await readFile(path.join(env.storageDir, SITE, "xlog", `${segA}.metadata`), "utf8"));
      const metaB = JSON.parse(await readFile(path.join(env.storageDir, SITE, "xlog", `${segB}.metadata`), "utf8"));
      assert.equal(metaA["encryption-key-id"], "A");
      assert.equal(metaB["encryption-key-id"], "B");
      for (const [seg, data] of [
        [segA, dataA],
        [segB, dataB],
      ] as const) {
        const target = path.join(pgdata, "pg_wal", "RECOVERYXLOG");
        const res = await runPostgresCommand([
          ...["--mode", "restore", "--site", SITE, "--xlog", seg, "--output", target],
          ...["--port", String(env.port)],
        ]);
        assert.equal(res.code, 0, `${seg}: ${res.stdout}${res.stderr}`);
        assert.ok((await readFile(target)).equals(data), seg);
        await rm(target);
      }
    } finally {
      assert.equal((await daemon.stop()).code, 0);
    }
  });

  it(
    "stops with an error after 3 failed compressions of one file (critical failure)",
    { timeout: 60_000 },
    async () => {
      const pgdata = await makeFakePgdata();
      const env = await makeDaemonEnv({ [SITE]: { pgDataDirectory: pgdata } });
      const incoming = path.join(env.backupLocation, SITE, "xlog_incoming");
      await mkdir(incoming, { recursive: true });
      // Not WAL: the header check fails on every attempt.
      await writeFile(path.join(incoming, "000000010000000000000071"), Buffer.alloc(16 * 1024 * 1024, 7));
      const daemon = await DaemonProcess.start(env);
      const exit = await daemon.exited;
      const logs = daemon.logs();
      assert.notEqual(exit.code, 0, logs);
      assert.match(logs, /attempt 1 of 3/);
      assert.match(logs, /attempt 2 of 3/);
      assert.doesNotMatch(logs, /attempt 3 of 3/);
      assert.equal(logs.match(/Problem handling.*000000010000000000000071/g)?.length, 3, logs);
    },
  );

  it(
    "SIGTERM waits graceful_shutdown_upload_timeout for a failing upload, then exits 0",
    { timeout: 60_000 },
    async () => {
      const pgdata = await makeFakePgdata();
      const env = await makeDaemonEnv({ [SITE]: { pgDataDirectory: pgdata } }, { graceful_shutdown_upload_timeout: 1 });
      await rm(env.storageDir, { recursive: true });
      await writeFile(env.storageDir, "not a directory"); // every upload fails and is retried
      const seg = "000000010000000000000081";
      await writeFile(path.join(pgdata, "pg_wal", seg), syntheticSegment(seg));
      const daemon = await DaemonProcess.start(env);
      // Not awaited: the PUT only answers once the upload succeeds, which it never does here.
      const put = httpRequest(env.port, "PUT", `/${SITE}/archive/${seg}`).catch(() => null);
      await waitFor("a failed upload", () => /upload.*failed|Problem|retry/i.test(daemon.logs()), 30_000);
      const exit = await daemon.stop("SIGTERM");
      await put;
      assert.equal(exit.code, 0, daemon.logs());
      await daemon.waitForLog(/Upload queue not drained before graceful_shutdown_upload_timeout/);
    },
  );

  it("maintenance_mode_file holds back a due basebackup", { timeout: 60_000 }, async () => {
    const pgdata = await makeFakePgdata();
    const env = await makeDaemonEnv(
      { [SITE]: { pgDataDirectory: pgdata, extra: { basebackup_interval_hours: 1, basebackup_mode: "local-tar" } } },
      {},
    );
    const maintenance = env.config.maintenance_mode_file as string;
    await writeFile(maintenance, "");
    const daemon = await DaemonProcess.start(env);
    try {
      await waitFor("the maintenance mode line", () => /Maintenance mode file exists/.test(daemon.logs()), 30_000);
      assert.doesNotMatch(daemon.logs(), /Creating a new basebackup/);
      await rm(maintenance);
      // Once the file is gone the due backup is started (it fails here: no PostgreSQL to copy).
      await waitFor(
        "the basebackup to start",
        () => new RegExp(`Creating a new basebackup for ${SITE} because there are currently none`).test(daemon.logs()),
        30_000,
      );
    } finally {
      await daemon.stop();
    }
  });
});
