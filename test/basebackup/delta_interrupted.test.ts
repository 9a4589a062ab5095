/**
 * A daemon SIGKILLed in the middle of a real delta backup under pgbench load: the hash objects
 * it had uploaded (`basebackup_delta/<hexdigest>`, no completed backup references them) are
 * removed by the next start together with its spool work directory and bundles, while every
 * object of the completed delta backup before it stays byte for byte. Restores of that backup and
 * of the next delta backup (which needs some of the removed content again) are byte-exact.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { copyFile, readFile, rm, stat, utimes, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { findTarMember, TAR_METADATA_FILENAME } from "../../src/catalog/index.js";
import { DaemonProcess, decodeStoredObject, httpRequest } from "../daemon/helpers.js";
import { makeTempDir } from "../helpers/pgcluster.js";
import {
  dirEntries as entries,
  installArchiveGate,
  listStore,
  requestBackup,
  runRestore,
  startScenario,
  treeDigest,
  waitUntil,
  type Scenario,
  type StoredEntry,
} from "./helpers.js";

const SITE = "crashdelta";

interface ManifestFile {
  relative_path: string;
  hexdigest: string;
  file_size: number;
  should_be_bundled: boolean;
  content_b64: string | null;
}

async function manifestOf(s: Scenario, entry: StoredEntry): Promise<ManifestFile[]> {
  const { data } = await decodeStoredObject(s.env.storageDir, path.join(SITE, "basebackup", entry.name), {
    [s.keyId]: s.keys.privatePem,
  });
  const member = findTarMember(data, TAR_METADATA_FILENAME);
  assert.ok(member);
  const control = JSON.parse(member.toString("utf8")) as {
    manifest: { snapshot_result: { state: { files: ManifestFile[] } } };
  };
  return control.manifest.snapshot_result.state.files;
}

const hashesOf = (files: ManifestFile[]): Set<string> =>
  new Set(files.filter((f) => f.hexdigest && !f.should_be_bundled).map((f) => f.hexdigest));

/** Restores `entry` with pghoard_restore and checks every hashed and embedded file against its manifest. */
async function restoreExact(s: Scenario, entry: StoredEntry, files: ManifestFile[]): Promise<number> {
  const target = path.join(await makeTempDir("bb-delta-restore"), "data");
  await runRestore([
    "get-basebackup",
    "--config",
    s.env.configPath,
    "--site",
    SITE,
    "--basebackup",
    `${SITE}/basebackup/${entry.name}`,
    "--target-dir",
    target,
  ]);
  let checked = 0;
  for (const f of files) {
    // restore writes its own recovery settings there
    if (f.should_be_bundled || f.relative_path === "postgresql.auto.conf") continue;
    const restored = await readFile(path.join(target, f.relative_path));
    if (f.content_b64 !== null) {
      assert.ok(restored.equals(Buffer.from(f.content_b64, "base64")), `${f.relative_path} differs`);
    } else {
      assert.equal(restored.length, f.file_size, `${f.relative_path} size`);
      assert.equal(createHash("blake2s256").update(restored).digest("hex"), f.hexdigest, `${f.relative_path} differs`);
    }
    checked += 1;
  }
  await rm(path.dirname(target), { recursive: true, force: true });
  return checked;
}

describe("SIGKILL during a delta basebackup", { timeout: 600_000 }, () => {
  let s: Scenario;
  let daemon: DaemonProcess | undefined;
  let gate: string;
  let loadRunning = false;
  let load: Promise<void> = Promise.resolve();

  before(async () => {
    s = await startScenario({
      site: SITE,
      siteExtra: {
        basebackup_mode: "delta",
        // relation files of 64 KiB and more become hash objects
        basebackup_delta_mode_min_delta_file_size: 64 * 1024,
        basebackup_count: 3,
        archive_work_ahead: false, // for the archive gate (below)
      },
    });
    daemon = s.daemon;
    gate = await installArchiveGate(s, "bb-delta-kill-gate");
    await s.cluster.pgbench(["-i", "-s", "2", "-q"]);
    await s.cluster.query("CHECKPOINT");
  });

  after(async () => {
    loadRunning = false;
    await load;
    await daemon?.stop("SIGKILL");
    await s?.cleanup();
  });

  it("the next start removes the orphaned hash objects and keeps the completed backup's", async () => {
    const completed = await requestBackup(s);
    const completedName = completed.name.replace(/\.00000000\.pghoard$/, "");
    const completedFiles = await manifestOf(s, completed);
    const completedHashes = hashesOf(completedFiles);
    assert.ok(completedHashes.size > 3, "the completed backup has hash objects");
    const siteStore = path.join(s.env.storageDir, SITE);
    const deltaDir = path.join(siteStore, "basebackup_delta");
    const incoming = path.join(s.env.backupLocation, SITE, "basebackup_incoming");
    const completedObjects = await treeDigest(
      siteStore,
      (rel) =>
        rel.includes(completedName) ||
        (rel.startsWith("basebackup_delta/") && completedHashes.has(path.basename(rel).replace(/\.metadata$/, ""))),
    );
    assert.ok(completedObjects.size >= 2 * completedHashes.size + 2);

    // Writes during the killed backup, and a new table: content no completed backup has.
    loadRunning = true;
    load = (async () => {
      while (loadRunning) await s.cluster.pgbench(["-c", "1", "-T", "2", "-R", "100"]).catch(() => undefined);
    })();
    await s.cluster.query("CREATE TABLE after_first AS SELECT i, md5(i::text) AS v FROM generate_series(1, 20000) i");
    // frozen and flushed, its file stays as it is: the next backup needs exactly this content again
    await s.cluster.query("VACUUM FREEZE after_first");
    await s.cluster.query("CHECKPOINT");
    const [{ p: newTable }] = await s.cluster.query<{ p: string }>("SELECT pg_relation_filepath('after_first') AS p");
    const newHash = createHash("blake2s256")
      .update(await readFile(path.join(s.cluster.dataDir, newTable)))
      .digest("hex");

    // An unreferenced object newer than the daemon's start could be an upload in progress: kept.
    const someHash = [...completedHashes][0];
    const recent = path.join(deltaDir, "f".repeat(64));
    await copyFile(path.join(deltaDir, someHash), recent);
    await copyFile(path.join(deltaDir, `${someHash}.metadata`), `${recent}.metadata`);
    const future = new Date(Date.now() + 3600_000);
    for (const f of [recent, `${recent}.metadata`]) await utimes(f, future, future);

    await rm(gate);
    const res = await httpRequest(s.env.port, "PUT", `/${SITE}/archive/basebackup`);
    assert.equal(res.status, 201);
    const isNew = (e: StoredEntry): boolean => !completedHashes.has(e.name) && e.name !== path.basename(recent);
    await waitUntil(
      "the new table's hash object in the store",
      async () => (await listStore(s.env, SITE, "basebackup_delta")).some((e) => e.name === newHash),
      () => daemon!.logs(),
    );
    await daemon!.stop("SIGKILL");
    loadRunning = false;
    await load;
    await writeFile(gate, "");

    // What the crash left: hash objects no control object lists, the spool work directory.
    const orphans = (await listStore(s.env, SITE, "basebackup_delta")).filter(isNew);
    assert.ok(orphans.length > 0);
    assert.equal((await listStore(s.env, SITE, "basebackup")).length, 1, "no control object for the killed backup");
    const killedNames = (await entries(incoming)).filter((n) => n !== completedName);
    assert.equal(killedNames.length, 1);
    // A hash object the kill caught between its data file and its sidecar: never listed, removed too.
    const unpublished: Array<{ name: string; size: number }> = [];
    for (const name of await entries(deltaDir)) {
      if (!/^[0-9a-f]{64}$/.test(name) || existsSync(path.join(deltaDir, `${name}.metadata`))) continue;
      unpublished.push({ name, size: (await stat(path.join(deltaDir, name))).size });
    }

    daemon = await DaemonProcess.start(s.env, { logName: "daemon-restarted.log" });
    s.daemon = daemon;
    await waitUntil(
      "the orphaned hash objects to be removed",
      async () => {
        const names = new Set((await listStore(s.env, SITE, "basebackup_delta")).map((e) => e.name));
        return [...orphans, ...unpublished].every(
          (o) => !names.has(o.name) && !existsSync(path.join(deltaDir, o.name)),
        );
      },
      () => daemon!.logs(),
    );
    await waitUntil(
      "the clean-up's report",
      async () => /Deleted \d+ delta objects/.test(daemon!.logs()),
      () => daemon!.logs(),
    );
    const m = /Deleted (\d+) delta objects \((\d+) bytes\) from \S+ that no completed basebackup references/.exec(
      daemon.logs(),
    );
    assert.ok(m, daemon.logs().slice(-3000));
    assert.equal(Number(m[1]), orphans.length + unpublished.length);
    assert.equal(
      Number(m[2]),
      [...orphans, ...unpublished].reduce((a, o) => a + o.size, 0),
    );
    assert.deepEqual(await entries(incoming), [], "the spool work directory is removed");
    assert.deepEqual(await entries(path.join(siteStore, "basebackup_delta_chunk")), [completedName]);
    assert.ok(existsSync(recent), "an object newer than the daemon's start is kept");
    await rm(recent);
    await rm(`${recent}.metadata`);

    // The completed backup is untouched, byte for byte.
    const afterCleanup = await treeDigest(siteStore, (rel) => completedObjects.has(rel));
    assert.deepEqual(afterCleanup, completedObjects);

    // The next delta backup uploads again what it needs of the removed content; both restore exactly.
    const next = await requestBackup(s);
    const nextFiles = await manifestOf(s, next);
    const stored = new Set((await listStore(s.env, SITE, "basebackup_delta")).map((e) => e.name));
    for (const h of [...completedHashes, ...hashesOf(nextFiles)]) assert.ok(stored.has(h), `${h} missing`);
    assert.ok(orphans.some((o) => o.name === newHash));
    assert.ok(hashesOf(nextFiles).has(newHash), "the next backup needed content the clean-up removed");
    assert.ok((await restoreExact(s, completed, completedFiles)) > completedHashes.size);
    assert.ok((await restoreExact(s, next, nextFiles)) > 0);
  });
});
