/**
 * A delta backup that fails midway deletes the objects it uploaded, leaves no main object, and
 * stops the backup on the server (a new backup can start right away). A local-tar backup stops
 * the server's backup once its data is read, while chunks still upload, and an upload failing
 * after that still fails it without a control object.
 */
import assert from "node:assert/strict";
import { readdir } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import type { PghoardConfig } from "../../src/config/types.js";
import {
  DirectUploader,
  runBasebackup,
  type BasebackupContext,
  type UploadRequest,
} from "../../src/basebackup/index.js";
import { FileFormatPool } from "../../src/fileformat/index.js";
import { createStorage } from "../../src/storage/index.js";
import type { StorageBackend } from "../../src/storage/types.js";
import { makeTempDir, startCluster, type PgCluster } from "../helpers/pgcluster.js";

const quiet = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };

async function published(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).filter((n) => !n.endsWith(".metadata") && !n.startsWith("."));
  } catch {
    return [];
  }
}

/** A backup context on `cluster` storing into `<dir>/store`, site `s` with `siteExtra`. */
async function backupContext(
  cluster: PgCluster,
  dir: string,
  pool: FileFormatPool,
  siteExtra: Record<string, unknown>,
): Promise<{ ctx: BasebackupContext; storage: StorageBackend }> {
  const site = {
    prefix: "s",
    active: true,
    active_backup_mode: "archive_command",
    pg_data_directory: cluster.dataDir,
    nodes: [cluster.connectionInfo()],
    encryption_key_id: null,
    encryption_keys: {},
    object_storage: { storage_type: "local", directory: path.join(dir, "store") },
    ...siteExtra,
  };
  const config = {
    backup_location: path.join(dir, "spool"),
    backup_sites: { s: site },
    compression: { algorithm: "snappy", level: 0 },
  } as unknown as PghoardConfig;
  const storage = await createStorage(site.object_storage as PghoardConfig["backup_sites"][string]["object_storage"]);
  const ctx: BasebackupContext = {
    config,
    site: "s",
    node: site.nodes[0],
    pgVersion: 150000,
    storage,
    pool,
    decision: {},
    log: quiet,
  };
  return { ctx, storage };
}

describe("failed backups", { timeout: 300_000 }, () => {
  let cluster: PgCluster;
  let pool: FileFormatPool;
  let storage: StorageBackend | undefined;
  before(async () => {
    cluster = await startCluster();
    await cluster.pgbench(["-i", "-s", "2", "-q"]);
    pool = new FileFormatPool(2);
  });
  after(async () => {
    await storage?.close();
    await pool?.close();
    await cluster?.destroy();
  });

  it("delta: removes the objects it uploaded and releases the server's backup", async () => {
    const dir = await makeTempDir("bb-failure");
    let ctx: BasebackupContext;
    ({ ctx, storage } = await backupContext(cluster, dir, pool, {
      basebackup_mode: "delta",
      basebackup_threads: 1,
      basebackup_chunks_in_progress: 2,
      basebackup_chunk_size: 1024 * 1024 * 1024,
      basebackup_delta_mode_min_delta_file_size: 64 * 1024,
      basebackup_delta_mode_chunk_size: 1024 * 1024,
    }));
    let uploads = 0;
    const direct = new DirectUploader(ctx);
    ctx.uploader = {
      async upload(request: UploadRequest) {
        await direct.upload(request);
        uploads += 1;
        if (uploads === 4) throw new Error("injected upload failure");
      },
    };
    await assert.rejects(runBasebackup(ctx), /injected upload failure/);
    assert.ok(uploads >= 4);
    assert.deepEqual(await published(path.join(dir, "store", "s", "basebackup_delta")), []);
    assert.deepEqual(await published(path.join(dir, "store", "s", "basebackup")), []);
    const bundleDirs = await published(path.join(dir, "store", "s", "basebackup_delta_chunk"));
    for (const d of bundleDirs)
      assert.deepEqual(await published(path.join(dir, "store", "s", "basebackup_delta_chunk", d)), []);
    // the session's backup was stopped: the next one starts and completes
    ctx.uploader = undefined;
    const result = await runBasebackup(ctx);
    assert.equal(result.metadata.format, "pghoard-delta-v2");
    assert.deepEqual(
      await published(path.join(dir, "spool", "s", "basebackup_incoming")),
      [],
      "work directories are removed",
    );
  });

  it("local-tar: stops once the data is read; an upload failing after the stop fails it, no control object", async () => {
    const dir = await makeTempDir("bb-stop-early");
    await storage?.close();
    let ctx: BasebackupContext;
    ({ ctx, storage } = await backupContext(cluster, dir, pool, {
      basebackup_mode: "local-tar",
      basebackup_threads: 2,
      // a few chunks, all of them on disk at once (none waits for an upload to be read)
      basebackup_chunks_in_progress: 8,
      basebackup_chunk_size: 8 * 1024 * 1024,
    }));
    // The backup session's last statement is the end segment switch once pg_backup_stop returned.
    const stopped = async (): Promise<boolean> =>
      (
        await cluster.query<{ n: string }>(
          "SELECT count(*)::text AS n FROM pg_stat_activity WHERE query = 'SELECT pg_switch_wal()' AND state = 'idle'",
        )
      )[0].n !== "0";
    const direct = new DirectUploader(ctx);
    let chunkUploads = 0;
    ctx.uploader = {
      async upload(request: UploadRequest) {
        if (request.filetype !== "basebackup_chunk") return await direct.upload(request);
        chunkUploads += 1;
        // Held until the server's backup is stopped: before, the stop waited for every upload.
        const deadline = Date.now() + 20_000;
        while (!(await stopped())) {
          if (Date.now() > deadline) throw new Error("the backup was not stopped while its chunks uploaded");
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
        throw new Error("injected upload failure after the stop");
      },
    };
    await assert.rejects(runBasebackup(ctx), /injected upload failure after the stop/);
    assert.ok(chunkUploads >= 1);
    assert.deepEqual(await published(path.join(dir, "store", "s", "basebackup")), []);
    assert.deepEqual(await published(path.join(dir, "spool", "s", "basebackup_incoming")), []);
  });
});
