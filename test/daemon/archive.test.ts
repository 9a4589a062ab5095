/**
 * WAL archiving end to end: PostgreSQL 15 with archive_command = pghoard_postgres_command, our
 * daemon as a child process, local storage with encryption. Every segment PostgreSQL marked as
 * archived must be in storage, decode byte-for-byte to the copy in pg_wal, and carry upstream's
 * metadata keys (storage-layout.md §4.3).
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { execFile } from "node:child_process";
import { copyFile, readFile, rm } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { findFreePort, startCluster, type PgCluster } from "../helpers/pgcluster.js";
import {
  DaemonProcess,
  decodeStoredObject,
  httpRequest,
  listStoredNames,
  makeDaemonEnv,
  makeKeyPair,
  postgresCommandBin,
  sleep,
  doneSegments,
  switchWal,
  waitArchived,
  type DaemonEnv,
} from "./helpers.js";

const execFileAsync = promisify(execFile);
const SITE = "archtest";
const KEY_ID = "archtest-key";

describe("archive_command through the daemon", () => {
  let cluster: PgCluster;
  let env: DaemonEnv;
  let daemon: DaemonProcess;
  const keys = makeKeyPair();

  before(async () => {
    const port = await findFreePort();
    cluster = await startCluster({
      archiveCommand: `${process.execPath} ${postgresCommandBin} --mode archive --port ${port} --site ${SITE} --xlog %f`,
      settings: { wal_keep_size: "2GB", wal_recycle: "off", max_wal_size: "4GB" },
    });
    env = await makeDaemonEnv(
      { [SITE]: { pgDataDirectory: cluster.dataDir, keyId: KEY_ID, keys } },
      { http_port: port },
    );
    daemon = await DaemonProcess.start(env);
  });

  after(async () => {
    await daemon?.stop();
    await cluster?.destroy();
  });

  it("archives every segment so that it decodes to the bytes in pg_wal, with upstream's metadata", async () => {
    await cluster.pgbench(["-i", "-s", "4"]);
    await cluster.pgbench(["-c", "2", "-t", "300"]);
    const last = await switchWal(cluster);
    await waitArchived(cluster, last);

    const done = await doneSegments(cluster);
    assert.ok(done.length >= 3, `expected several archived segments, got ${done.join(",")}`);
    const stored = await listStoredNames(env.storageDir, SITE, "xlog");
    for (const name of done) {
      if (name.endsWith(".history") || name.endsWith(".backup")) continue;
      assert.ok(stored.includes(name), `${name} missing from storage`);
      const original = await readFile(path.join(cluster.dataDir, "pg_wal", name));
      const { data, metadata } = await decodeStoredObject(env.storageDir, `${SITE}/xlog/${name}`, {
        [KEY_ID]: keys.privatePem,
      });
      assert.ok(data.equals(original), `${name} differs from pg_wal`);
      const storedBytes = await readFile(path.join(env.storageDir, SITE, "xlog", name));
      assert.deepEqual(Object.keys(metadata), [
        "compression-algorithm",
        "compression-level",
        "original-file-size",
        "host",
        "hash",
        "hash-algorithm",
        "encryption-key-id",
        "Content-Length",
        "_hash",
      ]);
      assert.equal(metadata["compression-algorithm"], "snappy");
      assert.equal(metadata["compression-level"], "0");
      assert.equal(metadata["original-file-size"], String(original.length));
      assert.equal(metadata["hash-algorithm"], "sha1");
      assert.equal(metadata.hash, createHash("sha1").update(original).digest("hex"));
      assert.equal(metadata["encryption-key-id"], KEY_ID);
      assert.equal(metadata["Content-Length"], String(storedBytes.length));
    }
  });

  it("archives the <SEG>.partial PostgreSQL offers at promotion under its own name, without a hash", async () => {
    // What PostgreSQL leaves in pg_wal when it promotes: the old timeline's last segment, renamed.
    const [segment] = (await doneSegments(cluster)).filter((n) => /^[0-9A-F]{24}$/.test(n));
    const original = await readFile(path.join(cluster.dataDir, "pg_wal", segment));
    const partial = `${segment}.partial`;
    await copyFile(path.join(cluster.dataDir, "pg_wal", segment), path.join(cluster.dataDir, "pg_wal", partial));
    try {
      const result = await execFileAsync(process.execPath, [
        postgresCommandBin,
        "--mode",
        "archive",
        "--port",
        String(env.port),
        "--site",
        SITE,
        "--xlog",
        partial,
      ]);
      assert.equal(result.stdout, "");
      const { data, metadata } = await decodeStoredObject(env.storageDir, `${SITE}/xlog/${partial}`, {
        [KEY_ID]: keys.privatePem,
      });
      assert.ok(data.equals(original));
      assert.equal(metadata.hash, undefined);
      // Never served back: recovery only ever asks for segment and history names.
      const get = await httpRequest(env.port, "GET", `/${SITE}/archive/${partial}`, {
        "x-pghoard-target-path": path.join(cluster.dataDir, "pg_wal", "RECOVERYXLOG"),
      });
      assert.equal(get.status, 400);
    } finally {
      await rm(path.join(cluster.dataDir, "pg_wal", partial), { force: true });
    }
  });

  it("answers HEAD with the stored hash and writes a sorted state file", async () => {
    const done = (await doneSegments(cluster)).filter((n) => /^[0-9A-F]{24}$/.test(n));
    const name = done[done.length - 1];
    const res = await httpRequest(env.port, "HEAD", `/${SITE}/archive/${name}`);
    assert.equal(res.status, 200);
    const original = await readFile(path.join(cluster.dataDir, "pg_wal", name));
    assert.equal(res.headers["metadata-hash"], createHash("sha1").update(original).digest("hex"));
    assert.equal(res.headers["metadata-hash-algorithm"], "sha1");

    await sleep(5500); // one main-loop iteration writes the state file
    const status = await httpRequest(env.port, "GET", "/status");
    assert.equal(status.status, 200);
    const state = JSON.parse(status.body) as Record<string, unknown> & {
      transfer_agent_state: Record<string, { upload: { xlog: { count: number } } }>;
      compressors: unknown[];
    };
    assert.deepEqual(Object.keys(state), Object.keys(state).sort());
    for (const key of [
      "backup_sites",
      "compressors",
      "pg_basebackups",
      "pg_receivexlogs",
      "queues",
      "served_files",
      "startup_time",
      "transfer_agent_state",
      "walreceivers",
    ]) {
      assert.ok(key in state, `state file lacks ${key}`);
    }
    assert.ok(state.transfer_agent_state[SITE].upload.xlog.count >= done.length - 1);
    assert.equal(state.compressors.length, 2);
  });
});
