/**
 * pghoard_archive_sync against real PostgreSQL 15 archiving through our daemon into a local store.
 *
 * Timeline 2 is made on the same cluster by ending an archive recovery: the server is stopped,
 * restarted with recovery.signal and a restore_command that finds nothing, replays its own pg_wal
 * and promotes itself, writing 00000002.history. The integrity walk then has to cross from
 * timeline 2 back to the basebackup's start on timeline 1.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFile, rm, unlink, writeFile, appendFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { decodeBuffer, encodeBuffer } from "../../src/fileformat/index.js";
import { createStorage, type StorageBackend } from "../../src/storage/index.js";
import { isWalName, parseWalName } from "../../src/wal/index.js";
import { chownToPostgres, findFreePort, makeTempDir, startCluster, type PgCluster } from "../helpers/pgcluster.js";
import {
  DaemonProcess,
  makeDaemonEnv,
  postgresCommandBin,
  waitArchived,
  switchWal,
  type DaemonEnv,
} from "../daemon/helpers.js";
import { makeSegments, runBin, takeBasebackup } from "./archive_fixtures.js";

const SITE = "synctest";

describe("pghoard_archive_sync", { timeout: 600_000 }, () => {
  let cluster: PgCluster | undefined;
  let env: DaemonEnv;
  let daemon: DaemonProcess | undefined;
  let storage: StorageBackend;
  let work: string;
  let backupStart: string;

  const walDir = () => path.join(cluster!.dataDir, "pg_wal");
  const sync = (...args: string[]) => runBin("pghoard_archive_sync.js", ["--config", env.configPath, ...args]);
  const storedXlog = async () => (await storage.list(`${SITE}/xlog`)).map((o) => path.posix.basename(o.name)).sort();
  const currentSegment = async (): Promise<string> =>
    (
      (await cluster!.query<{ name: string }>("SELECT pg_walfile_name(pg_current_wal_lsn()) AS name"))[0] as {
        name: string;
      }
    ).name;

  before(async () => {
    const port = await findFreePort();
    // PostgreSQL archives the old timeline's last segment as `.partial` at promotion; pghoard (like
    // upstream) has no use for it, so the archive_command skips it rather than failing forever.
    const archiveCommand =
      `case %f in *.partial) exit 0;; esac; ` +
      `${process.execPath} ${postgresCommandBin} --mode archive --port ${port} --site ${SITE} --xlog %f`;
    cluster = await startCluster({
      archiveCommand,
      settings: { wal_keep_size: "2GB", wal_recycle: "off", max_wal_size: "4GB" },
    });
    env = await makeDaemonEnv(
      {
        [SITE]: {
          pgDataDirectory: cluster.dataDir,
          extra: { nodes: [{ host: "127.0.0.1", port: cluster.port, user: "postgres" }] },
        },
      },
      { http_port: port, log_level: "INFO" },
    );
    daemon = await DaemonProcess.start(env);
    storage = await createStorage({ storage_type: "local", directory: env.storageDir });
    work = await makeTempDir("pghoard-sync-test");

    await makeSegments(cluster, 2);
    backupStart = await takeBasebackup(cluster, storage, SITE, path.join(work, "bb"), "2026-01-01_00-00_0");
    await makeSegments(cluster, 4);
    await waitArchived(cluster, await switchWal(cluster));

    // Timeline 2: end an archive recovery that finds nothing in the archive.
    await cluster.stop("fast");
    await writeFile(path.join(cluster.dataDir, "recovery.signal"), "");
    await appendFile(path.join(cluster.dataDir, "postgresql.conf"), "\nrestore_command = 'false'\n");
    await chownToPostgres(cluster.dataDir);
    await cluster.start();
    await cluster.waitForRecoveryEnd();
    await makeSegments(cluster, 3);
    await waitArchived(cluster, await switchWal(cluster));
    assert.equal(parseWalName(await currentSegment()).timeline, 2);
    assert.equal(parseWalName(backupStart).timeline, 1);
  });

  after(async () => {
    await daemon?.stop();
    await cluster?.destroy();
    await storage?.close();
    if (work) await rm(work, { recursive: true, force: true });
    if (env) await rm(env.dir, { recursive: true, force: true });
  });

  it("finds the archive complete from timeline 2 back to the timeline-1 backup", async () => {
    const res = await sync();
    assert.equal(res.code, 0, res.stderr + (daemon?.logs() ?? ""));
    assert.match(res.stderr, /Found all required WAL files: \d+/);
    assert.match(res.stderr, new RegExp(`Verifying archive integrity from '00000002[0-9A-F]{16}' to '${backupStart}'`));
    assert.match(res.stderr, /TIMELINE file '00000002.history' already archived/);
  });

  it("re-archives a segment missing in the middle of the chain while it is still in pg_wal", async () => {
    const stored = await storedXlog();
    const middle = stored.filter((n) => n.startsWith("00000001") && n > backupStart)[1] as string;
    assert.ok(middle, `a timeline-1 segment after the backup: ${stored.join(" ")}`);
    await storage.deleteKey(`${SITE}/xlog/${middle}`);
    // Seen as a gap without phase 1…
    const verifyOnly = await sync("--max-hash-checks", "0");
    assert.equal(verifyOnly.code, 0, verifyOnly.stderr);
    assert.match(verifyOnly.stderr, new RegExp(`WAL file '${middle}' needs to be archived`));
    assert.match(verifyOnly.stderr, new RegExp(`WAL file '${middle}' archived`));
    assert.ok((await storedXlog()).includes(middle));
    const { data, metadata } = await storage.getContentsToMemory(`${SITE}/xlog/${middle}`);
    const decoded = await decodeBuffer(data, metadata, () => undefined);
    assert.ok(decoded.equals(await readFile(path.join(walDir(), middle))), "re-archived bytes equal pg_wal");
  });

  it("replaces a stored segment whose hash differs from pg_wal", async () => {
    const stored = await storedXlog();
    const victim = stored.filter((n) => n.startsWith("00000002")).at(-1) as string;
    const original = await readFile(path.join(walDir(), victim));
    const corrupt = Buffer.from(original);
    for (let i = 4096; i < 8192; i++) corrupt[i] = (corrupt[i] as number) ^ 0xff;
    const encoded = await encodeBuffer(corrupt, {
      algorithm: "snappy",
      level: 0,
      encryptionKeyId: null,
      publicKeyPem: null,
    });
    await storage.storeFileFromMemory(`${SITE}/xlog/${victim}`, encoded, {
      "compression-algorithm": "snappy",
      "original-file-size": String(corrupt.length),
      hash: createHash("sha1").update(corrupt).digest("hex"),
      "hash-algorithm": "sha1",
    });
    const res = await sync("--no-verify");
    assert.equal(res.code, 0, res.stderr);
    assert.match(
      res.stderr,
      new RegExp(`WAL file '${victim}' already archived but existing hash '[0-9a-f]+' differs from our hash`),
    );
    const { data, metadata } = await storage.getContentsToMemory(`${SITE}/xlog/${victim}`);
    assert.ok((await decodeBuffer(data, metadata, () => undefined)).equals(original), "the stored copy was replaced");
    assert.equal(metadata.hash, createHash("sha1").update(original).digest("hex"));
  });

  it("reports a gap that pg_wal cannot fill, and can request a basebackup instead", async () => {
    const stored = await storedXlog();
    const gone = stored.filter((n) => n.startsWith("00000001") && n > backupStart)[0] as string;
    await storage.deleteKey(`${SITE}/xlog/${gone}`);
    await unlink(path.join(walDir(), gone));
    const res = await sync();
    assert.equal(res.code, 1, res.stderr);
    // IDENTIFY_SYSTEM's position right after a WAL switch is the first byte of the next segment.
    assert.match(
      res.stderr,
      new RegExp(
        `FATAL: SyncError: xlog file ${gone} missing, integrity check from 00000002[0-9A-F]{16} to ${backupStart} failed`,
      ),
    );
    const requested = await sync("--create-new-backup-on-failure");
    assert.equal(requested.code, 0, requested.stderr);
    assert.match(requested.stderr, /Requesting new basebackup: xlog file/);
    assert.match(requested.stderr, new RegExp(`Requested a new backup for site: '${SITE}' successfully`));
  });

  it("parses --max-hash-checks as an integer; bad values are usage errors", async () => {
    const bad = await sync("--max-hash-checks", "many");
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /invalid int value/);
    const unlimited = await sync("--max-hash-checks=-1", "--no-verify");
    assert.equal(unlimited.code, 0, unlimited.stderr);
    assert.ok(
      (await storedXlog()).filter((n) => isWalName(n)).length > 0 &&
        /already archived and has valid hash/.test(unlimited.stderr),
    );
  });

  it("fails clearly when the daemon is not running or no config is given", async () => {
    const noConfig = await runBin("pghoard_archive_sync.js", [], { PGHOARD_CONFIG: "" });
    assert.equal(noConfig.code, 1);
    assert.match(noConfig.stdout, /config file path must be given/);
    await daemon?.stop();
    daemon = undefined;
    const res = await sync();
    assert.equal(res.code, 1);
    assert.match(res.stderr, /FATAL: SyncError: pghoard daemon not reachable at http:\/\/127\.0\.0\.1:\d+\/synctest\//);
  });
});
