/**
 * Delta deduplication (a second backup after a small change uploads only the changed files) and
 * retention on a real cluster: basebackup_count 2, a preservation request keeping a backup past
 * its time, deletion of exactly the WAL no kept backup needs, chunk and refcounted delta object
 * deletion.
 */
import assert from "node:assert/strict";
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, describe, it } from "node:test";
import { decodeStoredObject, switchWal, waitArchived } from "../daemon/helpers.js";
import { findTarMember, TAR_METADATA_FILENAME } from "../../src/catalog/index.js";
import { listStore, reloadSite, requestBackup, startScenario, type Scenario, type StoredEntry } from "./helpers.js";

const only = process.env.BB_MODES?.split(",");

interface Manifest {
  snapshot_result: {
    state: {
      files: Array<{
        relative_path: string;
        hexdigest: string;
        file_size: number;
        should_be_bundled: boolean;
        content_b64: string | null;
      }>;
    };
  };
}

async function controlJson(s: Scenario, entry: StoredEntry): Promise<Record<string, unknown>> {
  const { data } = await decodeStoredObject(s.env.storageDir, path.join(s.site, "basebackup", entry.name), {
    [s.keyId]: s.keys.privatePem,
  });
  const member = findTarMember(data, TAR_METADATA_FILENAME);
  assert.ok(member);
  return JSON.parse(member.toString("utf8")) as Record<string, unknown>;
}

async function sum(list: StoredEntry[]): Promise<number> {
  return list.reduce((a, e) => a + e.size, 0);
}

describe(
  "delta backups upload only changed files",
  { timeout: 600_000, skip: only && !only.includes("delta2") ? "BB_MODES" : false },
  () => {
    let s: Scenario | undefined;
    after(async () => s?.cleanup());

    it("second backup after a small change uploads only the changed relation files", async () => {
      s = await startScenario({
        site: "bb-delta2",
        siteExtra: {
          basebackup_mode: "delta",
          basebackup_delta_mode_min_delta_file_size: 64 * 1024,
          basebackup_count: 10,
        },
        configExtra: { compression: { algorithm: "snappy", thread_count: 2 } },
      });
      await s.cluster.pgbench(["-i", "-s", "3", "-q"]);
      await s.cluster.query("CREATE TABLE small_t (id int, v text)");
      await s.cluster.query("INSERT INTO small_t SELECT i, repeat('x', 200) FROM generate_series(1, 2000) i");
      await s.cluster.query("VACUUM ANALYZE");
      await s.cluster.query("CHECKPOINT");
      const first = await requestBackup(s);
      const objectsAfterFirst = await listStore(s.env, s.site, "basebackup_delta");
      const m1 = (await controlJson(s, first)).manifest as Manifest;
      const accountsFile = (
        await s.cluster.query<{ p: string }>("SELECT pg_relation_filepath('pgbench_accounts') AS p")
      )[0].p;
      const accounts1 = m1.snapshot_result.state.files.find((f) => f.relative_path === accountsFile);
      assert.ok(accounts1?.hexdigest, "pgbench_accounts is stored as its own delta object");
      assert.ok(objectsAfterFirst.some((o) => o.name === accounts1.hexdigest));
      assert.equal(objectsAfterFirst.find((o) => o.name === accounts1.hexdigest)?.metadata.format, "pghoard-delta-v2");

      await s.cluster.query("INSERT INTO small_t SELECT i, repeat('y', 200) FROM generate_series(2001, 2100) i");
      await s.cluster.query("CHECKPOINT");
      const second = await requestBackup(s);
      const objectsAfterSecond = await listStore(s.env, s.site, "basebackup_delta");
      const before = new Set(objectsAfterFirst.map((o) => o.name));
      const added = objectsAfterSecond.filter((o) => !before.has(o.name));
      const m2 = (await controlJson(s, second)).manifest as Manifest;
      const smallFile = (await s.cluster.query<{ p: string }>("SELECT pg_relation_filepath('small_t') AS p"))[0].p;
      const small2 = m2.snapshot_result.state.files.find((f) => f.relative_path === smallFile);
      const accounts2 = m2.snapshot_result.state.files.find((f) => f.relative_path === accountsFile);
      assert.equal(accounts2?.hexdigest, accounts1.hexdigest, "unchanged file keeps its digest");
      assert.ok(small2?.hexdigest && added.some((o) => o.name === small2.hexdigest), "the changed table was uploaded");
      const firstBytes = await sum(objectsAfterFirst);
      const addedBytes = await sum(added);
      assert.ok(
        added.length < objectsAfterFirst.length / 2,
        `only a few objects are new: ${added.length} of ${objectsAfterFirst.length}`,
      );
      assert.ok(
        addedBytes < firstBytes * 0.2,
        `uploaded ${addedBytes} bytes of delta objects vs ${firstBytes} for the first backup`,
      );
      // every digest either backup references exists in the store
      const stored = new Set(objectsAfterSecond.map((o) => o.name));
      for (const f of [...m1.snapshot_result.state.files, ...m2.snapshot_result.state.files]) {
        if (f.hexdigest) assert.ok(stored.has(f.hexdigest), `${f.relative_path} -> ${f.hexdigest}`);
      }

      // Retention down to one backup: deleting the first two removes only the hash objects the kept
      // third backup does not reference (small_t changed again), never a shared one (pgbench_accounts).
      const small1 = m1.snapshot_result.state.files.find((f) => f.relative_path === smallFile);
      assert.ok(small1?.hexdigest && small1.hexdigest !== small2.hexdigest);
      await reloadSite(s.env, s.daemon, s.site, (c) => {
        c.basebackup_count = 1;
      });
      await s.cluster.query("INSERT INTO small_t SELECT i, repeat('w', 200) FROM generate_series(2101, 2200) i");
      await s.cluster.query("CHECKPOINT");
      const third = await requestBackup(s);
      assert.deepEqual(
        (await listStore(s.env, s.site, "basebackup")).map((e) => e.name),
        [third.name],
      );
      const m3 = (await controlJson(s, third)).manifest as Manifest;
      const referenced = new Set(m3.snapshot_result.state.files.map((f) => f.hexdigest).filter(Boolean));
      const storedAfter = new Set((await listStore(s.env, s.site, "basebackup_delta")).map((o) => o.name));
      assert.ok(storedAfter.has(accounts1.hexdigest), "the shared object stays");
      for (const digest of referenced) assert.ok(storedAfter.has(digest), `referenced ${digest} kept`);
      for (const digest of storedAfter) assert.ok(referenced.has(digest), `unreferenced ${digest} deleted`);
      assert.ok(!storedAfter.has(small1.hexdigest) && !storedAfter.has(small2.hexdigest));
    });
  },
);

describe("retention", { timeout: 600_000, skip: only && !only.includes("retention") ? "BB_MODES" : false }, () => {
  let s: Scenario | undefined;
  after(async () => s?.cleanup());

  async function moreWal(): Promise<void> {
    await s!.cluster.query("INSERT INTO filler SELECT i, repeat('z', 500) FROM generate_series(1, 2000) i");
    const last = await switchWal(s!.cluster);
    await waitArchived(s!.cluster, last);
  }

  it("keeps basebackup_count backups, honours preservation requests and deletes exactly the WAL no kept backup needs", async () => {
    s = await startScenario({
      site: "bb-retention",
      siteExtra: { basebackup_mode: "local-tar", basebackup_count: 2, basebackup_chunk_size: 2 * 1024 * 1024 },
      configExtra: { compression: { algorithm: "snappy", thread_count: 2 } },
    });
    await s.cluster.query("CREATE TABLE filler (id int, v text)");
    await s.cluster.query("INSERT INTO filler SELECT i, repeat('z', 500) FROM generate_series(1, 5000) i");
    await moreWal();
    const b1 = await requestBackup(s);
    await moreWal();
    const b2 = await requestBackup(s);
    await moreWal();
    const b1Chunks = ((await controlJson(s, b1)).chunks as Array<{ chunk_filename: string }>).map(
      (c) => c.chunk_filename,
    );
    assert.ok(b1Chunks.length >= 2, "several chunks");
    const walBefore3 = (await listStore(s.env, s.site, "xlog")).map((e) => e.name);

    // third backup with basebackup_count 2: the oldest goes, with exactly the WAL only it needed
    const b3 = await requestBackup(s);
    const after3 = await listStore(s.env, s.site, "basebackup");
    assert.deepEqual(
      after3.map((e) => e.name),
      [b2.name, b3.name].sort(),
    );
    const needed = b2.metadata["start-wal-segment"];
    const walAfter3 = (await listStore(s.env, s.site, "xlog")).map((e) => e.name);
    assert.ok(
      walBefore3.some((w) => w < needed),
      "there was WAL to delete",
    );
    assert.deepEqual(
      walAfter3.filter((w) => walBefore3.includes(w)),
      walBefore3.filter((w) => w >= needed),
      "WAL before the oldest kept backup's start segment is deleted, everything from it on is kept",
    );
    assert.deepEqual(
      await listStore(s.env, s.site, "basebackup_chunk", b1.name.replace(".00000000.pghoard", "")),
      [],
      "chunks of the deleted backup are gone",
    );
    assert.ok(
      (await listStore(s.env, s.site, "basebackup_chunk", b2.name.replace(".00000000.pghoard", ""))).length >= 2,
    );

    // a preservation request keeps b2 past its time: the fourth backup deletes nothing
    const until = new Date(Date.now() + 86400_000)
      .toISOString()
      .replace("T", " ")
      .replace(/\.\d+Z$/, "+00:00");
    const reqDir = path.join(s.env.storageDir, s.site, "preservation_request");
    await mkdir(reqDir, { recursive: true });
    const reqFile = path.join(reqDir, `${b2.name}_${until}`);
    await writeFile(reqFile, "");
    await writeFile(`${reqFile}.metadata`, JSON.stringify({ "preserve-backup": b2.name, "preserve-until": until }));
    await moreWal();
    const walBefore4 = (await listStore(s.env, s.site, "xlog")).map((e) => e.name);
    const b4 = await requestBackup(s);
    assert.deepEqual(
      (await listStore(s.env, s.site, "basebackup")).map((e) => e.name),
      [b2.name, b3.name, b4.name].sort(),
    );
    const walAfter4 = (await listStore(s.env, s.site, "xlog")).map((e) => e.name);
    for (const w of walBefore4) assert.ok(walAfter4.includes(w), `WAL ${w} kept while b2 is preserved`);
  });
});
