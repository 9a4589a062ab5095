import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { buildControlTar } from "../../src/basebackup/control.js";
import {
  backupNameOf,
  basebackupKey,
  chunkKey,
  chunkObjectName,
  controlObjectMetadata,
  controlObjectName,
  dataObjectMetadata,
  deltaObjectKey,
  deltaReferences,
  findTarMember,
  InvalidTarError,
  listBasebackups,
  listPreservationRequests,
  objectKey,
  parseBasebackupMetadata,
  parseControlTar,
  preservationRequestKey,
  preservationRequestMetadata,
  readControlMetadata,
  siteEncodeOptions,
  timelineKey,
  walKey,
  walObjectMetadata,
  type ControlMetadata,
} from "../../src/catalog/index.js";
import { privateKeyLookup, sitePrivateKey, sitePublicKey } from "../../src/config/sites.js";
import { encodeBuffer, type EncodeOptions } from "../../src/fileformat/index.js";
import { createStorage } from "../../src/storage/index.js";
import type { StorageBackend } from "../../src/storage/types.js";

const NAME = "2022-04-19_09-27_0";

describe("catalog: object keys (storage-layout.md §1–2)", () => {
  it("builds every key kind", () => {
    assert.equal(walKey("site", "000000010000000000000002"), "site/xlog/000000010000000000000002");
    assert.equal(walKey("site", "000000010000000000000002.partial"), "site/xlog/000000010000000000000002.partial");
    assert.equal(timelineKey("site", "00000002.history"), "site/timeline/00000002.history");
    assert.equal(basebackupKey("site", NAME), `site/basebackup/${NAME}`);
    assert.equal(basebackupKey("site", controlObjectName(NAME)), `site/basebackup/${NAME}.00000000.pghoard`);
    assert.equal(
      chunkKey("site", "basebackup_chunk", chunkObjectName(NAME, 1)),
      `site/basebackup_chunk/${NAME}/${NAME}.00000001.pghoard`,
    );
    assert.equal(
      chunkKey("site", "basebackup_delta_chunk", chunkObjectName(NAME, 12)),
      `site/basebackup_delta_chunk/${NAME}/${NAME}.00000012.pghoard`,
    );
    assert.equal(deltaObjectKey("site", "ab".repeat(32)), `site/basebackup_delta/${"ab".repeat(32)}`);
    assert.equal(preservationRequestKey("site", "x_2024"), "site/preservation_request/x_2024");
    assert.equal(objectKey("site", "basebackup"), "site/basebackup");
  });

  it("collapses slashes like os.path.join and strips the control suffix", () => {
    assert.equal(objectKey("a/b/", "xlog", "S"), "a/b/xlog/S");
    assert.equal(objectKey("a//b", "basebackup"), "a/b/basebackup");
    assert.equal(backupNameOf(`site/basebackup/${NAME}.00000000.pghoard`), NAME);
    assert.equal(backupNameOf(NAME), NAME);
  });
});

describe("catalog: metadata builders", () => {
  const plain: EncodeOptions = { algorithm: "snappy", level: 0, encryptionKeyId: null, publicKeyPem: null };
  const encrypted: EncodeOptions = { algorithm: "zstd", level: 3, encryptionKeyId: "k1", publicKeyPem: "PEM" };

  it("WAL metadata: upstream key order, hash only when given, key id only when encrypted", () => {
    const wal = walObjectMetadata({
      pgVersion: 150004,
      compression: { algorithm: "snappy", level: 0 },
      originalSize: 16777216,
      host: "h",
      hash: { algorithm: "sha1", hexdigest: "abc" },
      encryptionKeyId: "k1",
    });
    assert.deepEqual(Object.entries(wal), [
      ["pg-version", 150004],
      ["compression-algorithm", "snappy"],
      ["compression-level", 0],
      ["original-file-size", 16777216],
      ["host", "h"],
      ["hash", "abc"],
      ["hash-algorithm", "sha1"],
      ["encryption-key-id", "k1"],
    ]);
    const partial = walObjectMetadata({
      pgVersion: null,
      compression: { algorithm: "zstd", level: 1 },
      originalSize: 20,
      host: "h",
      encryptionKeyId: null,
    });
    assert.deepEqual(Object.keys(partial), [
      "pg-version",
      "compression-algorithm",
      "compression-level",
      "original-file-size",
      "host",
    ]);
    assert.equal(partial["pg-version"], null);
  });

  it("data objects: strings, absent key id dropped", () => {
    assert.deepEqual(
      Object.entries(dataObjectMetadata({ encoding: plain, format: "pghoard-bb-v2", originalSize: 10, host: "h" })),
      [
        ["compression-algorithm", "snappy"],
        ["format", "pghoard-bb-v2"],
        ["original-file-size", "10"],
        ["host", "h"],
      ],
    );
    assert.deepEqual(
      Object.keys(dataObjectMetadata({ encoding: encrypted, format: "pghoard-delta-v2", originalSize: 0, host: "h" })),
      ["compression-algorithm", "encryption-key-id", "format", "original-file-size", "host"],
    );
  });

  it("control object: decision keys between host and end-time, null end segment dropped", () => {
    const md = controlObjectMetadata({
      encoding: encrypted,
      format: "pghoard-delta-v2",
      originalSize: 20480,
      host: "h",
      decision: { "backup-decision-time": "2024-05-01T10:00:00+00:00", "backup-reason": "scheduled", site: "s" },
      endTime: "2024-05-01 10:01:00.5+00:00",
      endWalSegment: null,
      pgVersion: 150004,
      activeBackupMode: "pg_receivexlog",
      basebackupMode: "delta",
      startTime: "2024-05-01T10:00:01+00:00",
      startWalSegment: "000000010000000000000003",
      totalSizePlain: 100,
      totalSizeEnc: 50,
    });
    assert.deepEqual(Object.keys(md), [
      "compression-algorithm",
      "encryption-key-id",
      "format",
      "original-file-size",
      "host",
      "backup-decision-time",
      "backup-reason",
      "site",
      "end-time",
      "pg-version",
      "active-backup-mode",
      "basebackup-mode",
      "start-time",
      "start-wal-segment",
      "total-size-plain",
      "total-size-enc",
    ]);
    assert.equal(md["pg-version"], "150004");
    assert.deepEqual(parseBasebackupMetadata(md), {
      format: "pghoard-delta-v2",
      startTime: "2024-05-01T10:00:01+00:00",
      startWalSegment: "000000010000000000000003",
      pgVersion: 150004,
    });
    assert.deepEqual(parseBasebackupMetadata({}), {
      format: undefined,
      startTime: undefined,
      startWalSegment: undefined,
      pgVersion: null,
    });
  });

  it("preservation requests carry only the two keys", () => {
    assert.deepEqual(preservationRequestMetadata(NAME, "2030-01-01 00:00:00+00:00"), {
      "preserve-backup": NAME,
      "preserve-until": "2030-01-01 00:00:00+00:00",
    });
  });
});

describe("catalog: site keys", () => {
  const site = { encryption_key_id: "k1", encryption_keys: { k1: { public: "PUB", private: "PRIV" } } };

  it("looks up own key ids only", () => {
    assert.equal(sitePublicKey(site, "k1"), "PUB");
    assert.equal(sitePrivateKey(site, "k1"), "PRIV");
    assert.equal(sitePrivateKey(site, "constructor"), null);
    assert.equal(sitePublicKey(site, "toString"), null);
    assert.equal(privateKeyLookup(site)("missing"), undefined);
  });

  it("encode options: compression from the config, encryption from the site", () => {
    const config = { compression: { algorithm: "zstd" as const, level: 5, thread_count: 1 } };
    assert.deepEqual(siteEncodeOptions(config, site), {
      algorithm: "zstd",
      level: 5,
      encryptionKeyId: "k1",
      publicKeyPem: "PUB",
    });
    assert.deepEqual(siteEncodeOptions(config, { encryption_key_id: null, encryption_keys: {} }), {
      algorithm: "zstd",
      level: 5,
      encryptionKeyId: null,
      publicKeyPem: null,
    });
    assert.equal(siteEncodeOptions(config, { encryption_key_id: "nope", encryption_keys: {} }).publicKeyPem, null);
  });
});

describe("catalog: control object and listing against a local store", () => {
  let dir: string;
  let storage: StorageBackend;
  const { publicKey, privateKey } = generateKeyPairSync("rsa", {
    modulusLength: 2048,
    publicKeyEncoding: { type: "spki", format: "pem" },
    privateKeyEncoding: { type: "pkcs8", format: "pem" },
  });
  const control: ControlMetadata = {
    backup_end_time: "2024-05-01T10:01:00Z",
    backup_end_wal_segment: "000000010000000000000004",
    backup_start_time: "2024-05-01T10:00:01+00:00",
    backup_start_wal_segment: "000000010000000000000003",
    pgdata: "/var/lib/pg",
    pghoard_object: "basebackup",
    pghoard_version: "2.6.0",
    tablespaces: { ts1: { path: "/ts1", oid: 16395 } },
    host: "h",
    chunks: [{ chunk_filename: chunkObjectName(NAME, 1), input_size: 10, result_size: 5, files: ["pgdata/x"] }],
    manifest: {
      snapshot_result: {
        state: {
          files: [
            {
              relative_path: "base/1",
              file_size: 9000,
              stored_file_size: 100,
              hexdigest: "ff".repeat(32),
              content_b64: null,
            },
          ],
        },
      },
    },
  };

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "catalog-"));
    storage = await createStorage({ storage_type: "local", directory: dir });
  });
  after(async () => {
    await storage.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("writes a control tar and reads the same JSON back, encrypted, through storage", async () => {
    const tar = buildControlTar({
      metadata: control,
      pgControl: Buffer.from("ctl"),
      backupLabel: Buffer.from("label"),
    });
    assert.deepEqual(parseControlTar(tar), control);
    assert.equal(findTarMember(tar, "pgdata/global/pg_control")?.toString(), "ctl");
    const encoding: EncodeOptions = { algorithm: "zstd", level: 1, encryptionKeyId: "k1", publicKeyPem: publicKey };
    const metadata = dataObjectMetadata({ encoding, format: "pghoard-delta-v2", originalSize: tar.length, host: "h" });
    const key = basebackupKey("site", controlObjectName(NAME));
    await storage.storeFileFromMemory(key, await encodeBuffer(tar, encoding), metadata);
    const read = await readControlMetadata(storage, key, metadata, (id) => (id === "k1" ? privateKey : undefined));
    assert.deepEqual(read, control);
    assert.deepEqual(deltaReferences(read), {
      hexdigests: new Set(["ff".repeat(32)]),
      chunks: [chunkObjectName(NAME, 1)],
    });
  });

  it("reports a tar without metadata as null and a corrupt header as InvalidTarError", () => {
    const tar = buildControlTar({
      metadata: control,
      pgControl: Buffer.from("ctl"),
      backupLabel: Buffer.from("label"),
    });
    const other = Buffer.from(tar);
    other.write("renamed.json", 0, "utf8"); // first member renamed: checksum must be fixed up
    let sum = 8 * 0x20;
    for (let i = 0; i < 512; i++) if (i < 148 || i >= 156) sum += other[i];
    other.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "ascii");
    assert.equal(parseControlTar(other), null);
    const corrupt = Buffer.from(tar);
    corrupt[10] ^= 0xff;
    assert.throws(() => parseControlTar(corrupt), InvalidTarError);
  });

  it("lists basebackups of several stores in order, and preservation requests", async () => {
    const other = await createStorage({ storage_type: "local", directory: path.join(dir, "old") });
    try {
      await storage.storeFileFromMemory(basebackupKey("site", NAME), Buffer.from("x"), {
        "start-time": "2024-05-01T10:00:00+00:00",
      });
      await other.storeFileFromMemory(basebackupKey("oldsite", "2016-04-12_0"), Buffer.from("yy"), {});
      assert.deepEqual(await listPreservationRequests({ prefix: "site", storage }), []);
      await storage.storeFileFromMemory(
        preservationRequestKey("site", `${NAME}_x`),
        Buffer.alloc(0),
        preservationRequestMetadata(NAME, "2030-01-01 00:00:00"),
      );
      const listed = await listBasebackups([
        { site: "site", prefix: "site", storage },
        { site: "oldsite", prefix: "oldsite", storage: other },
      ]);
      // the current site's objects first (in the backend's order), then the moved_from site's
      assert.deepEqual(
        listed.map((e) => e.site),
        ["site", "site", "oldsite"],
      );
      assert.deepEqual(
        new Set(listed.slice(0, 2).map((e) => e.name)),
        new Set([`site/basebackup/${NAME}`, `site/basebackup/${controlObjectName(NAME)}`]),
      );
      assert.deepEqual([listed[2].name, listed[2].size], ["oldsite/basebackup/2016-04-12_0", 2]);
      assert.ok(listed.every((e) => e.lastModified instanceof Date));
      const requests = await listPreservationRequests({ prefix: "site", storage });
      assert.deepEqual(
        requests.map((r) => r.metadata["preserve-backup"]),
        [NAME],
      );
    } finally {
      await other.close();
    }
  });
});
