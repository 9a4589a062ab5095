/**
 * Upstream pghoard's own test data (test/fixtures/upstream-testdata) restores to the file hashes
 * recorded by running upstream's BasebackupFetcher on it (decoded-ground-truth.json): plain
 * chunk sets, delta hash objects, and a PostgreSQL 10 backup with two tablespaces.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, stat } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";

import { privateKeyLookup, validateConfig } from "../../src/config/index.js";
import { FileFormatPool } from "../../src/fileformat/index.js";
import { fetchAll, ProgressTracker, RestoreTarget, type RestoreItem } from "../../src/restore/index.js";
import { createStorage } from "../../src/storage/index.js";
import { fixturesDir } from "../helpers/paths.js";
import { directoryManifest, sortManifest, type ManifestEntry } from "./helpers.js";

const dataDir = path.join(fixturesDir, "upstream-testdata");
const skip = existsSync(path.join(dataDir, "decoded-ground-truth.json"))
  ? false
  : "test/fixtures/upstream-testdata is missing";

interface GroundTruthSet {
  config_site: string;
  objects: Array<{ file: string; decoded_size: number }>;
  restored_pgdata_manifest: ManifestEntry[];
  restored_tablespaces: Record<string, { oid: number; files: ManifestEntry[] }>;
}

describe("restore of upstream's test data", { skip }, () => {
  let truth: Record<string, GroundTruthSet>;
  let pool: FileFormatPool;
  let work: string;

  before(async () => {
    truth = JSON.parse(await readFile(path.join(dataDir, "decoded-ground-truth.json"), "utf8")) as Record<
      string,
      GroundTruthSet
    >;
    pool = new FileFormatPool(2);
    work = await mkdtemp(path.join(os.tmpdir(), "restore-upstream-"));
  });
  after(async () => {
    await pool.close();
    await rm(work, { recursive: true, force: true });
  });

  async function restoreSet(
    set: string,
    kind: "tar-object" | "file-object",
    tablespaces: Record<string, { oid: number }> = {},
    /** `sizes`: each object's size for scheduling (default 1); `started`: receives keys as objects are opened. */
    opts: { concurrency?: number; sizes?: Map<string, number>; started?: string[] } = {},
  ): Promise<{ pgdata: string; tsDirs: Record<string, string> }> {
    const raw = JSON.parse(await readFile(path.join(dataDir, "data", set, "config.json"), "utf8")) as Record<
      string,
      unknown
    >;
    const config = validateConfig(raw, { tool: "restore" });
    const site = truth[set].config_site;
    const keys = privateKeyLookup(config.backup_sites[site]);
    const storage = await createStorage({
      storage_type: "local",
      directory: path.join(dataDir, "data", set, "chunks"),
    });
    const getReadStream = storage.getReadStream.bind(storage);
    // the real local store, recording the order in which objects are opened
    storage.getReadStream = (key: string) => {
      opts.started?.push(key);
      return getReadStream(key);
    };
    const files = (await readdir(path.join(dataDir, "data", set, "chunks")))
      .filter((f) => !f.endsWith(".metadata"))
      .sort();
    const items: RestoreItem[] = files.map((file) =>
      kind === "tar-object"
        ? { kind, key: file, size: opts.sizes?.get(file) ?? 1, storage }
        : { kind, key: file, size: opts.sizes?.get(file) ?? 1, storage, relativePath: file },
    );
    const pgdata = path.join(work, set, "pgdata");
    const tsDirs: Record<string, string> = {};
    const tsTargets = Object.entries(tablespaces).map(([name, info]) => {
      tsDirs[name] = path.join(work, set, `ts-${name}`);
      return { name, oid: info.oid, path: tsDirs[name] };
    });
    for (const dir of [pgdata, ...Object.values(tsDirs)]) await mkdir(dir, { recursive: true });
    const target = new RestoreTarget(pgdata, tsTargets);
    await fetchAll({
      target,
      items,
      concurrency: opts.concurrency ?? 3,
      progress: new ProgressTracker(items),
      createDecodeStream: (metadata) => {
        const keyId = metadata["encryption-key-id"];
        return pool.createDecodeStream(metadata, keyId ? (keys(keyId) ?? null) : null);
      },
    });
    await target.finish();
    await storage.close();
    return { pgdata, tsDirs };
  }

  for (const set of ["basebackup", "basebackup_one_chunk"]) {
    it(`${set}: four/one encrypted snappy chunks restore to the recorded files`, async () => {
      const { pgdata } = await restoreSet(set, "tar-object");
      assert.deepEqual(await directoryManifest(pgdata), sortManifest(truth[set].restored_pgdata_manifest));
    });
  }

  it("basebackup: the largest object is started first, so no worker is left alone with it at the end", async () => {
    const chunks = path.join(dataDir, "data", "basebackup", "chunks");
    const files = (await readdir(chunks)).filter((f) => !f.endsWith(".metadata"));
    const sizes = new Map(
      await Promise.all(files.map(async (f) => [f, (await stat(path.join(chunks, f))).size] as const)),
    );
    assert.ok(new Set(sizes.values()).size > 1, "chunks of different sizes");
    const started: string[] = [];
    const { pgdata } = await restoreSet("basebackup", "tar-object", {}, { concurrency: 1, sizes, started });
    assert.deepEqual(
      started,
      [...files].sort((x, y) => sizes.get(y)! - sizes.get(x)!),
    );
    assert.deepEqual(await directoryManifest(pgdata), sortManifest(truth.basebackup.restored_pgdata_manifest));
  });

  it("basebackup_delta: delta-v1 hash objects restore as files", async () => {
    const { pgdata } = await restoreSet("basebackup_delta", "file-object");
    assert.deepEqual(await directoryManifest(pgdata), sortManifest(truth.basebackup_delta.restored_pgdata_manifest));
  });

  it("basebackup_with_ts: tablespace members land in the mapped directories, pg_tblspc links them", async () => {
    const expectedTs = truth.basebackup_with_ts.restored_tablespaces;
    const { pgdata, tsDirs } = await restoreSet("basebackup_with_ts", "tar-object", expectedTs);
    const expected = truth.basebackup_with_ts.restored_pgdata_manifest.map((e) =>
      e.symlink ? { ...e, symlink: tsDirs[/<tablespace (\w+) directory>/.exec(e.symlink)?.[1] ?? ""] } : e,
    );
    assert.deepEqual(await directoryManifest(pgdata), sortManifest(expected));
    for (const [name, info] of Object.entries(expectedTs)) {
      assert.deepEqual(await directoryManifest(tsDirs[name]), sortManifest(info.files), `tablespace ${name}`);
    }
    assert.ok(!existsSync(path.join(pgdata, "tablespaces")) && !existsSync(path.join(pgdata, "pgdata")));
  });
});
