/**
 * A delta backup that fails midway deletes the objects it uploaded, leaves no main object, and
 * stops the backup on the server (a new backup can start right away).
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

describe("failed delta backup", { timeout: 300_000 }, () => {
  let cluster: PgCluster;
  let pool: FileFormatPool;
  let storage: StorageBackend;
  let dir: string;
  before(async () => {
    cluster = await startCluster();
    await cluster.pgbench(["-i", "-s", "2", "-q"]);
    pool = new FileFormatPool(2);
    dir = await makeTempDir("bb-failure");
  });
  after(async () => {
    await pool?.close();
    await cluster?.destroy();
  });

  it("removes the objects it uploaded and releases the server's backup", async () => {
    const site = {
      prefix: "s",
      active: true,
      active_backup_mode: "archive_command",
      basebackup_mode: "delta",
      pg_data_directory: cluster.dataDir,
      nodes: [cluster.connectionInfo()],
      encryption_key_id: null,
      encryption_keys: {},
      basebackup_threads: 1,
      basebackup_chunks_in_progress: 2,
      basebackup_chunk_size: 1024 * 1024 * 1024,
      basebackup_delta_mode_min_delta_file_size: 64 * 1024,
      basebackup_delta_mode_chunk_size: 1024 * 1024,
      object_storage: { storage_type: "local", directory: path.join(dir, "store") },
    };
    const config = {
      backup_location: path.join(dir, "spool"),
      backup_sites: { s: site },
      compression: { algorithm: "snappy", level: 0 },
    } as unknown as PghoardConfig;
    storage = await createStorage(site.object_storage as PghoardConfig["backup_sites"][string]["object_storage"]);
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
});
