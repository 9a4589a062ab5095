/**
 * Retention against stores written by the real upstream pghoard (shared fixtures): listing,
 * reading upstream control objects, deleting a v2 backup with its chunks, and the WAL deletion
 * walk stepping back to the previous timeline at a gap (operations.md §4.4).
 */
import assert from "node:assert/strict";
import { cp, mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, describe, it } from "node:test";
import type { SiteConfig } from "../../src/config/types.js";
import {
  deleteBasebackup,
  deleteWalBefore,
  listBasebackups,
  refreshAndApplyRetention,
} from "../../src/basebackup/retention.js";
import { readControlMetadata } from "../../src/catalog/index.js";
import { createStorage } from "../../src/storage/index.js";
import type { StorageBackend } from "../../src/storage/types.js";
import { hasShared, sharedDir } from "../helpers/paths.js";

const SET = "snappy-enc-localtar";
const setDir = path.join(sharedDir, "fixtures", "pghoard-made", SET);
const quiet = {
  debug: () => undefined,
  info: () => undefined,
  warn: () => undefined,
  error: (m: string) => assert.fail(m),
};

describe("retention on an upstream-written store", { skip: hasShared ? false : "shared fixtures absent" }, () => {
  const cleanup: string[] = [];
  after(async () => {
    for (const dir of cleanup) await rm(dir, { recursive: true, force: true });
  });

  async function copyStore(): Promise<{ storage: StorageBackend; site: SiteConfig; dir: string }> {
    const dir = await mkdtemp(path.join(os.tmpdir(), "bb-upstream-store-"));
    cleanup.push(dir);
    await cp(path.join(setDir, "store"), dir, { recursive: true });
    const config = JSON.parse(await readFile(path.join(setDir, "pghoard.json"), "utf8")) as {
      backup_sites: Record<string, Record<string, unknown>>;
    };
    const upstreamSite = config.backup_sites[SET];
    const site = {
      prefix: SET,
      active: true,
      moved_from: [],
      encryption_key_id: upstreamSite.encryption_key_id,
      encryption_keys: upstreamSite.encryption_keys,
      basebackup_count: 1,
      basebackup_count_min: 1,
      basebackup_interval_hours: null,
      object_storage: { storage_type: "local", directory: dir },
    } as unknown as SiteConfig;
    const storage = await createStorage(site.object_storage);
    return { storage, site, dir };
  }

  it("lists and reads upstream control objects, deletes a v2 backup with all its chunks", async () => {
    const { storage, site, dir } = await copyStore();
    const backups = await listBasebackups(storage, site, SET);
    assert.equal(backups.length, 1);
    const b = backups[0];
    assert.equal(b.metadata.format, "pghoard-bb-v2");
    assert.equal(b.backupReason, "requested");
    const meta = await readControlMetadata(
      storage,
      `${SET}/basebackup/${b.name}`,
      b.metadata,
      (id) => site.encryption_keys[id]?.private as string | undefined,
    );
    const chunks = meta.chunks as Array<{ chunk_filename: string }>;
    assert.ok(chunks.length > 1);
    const deleted = await deleteBasebackup({
      site: { name: SET, config: site, storage },
      backup: b,
      remaining: [],
      deps: { log: quiet },
    });
    assert.equal(deleted.length, chunks.length + 1);
    assert.deepEqual(await listBasebackups(storage, site, SET), []);
    const left = await readdir(path.join(dir, SET, "basebackup_chunk", b.name.replace(".00000000.pghoard", "")));
    assert.deepEqual(
      left.filter((n) => !n.startsWith(".")),
      [],
    );
  });

  it("walks WAL backwards and steps to the previous timeline once at a gap", async () => {
    const { storage, site } = await copyStore();
    const before = (await storage.list(`${SET}/xlog`)).map((o) => path.posix.basename(o.name)).sort();
    assert.ok(before.includes("000000020000000000000007") && before.includes("000000010000000000000007"));
    const deleted = await deleteWalBefore({
      needed: "000000020000000000000008",
      sites: [{ name: SET, config: site, storage }],
      pgVersion: 150018,
      deps: { log: quiet },
    });
    // 2/07 exists; 2/06 does not -> same position on timeline 1, then backwards until the gap
    assert.deepEqual(deleted, [
      "000000020000000000000007",
      "000000010000000000000006",
      "000000010000000000000005",
      "000000010000000000000004",
      "000000010000000000000003",
    ]);
    const after = (await storage.list(`${SET}/xlog`)).map((o) => path.posix.basename(o.name)).sort();
    assert.deepEqual(
      after,
      before.filter((n) => !deleted.includes(n)),
    );
    // timeline history files are never touched
    assert.equal((await storage.list(`${SET}/timeline`)).length, 1);
  });

  it("keeps everything while a preservation request protects the only backup", async () => {
    const { storage, site } = await copyStore();
    const [b] = await listBasebackups(storage, site, SET);
    const until = "2999-01-01 00:00:00+00:00";
    await storage.storeFileFromMemory(`${SET}/preservation_request/${b.name}_${until}`, Buffer.alloc(0), {
      "preserve-backup": b.name,
      "preserve-until": until,
    });
    const res = await refreshAndApplyRetention({
      sites: [{ name: SET, config: { ...site, basebackup_count: 0 } as SiteConfig, storage }],
      deps: { log: quiet },
    });
    assert.deepEqual(res.deleted, []);
    assert.equal(res.remaining[0].preserveUntil?.getUTCFullYear(), 2999);
  });
});
