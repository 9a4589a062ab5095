/**
 * findOrphanDeltaObjects against a real local store: only hash-named objects that no delta
 * control object references and that are older than the threshold are reported; a control object
 * that cannot be read reports nothing; manifests are read once and forgotten with their backup.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, rm, utimes, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { buildControlTar } from "../../src/basebackup/control.js";
import { removeInterruptedBackupLeftovers } from "../../src/basebackup/leftovers.js";
import {
  basebackupKey,
  controlObjectName,
  dataObjectMetadata,
  deltaObjectKey,
  type ControlMetadata,
} from "../../src/catalog/index.js";
import { findOrphanDeltaObjects, type DeltaReferenceCache } from "../../src/catalog/orphans.js";
import type { EncodeOptions } from "../../src/fileformat/index.js";
import { encodeBuffer } from "../../src/fileformat/index.js";
import { createStorage } from "../../src/storage/index.js";
import type { StorageBackend } from "../../src/storage/types.js";
import type { SiteConfig } from "../../src/config/types.js";

const plain: EncodeOptions = { algorithm: "snappy", level: 0, encryptionKeyId: null, publicKeyPem: null };
const h = (c: string): string => c.repeat(64);

function deltaControl(hexdigests: string[]): ControlMetadata {
  return {
    backup_end_time: "2024-05-01T10:01:00Z",
    backup_end_wal_segment: "000000010000000000000004",
    backup_start_time: "2024-05-01T10:00:01+00:00",
    backup_start_wal_segment: "000000010000000000000003",
    pgdata: "/var/lib/pg",
    pghoard_object: "basebackup",
    pghoard_version: "2.6.0",
    tablespaces: {},
    host: "h",
    chunks: [],
    manifest: {
      snapshot_result: {
        state: {
          files: hexdigests.map((hexdigest, i) => ({
            relative_path: `base/1/${i}`,
            file_size: 9000,
            stored_file_size: 100,
            hexdigest,
            content_b64: null,
          })),
        },
      },
    },
  };
}

describe("catalog: delta hash objects no backup references", () => {
  let dir: string;
  let storage: StorageBackend;
  const store = (): { site: string; prefix: string; storage: StorageBackend } => ({
    site: "site",
    prefix: "site",
    storage,
  });

  async function putControl(name: string, hexdigests: string[]): Promise<void> {
    const tar = buildControlTar({
      metadata: deltaControl(hexdigests),
      pgControl: Buffer.from("ctl"),
      backupLabel: Buffer.from("label"),
    });
    const metadata = dataObjectMetadata({
      encoding: plain,
      format: "pghoard-delta-v2",
      originalSize: tar.length,
      host: "h",
    });
    await storage.storeFileFromMemory(
      basebackupKey("site", controlObjectName(name)),
      await encodeBuffer(tar, plain),
      metadata,
    );
  }

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "orphans-"));
    storage = await createStorage({ storage_type: "local", directory: dir });
    for (const c of ["a", "b", "c", "d"])
      await storage.storeFileFromMemory(deltaObjectKey("site", h(c)), Buffer.from(c), { format: "pghoard-delta-v2" });
    // not a delta backup's object name
    await storage.storeFileFromMemory(deltaObjectKey("site", "not-a-hash"), Buffer.from("x"), {});
    // "d" was written after the threshold (an upload in progress)
    const future = new Date(Date.now() + 3600_000);
    await utimes(path.join(dir, deltaObjectKey("site", h("d"))), future, future);
    await putControl("2024-05-01_10-00_0", [h("a")]);
    await putControl("2024-05-02_10-00_0", [h("a"), h("b")]);
  });
  after(async () => {
    await storage.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("reports unreferenced, old, hash-named objects only, reading each manifest once", async () => {
    const cache: DeltaReferenceCache = new Map();
    const found = await findOrphanDeltaObjects(store(), { olderThan: new Date(), keys: () => undefined, cache });
    assert.deepEqual(
      found.map((o) => o.name),
      [deltaObjectKey("site", h("c"))],
    );
    assert.equal(found[0].size, 1);
    assert.equal(cache.size, 2);
    // A cached manifest is not read again: its object replaced by garbage under the same listing entry.
    const [first] = [...cache.keys()];
    cache.set(first, new Set([h("a"), h("c")]));
    const again = await findOrphanDeltaObjects(store(), { olderThan: new Date(), keys: () => undefined, cache });
    assert.deepEqual(again, []);
    // A backup no longer listed is forgotten.
    await storage.deleteKey(basebackupKey("site", controlObjectName("2024-05-01_10-00_0")));
    await findOrphanDeltaObjects(store(), { olderThan: new Date(), keys: () => undefined, cache });
    assert.equal(cache.size, 1);
  });

  it("reports nothing when a delta control object cannot be read", async () => {
    const tar = buildControlTar({
      metadata: deltaControl([h("c")]),
      pgControl: Buffer.from("ctl"),
      backupLabel: Buffer.from("label"),
    });
    // encrypted with a key this site does not have
    const metadata = {
      ...dataObjectMetadata({ encoding: plain, format: "pghoard-delta-v2", originalSize: tar.length, host: "h" }),
      "encryption-key-id": "missing",
    };
    const key = basebackupKey("site", controlObjectName("2024-05-03_10-00_0"));
    await storage.storeFileFromMemory(key, tar, metadata);
    await assert.rejects(findOrphanDeltaObjects(store(), { olderThan: new Date(), keys: () => undefined }));
    await storage.deleteKey(key);
    // a non-delta control object is not read at all
    await storage.storeFileFromMemory(key, Buffer.from("not a tar"), { format: "pghoard-bb-v2" });
    const found = await findOrphanDeltaObjects(store(), { olderThan: new Date(), keys: () => undefined });
    assert.deepEqual(
      found.map((o) => o.name),
      [deltaObjectKey("site", h("c"))],
    );
  });

  it("the leftover clean-up deletes them and a local store's objects whose sidecar a crash cut off", async () => {
    const deltaDir = path.join(dir, "site", "basebackup_delta");
    // data renamed into place, sidecar never written: old one goes, one newer than the start stays
    await writeFile(path.join(deltaDir, h("e")), "eeee");
    await utimes(path.join(deltaDir, h("e")), new Date(Date.now() - 60_000), new Date(Date.now() - 60_000));
    await writeFile(path.join(deltaDir, h("f")), "ffff");
    const future = new Date(Date.now() + 3600_000);
    await utimes(path.join(deltaDir, h("f")), future, future);
    await writeFile(path.join(deltaDir, "not-a-hash-either"), "x");
    await utimes(path.join(deltaDir, "not-a-hash-either"), new Date(0), new Date(0));
    const spool = path.join(dir, "spool");
    await mkdir(path.join(spool, "site", "basebackup_incoming", "2024-05-04_10-00_0"), { recursive: true });
    const lines: string[] = [];
    const log = {
      debug: () => undefined,
      info: (m: string) => lines.push(m),
      warn: () => undefined,
      error: () => undefined,
    };
    const result = await removeInterruptedBackupLeftovers({
      config: { backup_location: spool },
      site: "site",
      siteConfig: { prefix: "site", encryption_keys: {} } as unknown as SiteConfig, // the keys it reads
      storage,
      startedAt: new Date(),
      log,
    });
    assert.deepEqual(result.deltaObjects, { count: 2, bytes: 1 + 4 });
    for (const c of ["c", "e"]) assert.ok(!existsSync(path.join(deltaDir, h(c))), c);
    for (const c of ["a", "b", "d", "f"]) assert.ok(existsSync(path.join(deltaDir, h(c))), c);
    for (const name of ["not-a-hash", "not-a-hash-either"]) assert.ok(existsSync(path.join(deltaDir, name)), name);
    assert.equal(result.workDirs.length, 1);
    assert.equal(lines.filter((l) => l.includes("delta objects")).length, 1);
    assert.match(lines.join("\n"), /Deleted 2 delta objects \(5 bytes\) from site\/basebackup_delta that no completed/);
  });
});
