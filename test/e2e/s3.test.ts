/**
 * End to end on S3 (Swift's s3api on 127.0.0.1): PostgreSQL 15 archives WAL through our
 * pghoard_postgres_command into a daemon whose object storage is `s3`, encrypted and compressed;
 * a local-tar basebackup in several chunks is taken on request under pgbench load; the bucket
 * holds upstream's keys and metadata; pghoard_restore restores from S3 and PostgreSQL recovers,
 * with WAL served from S3 by a second daemon, to a named restore point with exactly its data.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, describe, it } from "node:test";
import {
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  S3Client,
  type _Object,
} from "@aws-sdk/client-s3";

import { decodeBuffer } from "../../src/fileformat/index.js";
import {
  makeRestorePoint,
  prepareData,
  requestBackup,
  restoreAndRecover,
  SNAPSHOT_SQL,
  startScenario,
  type Scenario,
  type StoredEntry,
} from "../basebackup/helpers.js";
import type { DaemonProcess } from "../daemon/helpers.js";
import type { PgCluster } from "../helpers/pgcluster.js";
import { startServer, type TestServer } from "../storage/servers.js";

// the SDK's notice that releases after January 2027 need Node 22 (the version is pinned)
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";
const server = await startServer("swift");
const running: TestServer | null = "env" in server ? server : null;

const SITE = "e2e-s3";
const BUCKET = "pghoard-e2e";
const CHUNK_SIZE = 4 * 1024 * 1024;
const PART_SIZE = 5 * 1024 * 1024; // S3's smallest multipart part: objects above it go up in parts
// 12 MB of random bytes in one row: incompressible, so its chunk and (spread over at most two
// segments) at least one WAL segment are stored above PART_SIZE, i.e. in several parts
const NOISE_SQL = (id: number): string =>
  `INSERT INTO noise SELECT ${id}, decode(string_agg(md5(random()::text), ''), 'hex') FROM generate_series(1, 750000)`;
const NOISE_STATE_SQL = "SELECT count(*)::text AS n, md5(string_agg(md5(b), ',' ORDER BY id)) AS h FROM noise";

// Upstream's metadata keys per object kind (shared/spec/storage-layout.md §4.3); S3 lower-cases them.
const WAL_KEYS = [
  "compression-algorithm",
  "compression-level",
  "content-length",
  "encryption-key-id",
  "hash",
  "hash-algorithm",
  "host",
  "original-file-size",
  "pg-version",
];
const WAL_REQUIRED = WAL_KEYS.filter((k) => k !== "pg-version"); // absent while the server version is unknown
const CHUNK_KEYS = [
  "compression-algorithm",
  "content-length",
  "encryption-key-id",
  "format",
  "host",
  "original-file-size",
];
const CONTROL_KEYS = [
  "active-backup-mode",
  "backup-decision-time",
  "backup-reason",
  "basebackup-mode",
  "compression-algorithm",
  "content-length",
  "encryption-key-id",
  "end-time",
  "end-wal-segment",
  "format",
  "host",
  "original-file-size",
  "pg-version",
  "site",
  "start-time",
  "start-wal-segment",
  "total-size-enc",
  "total-size-plain",
];

function s3Config(env: Record<string, string>): Record<string, unknown> {
  const endpoint = new URL(env.S3_ENDPOINT!);
  return {
    storage_type: "s3",
    bucket_name: BUCKET, // does not exist yet: the daemon creates it
    region: env.S3_REGION,
    aws_access_key_id: env.S3_ACCESS_KEY,
    aws_secret_access_key: env.S3_SECRET_KEY,
    host: endpoint.hostname,
    port: Number(endpoint.port),
    is_secure: false,
    segment_size: PART_SIZE,
  };
}

/** A plain SDK client, independent of our backend, to look at the bucket as any S3 user would. */
function rawClient(env: Record<string, string>): S3Client {
  return new S3Client({
    endpoint: env.S3_ENDPOINT,
    forcePathStyle: true,
    region: env.S3_REGION,
    credentials: { accessKeyId: env.S3_ACCESS_KEY!, secretAccessKey: env.S3_SECRET_KEY! },
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
  });
}

async function listKeys(client: S3Client, prefix: string): Promise<_Object[]> {
  const out: _Object[] = [];
  let token: string | undefined;
  do {
    const res = await client.send(
      new ListObjectsV2Command({ Bucket: BUCKET, Prefix: prefix, ContinuationToken: token }),
    );
    out.push(...(res.Contents ?? []));
    token = res.IsTruncated ? res.NextContinuationToken : undefined;
  } while (token);
  return out;
}

async function headMetadata(client: S3Client, key: string): Promise<Record<string, string>> {
  return (await client.send(new HeadObjectCommand({ Bucket: BUCKET, Key: key }))).Metadata ?? {};
}

/** The site's basebackup/ objects (base names, with metadata) as seen in the bucket. */
async function listBackups(client: S3Client): Promise<StoredEntry[]> {
  const prefix = `${SITE}/basebackup/`;
  const objects = await listKeys(client, prefix).catch((err: { name?: string }) => {
    if (err.name === "NoSuchBucket") return []; // the daemon creates the bucket on its first upload
    throw err;
  });
  return await Promise.all(
    objects.map(async (o) => ({
      name: o.Key!.slice(prefix.length),
      size: o.Size ?? 0,
      metadata: await headMetadata(client, o.Key!),
    })),
  );
}

function assertKeys(metadata: Record<string, string>, allowed: string[], required: string[], what: string): void {
  const keys = Object.keys(metadata).sort();
  for (const k of required)
    assert.ok(keys.includes(k), `${what}: metadata key ${k} missing in ${JSON.stringify(metadata)}`);
  for (const k of keys) assert.ok(allowed.includes(k), `${what}: unexpected metadata key ${k}`);
}

describe(
  "end to end on S3: archive, local-tar basebackup, restore to a restore point",
  { skip: "skip" in server ? server.skip : false, timeout: 300_000 },
  () => {
    let s: Scenario | undefined;
    let restored: PgCluster | undefined;
    let restoreDaemon: DaemonProcess | undefined;
    let client: S3Client | undefined;
    after(async () => {
      await restored?.destroy().catch(() => undefined);
      await restoreDaemon?.stop().catch(() => undefined);
      await s?.cleanup();
      client?.destroy();
      await running?.stop();
    });

    it("backs up to S3 and recovers from S3 with exactly the restore point's data", async (t) => {
      const env = running!.env;
      client = rawClient(env);
      const t0 = Date.now();
      const phase = (what: string): void => t.diagnostic(`${what} at ${((Date.now() - t0) / 1000).toFixed(1)} s`);

      await assert.rejects(client.send(new HeadBucketCommand({ Bucket: BUCKET })), { name: "NotFound" });
      s = await startScenario({
        site: SITE,
        siteExtra: { basebackup_mode: "local-tar", basebackup_chunk_size: CHUNK_SIZE, object_storage: s3Config(env) },
        configExtra: { compression: { algorithm: "zstd", thread_count: 2 } },
      });
      await prepareData(s, 2, false);
      await s.cluster.query(
        "CREATE TABLE noise (id int PRIMARY KEY, b bytea); ALTER TABLE noise ALTER b SET STORAGE EXTERNAL",
      );
      await s.cluster.query(NOISE_SQL(1));
      phase("data written");
      const load = s.cluster.pgbench(["-c", "2", "-T", "3", "-n"]);
      const backup = await requestBackup(s, 120_000, () => listBackups(client!));
      await load;
      phase("basebackup done");
      await s.cluster.pgbench(["-c", "2", "-t", "200", "-n"]);
      await s.cluster.query(NOISE_SQL(2));
      const expectedNoise = (await s.cluster.query(NOISE_STATE_SQL))[0];
      const { expected } = await makeRestorePoint(s, false);
      phase("restore point archived");

      // --- the bucket: upstream's keys and metadata
      const name = backup.name.replace(/\.00000000\.pghoard$/, "");
      assert.match(name, /^\d{4}-\d\d-\d\d_\d\d-\d\d_\d+$/);
      assert.equal(backup.name, `${name}.00000000.pghoard`);
      const control = backup.metadata;
      assertKeys(control, CONTROL_KEYS, CONTROL_KEYS, "control object");
      assert.equal(control.format, "pghoard-bb-v2");
      assert.equal(control["basebackup-mode"], "local-tar");
      assert.equal(control["active-backup-mode"], "archive_command");
      assert.equal(control["backup-reason"], "requested");
      assert.equal(control["compression-algorithm"], "zstd");
      assert.equal(control["encryption-key-id"], s.keyId);
      assert.equal(control.site, SITE);
      assert.equal(control["content-length"], String(backup.size));
      assert.ok(backup.size > 0 && Number(control["original-file-size"]) > 0);
      assert.match(control["start-wal-segment"]!, /^[0-9A-F]{24}$/);
      assert.match(control["end-wal-segment"]!, /^[0-9A-F]{24}$/);
      assert.match(control["pg-version"]!, /^15\d{4}$/);

      const chunkPrefix = `${SITE}/basebackup_chunk/${name}/`;
      const chunks = await listKeys(client, chunkPrefix);
      assert.ok(chunks.length >= 3, `expected several chunks, got ${chunks.length}`);
      assert.deepEqual(
        chunks.map((c) => c.Key),
        chunks.map((_, i) => `${chunkPrefix}${name}.${String(i + 1).padStart(8, "0")}.pghoard`),
      );
      let encSum = 0;
      let plainSum = 0;
      for (const chunk of chunks) {
        const md = await headMetadata(client, chunk.Key!);
        assertKeys(md, CHUNK_KEYS, CHUNK_KEYS, chunk.Key!);
        assert.equal(md.format, "pghoard-bb-v2");
        assert.equal(md["encryption-key-id"], s.keyId);
        assert.equal(md["content-length"], String(chunk.Size));
        encSum += chunk.Size!;
        plainSum += Number(md["original-file-size"]);
      }
      assert.equal(Number(control["total-size-enc"]), encSum);
      assert.equal(Number(control["total-size-plain"]), plainSum);
      assert.ok(plainSum > 3 * CHUNK_SIZE, `backup of ${plainSum} bytes`);
      // a multipart upload's ETag is `<md5 of the part md5s>-<parts>`: the noise chunk went up in parts, with its metadata
      assert.ok(
        chunks.some((c) => /-\d+"?$/.test(c.ETag ?? "")),
        `no multipart chunk: ${chunks.map((c) => `${c.Size}:${c.ETag}`).join(" ")}`,
      );

      const walObjects = await listKeys(client, `${SITE}/xlog/`);
      const wal = walObjects.map((o) => o.Key!.slice(`${SITE}/xlog/`.length));
      for (const o of walObjects) {
        assert.match(o.Key!, /^e2e-s3\/xlog\/[0-9A-F]{24}$/);
        const walMd = await headMetadata(client, o.Key!);
        assertKeys(walMd, WAL_KEYS, WAL_REQUIRED, o.Key!);
        assert.equal(walMd["encryption-key-id"], s.keyId);
        assert.equal(walMd["compression-algorithm"], "zstd");
        assert.equal(walMd["original-file-size"], String(16 * 1024 * 1024));
        assert.equal(walMd["content-length"], String(o.Size));
      }
      assert.ok(
        walObjects.some((o) => /-\d+"?$/.test(o.ETag ?? "")),
        "no WAL segment went up in parts",
      );
      const lastArchived = (
        await s.cluster.query<{ w: string }>("SELECT last_archived_wal AS w FROM pg_stat_archiver")
      )[0]!.w;
      for (const needed of [control["start-wal-segment"]!, control["end-wal-segment"]!, lastArchived]) {
        assert.ok(wal.includes(needed), `xlog/${needed} missing from the bucket: ${wal.join(" ")}`);
      }
      // one segment, fetched raw: encrypted with our key, and its plaintext hash is the one in the metadata
      const segKey = `${SITE}/xlog/${control["start-wal-segment"]}`;
      const got = await client.send(new GetObjectCommand({ Bucket: BUCKET, Key: segKey }));
      const stored = Buffer.from(await got.Body!.transformToByteArray());
      const md = got.Metadata ?? {};
      assertKeys(md, WAL_KEYS, WAL_REQUIRED, segKey);
      assert.equal(md["encryption-key-id"], s.keyId);
      assert.equal(md["content-length"], String(stored.length));
      const plain = await decodeBuffer(stored, md, (id) => (id === s!.keyId ? s!.keys.privatePem : undefined));
      assert.equal(plain.length, 16 * 1024 * 1024);
      assert.equal(md["original-file-size"], String(plain.length));
      assert.equal(createHash(md["hash-algorithm"]!).update(plain).digest("hex"), md.hash);
      phase("bucket checked");

      // --- restore from S3, recover with WAL from S3
      ({ cluster: restored, daemon: restoreDaemon } = await restoreAndRecover(s, "rp1"));
      phase("recovered");
      assert.deepEqual((await restored.query(SNAPSHOT_SQL))[0], expected);
      assert.deepEqual((await restored.query(NOISE_STATE_SQL))[0], expectedNoise);
      assert.match(await restored.logContents(), /recovery stopping at restore point "rp1"/);
      // the storage secret and the private key never reach a log line
      for (const log of [s.daemon.logs(), restoreDaemon.logs()])
        assert.doesNotMatch(log, new RegExp(`${env.S3_SECRET_KEY}|PRIVATE KEY`));
      // the restored PGDATA has no WAL: it all came through restore_command, i.e. from S3 via the second daemon
      assert.match(
        await restored.logContents(),
        new RegExp(`restored log file "${control["end-wal-segment"]}" from archive`),
      );
    });
  },
);
