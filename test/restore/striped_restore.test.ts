/**
 * The restore's object workers decode one large snappy object on two threads: the worker that
 * owns the object hands runs of it to the other worker (src/restore/workers.ts →
 * striped_decode.ts). Real worker threads, a real local object store, an encrypted snappy tar as
 * a backup chunk holds it; the restored file is byte-exact either way.
 */
import assert from "node:assert/strict";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdir, readFile, rm } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import tarStream from "tar-stream";

import { encodeBuffer, encodingMetadata, type EncodeOptions } from "../../src/fileformat/index.js";
import { createStorage, type ObjectStorageConfig } from "../../src/storage/index.js";
import { RestoreTarget } from "../../src/restore/target.js";
import { ObjectWorkers } from "../../src/restore/workers.js";
import { makeTempDir } from "../helpers/pgcluster.js";
import { pageLikeData } from "../fileformat/support.js";

const MiB = 1024 * 1024;
const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
const opts: EncodeOptions = {
  algorithm: "snappy",
  level: 0,
  encryptionKeyId: "k1",
  publicKeyPem: publicKey.export({ type: "spki", format: "pem" }).toString(),
};
const keys = { k1: privateKey.export({ type: "pkcs8", format: "pem" }).toString() };
const KEY = "site/basebackup_chunk/base_0000.pghoard";

let work: string;
let storageConfig: ObjectStorageConfig;
const relation = Buffer.concat([pageLikeData(24 * MiB, 7), randomBytes(2 * MiB)]);

async function tarOf(files: Record<string, Buffer>): Promise<Buffer> {
  const pack = tarStream.pack();
  const out: Buffer[] = [];
  pack.on("data", (d: unknown) => void out.push(d as Buffer));
  const ended = new Promise<void>((resolve) => pack.on("end", () => resolve()));
  for (const [name, data] of Object.entries(files)) {
    await new Promise<void>((resolve, reject) =>
      pack.entry({ name, size: data.length, mode: 0o600 }, data, (err) => (err ? reject(err) : resolve())),
    );
  }
  pack.finalize();
  await ended;
  return Buffer.concat(out);
}

before(async () => {
  work = await makeTempDir("striped-restore");
  storageConfig = { storage_type: "local", directory: path.join(work, "store") } as ObjectStorageConfig;
  const tar = await tarOf({ "pgdata/base/1/16384": relation, "pgdata/PG_VERSION": Buffer.from("15\n") });
  const storage = await createStorage(storageConfig);
  await storage.storeFileFromMemory(KEY, await encodeBuffer(tar, opts), {
    ...encodingMetadata(opts),
    format: "pghoard-bb-v2",
    "original-file-size": String(tar.length),
  });
});
after(async () => {
  await rm(work, { recursive: true, force: true });
});

async function restoreWith(workerCount: number): Promise<{ stripedRuns: number; restored: Buffer }> {
  const pgdata = path.join(work, `pgdata-${workerCount}`);
  await mkdir(pgdata, { mode: 0o700 });
  const target = new RestoreTarget(pgdata);
  const workers = new ObjectWorkers(workerCount, target, keys);
  try {
    await workers.run({
      job: { kind: "tar-object", key: KEY },
      storageConfig,
      onBytes: () => undefined,
      signal: new AbortController().signal,
    });
  } finally {
    await workers.close();
  }
  return { stripedRuns: workers.stripedRuns, restored: await readFile(path.join(pgdata, "base/1/16384")) };
}

describe("restore: one large snappy object on two worker threads", () => {
  it("the second worker decodes part of the object, and the file is byte-exact", async () => {
    const { stripedRuns, restored } = await restoreWith(2);
    assert.ok(stripedRuns > 0, `the helper worker decoded runs (${stripedRuns})`);
    assert.ok(restored.equals(relation));
  });

  it("with one worker the object is decoded by that worker alone, byte-exact", async () => {
    const { stripedRuns, restored } = await restoreWith(1);
    assert.equal(stripedRuns, 0);
    assert.ok(restored.equals(relation));
  });
});
