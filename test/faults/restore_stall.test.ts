/**
 * Restore stall detection (cli.md get-basebackup step 6): a download that makes no byte progress
 * for the stall timeout aborts the round and retries it with a doubled timeout; when every round
 * stalls the restore fails with "Download stalled despite retries". The objects are upstream's
 * encrypted snappy chunk set (test/fixtures/upstream-testdata) in a real S3 server (Swift's S3
 * API), read by the restore's object workers through test/helpers/fault_proxy.ts, which holds a
 * reply mid-object. The S3 client has no read timeout here, so only the stall detection can end a
 * held download.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";

import { privateKeyLookup, validateConfig } from "../../src/config/index.js";
import { fetchAll, ProgressTracker, RestoreTarget, type RestoreItem } from "../../src/restore/index.js";
import { ObjectWorkers } from "../../src/restore/workers.js";
import { createStorage, type ObjectStorageConfig } from "../../src/storage/index.js";
import type { Metadata } from "../../src/storage/types.js";
import { FaultProxy, type Fault } from "../helpers/fault_proxy.js";
import { fixturesDir } from "../helpers/paths.js";
import { directoryManifest, sortManifest, type ManifestEntry } from "../restore/helpers.js";
import { startServer, type TestServer } from "../storage/servers.js";

const setDir = path.join(fixturesDir, "upstream-testdata", "data", "basebackup");
const truthFile = path.join(fixturesDir, "upstream-testdata", "decoded-ground-truth.json");
const skip = existsSync(truthFile) ? false : "test/fixtures/upstream-testdata is missing";

describe("restore download stall detection through a stalling proxy", { skip, timeout: 300_000 }, () => {
  let server: TestServer | { skip: string };
  let work: string;
  let keys: Record<string, string>;
  let expected: ManifestEntry[];
  let files: string[];
  const prefix = `stall-${Date.now()}`;

  const s3Config = (env: Record<string, string | undefined>, port: number): ObjectStorageConfig =>
    ({
      storage_type: "s3",
      region: env.S3_REGION,
      bucket_name: "pghoard-stall",
      aws_access_key_id: env.S3_ACCESS_KEY,
      aws_secret_access_key: env.S3_SECRET_KEY,
      host: "127.0.0.1",
      port,
      is_secure: false,
      prefix,
    }) as ObjectStorageConfig;

  before(async () => {
    work = await mkdtemp(path.join(os.tmpdir(), "restore-stall-"));
    const truth = JSON.parse(await readFile(truthFile, "utf8")) as Record<
      string,
      { config_site: string; restored_pgdata_manifest: ManifestEntry[] }
    >;
    expected = sortManifest(truth.basebackup!.restored_pgdata_manifest);
    const config = validateConfig(JSON.parse(await readFile(path.join(setDir, "config.json"), "utf8")), {
      tool: "restore",
    });
    const lookup = privateKeyLookup(config.backup_sites[truth.basebackup!.config_site]!);
    keys = {};
    files = (await readdir(path.join(setDir, "chunks"))).filter((f) => !f.endsWith(".metadata")).sort();
    server = await startServer("swift");
    if ("skip" in server) return;
    // The chunks and their metadata into the real S3 server, straight (not through the proxy).
    const store = await createStorage(s3Config(server.env, Number(new URL(server.env.S3_ENDPOINT!).port)));
    for (const file of files) {
      const data = await readFile(path.join(setDir, "chunks", file));
      const metadata = JSON.parse(await readFile(path.join(setDir, "chunks", `${file}.metadata`), "utf8")) as Metadata;
      const keyId = metadata["encryption-key-id"];
      if (keyId) keys[keyId] = lookup(keyId)!;
      await store.storeFileFromMemory(file, data, metadata);
    }
    await store.close();
  });

  after(async () => {
    if (server && "env" in server) await server.stop();
    await rm(work, { recursive: true, force: true });
  });

  /** Restores the chunk set through a proxy drawing each connection's fault from `plan`. */
  async function restoreThrough(
    plan: (proxy: FaultProxy) => Fault,
    stallTimeoutMs: number,
  ): Promise<{ proxy: FaultProxy; pgdata: string; error?: Error }> {
    assert.ok(server && "env" in server);
    const proxy: FaultProxy = await new FaultProxy(
      { host: "127.0.0.1", port: Number(new URL(server.env.S3_ENDPOINT!).port) },
      () => plan(proxy),
    ).start();
    const storageConfig = s3Config(server.env, proxy.port);
    const pgdata = path.join(work, `pgdata-${proxy.port}`);
    await mkdir(pgdata, { recursive: true });
    const target = new RestoreTarget(pgdata, []);
    // Unused: every item is restored by the object workers (as pghoard_restore does).
    const storage = await createStorage(storageConfig);
    const items: RestoreItem[] = files.map((file) => ({
      kind: "tar-object",
      key: file,
      size: 1,
      storage,
      storageConfig,
    }));
    const workers = new ObjectWorkers(1, target, keys);
    let error: Error | undefined;
    try {
      await fetchAll({
        target,
        items,
        concurrency: 1,
        workers,
        progress: new ProgressTracker(items),
        stallTimeoutMs,
        createDecodeStream: () => {
          throw new Error("objects are decoded in the workers");
        },
      });
      await target.finish();
    } catch (err) {
      error = err as Error;
    } finally {
      await workers.close();
      await storage.close();
      await proxy.stop();
    }
    return { proxy, pgdata, ...(error ? { error } : {}) };
  }

  it("a download held mid-object is aborted and retried, and the restore completes", async (t) => {
    if ("skip" in server) return t.skip(server.skip);
    // Until one reply was held, each connection's reply is held after 1000 bytes (the headers and
    // part of the first, largest chunk; the client's shorter requests pass) for longer than the
    // test's timeout: only the stall detection ends it.
    const { proxy, pgdata, error } = await restoreThrough(
      (p) => (p.injected.stall === 0 ? { kind: "stall", afterBytes: 1000, ms: 600_000 } : { kind: "none" }),
      1000,
    );
    assert.equal(error, undefined, error?.stack);
    assert.equal(proxy.injected.stall, 1);
    assert.deepEqual(await directoryManifest(pgdata), expected);
  });

  it("a download that stalls in every round fails with the stall message", async (t) => {
    if ("skip" in server) return t.skip(server.skip);
    // 6 rounds (the minimum of max(6, total-size-enc / 10 GiB)) of 100 ms doubling: about 7 s.
    // (A round may also end before its reply is held: starting a worker counts as no progress.)
    const { proxy, error } = await restoreThrough(() => ({ kind: "stall", afterBytes: 1000, ms: 600_000 }), 100);
    assert.ok(error, "the restore succeeded");
    assert.match(
      error.message,
      /Backup download\/extraction failed with 1 errors: Download stalled despite retries, 4 objects not restored/,
    );
    assert.ok(proxy.injected.stall >= 1);
  });
});
