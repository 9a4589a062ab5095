/**
 * A daemon SIGKILLed in the middle of a real local-tar backup: the next start removes the work
 * directory with its chunks from the spool, the uploaded chunks that have no control object from
 * the store, and temp files that crashed writes left in the local store, without touching the
 * completed backup before it. `persisted_progress_file.json` (working directory) keeps the killed
 * backup's upload progress across the restart: the restarted daemon reports the stall since then.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { readFile, rm, utimes, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { DaemonProcess, httpRequest, sleep } from "../daemon/helpers.js";
import {
  dirEntries as entries,
  installArchiveGate,
  listStore,
  requestBackup,
  startScenario,
  treeDigest,
  waitUntil,
  type Scenario,
} from "./helpers.js";

const SITE = "crashbb";

describe("SIGKILL during a local-tar basebackup", { timeout: 600_000 }, () => {
  let s: Scenario;
  let daemon: DaemonProcess | undefined;
  let gate: string;

  before(async () => {
    s = await startScenario({
      site: SITE,
      siteExtra: {
        basebackup_mode: "local-tar",
        basebackup_chunk_size: 4 * 1024 * 1024,
        basebackup_chunks_in_progress: 2,
        basebackup_count: 3,
        // archive_command (below) is then the only way WAL reaches the store: closing it holds a
        // backup after its chunks are uploaded, before its control object (the end-segment check).
        archive_work_ahead: false,
      },
      configExtra: { prometheus: {} },
    });
    daemon = s.daemon;
    gate = await installArchiveGate(s, "bb-kill-gate");
    await s.cluster.pgbench(["-i", "-s", "8", "-q"]);
    await s.cluster.query("CHECKPOINT");
  });

  after(async () => {
    await daemon?.stop("SIGKILL");
    await s?.cleanup();
  });

  it("the next start removes the spool work directory, the orphan chunks and store temp files", async () => {
    const completed = await requestBackup(s);
    const progressFile = path.join(s.env.dir, "persisted_progress_file.json");
    const readProgress = async (): Promise<{
      progress: Record<string, { current_progress: number; last_updated_time: number }>;
    }> => JSON.parse(await readFile(progressFile, "utf8"));
    // A completed backup resets it.
    assert.deepEqual(await readProgress(), { progress: {} });
    const completedName = completed.name.replace(/\.00000000\.pghoard$/, "");
    const siteStore = path.join(s.env.storageDir, SITE);
    const chunkRoot = path.join(siteStore, "basebackup_chunk");
    const incoming = path.join(s.env.backupLocation, SITE, "basebackup_incoming");

    // Leftovers of writes cut off in the local store's sidecar and data steps, from "an earlier crash".
    const xlogDir = path.join(siteStore, "xlog");
    const oldTemps = [
      path.join(xlogDir, "000000010000000000000099.metadata0123456789abcdef.metadata_tmp"),
      path.join(xlogDir, ".concurrent_upload_0123456789abcdef"),
    ];
    const past = new Date(Date.now() - 3600_000);
    for (const file of oldTemps) {
      await writeFile(file, "partial");
      await utimes(file, past, past);
    }
    // A temp file newer than the daemon's start could be an upload in progress: kept.
    const recentTemp = path.join(xlogDir, ".concurrent_upload_fedcba9876543210");
    await writeFile(recentTemp, "in progress");
    const future = new Date(Date.now() + 3600_000);
    await utimes(recentTemp, future, future);

    // A backup takes well under a second here: hold it at its end segment so the kill lands mid-backup.
    await rm(gate);
    const res = await httpRequest(s.env.port, "PUT", `/${SITE}/archive/basebackup`);
    assert.equal(res.status, 201);
    // Kill once a chunk of the new backup is in the store and in the progress file (and before its control object is).
    let killedName = "";
    await waitUntil(
      "a chunk of the second backup in the store",
      async () => {
        const uploaded = await readProgress().catch(() => null);
        if (!uploaded?.progress.total_bytes_uploaded?.current_progress) return false;
        for (const name of await entries(chunkRoot)) {
          if (name === completedName) continue;
          if ((await listStore(s.env, SITE, "basebackup_chunk", name)).length > 0) {
            killedName = name;
            return true;
          }
        }
        return false;
      },
      () => daemon!.logs(),
    );
    await daemon!.stop("SIGKILL");
    await writeFile(gate, "");
    const killedProgress = (await readProgress()).progress.total_bytes_uploaded!;
    assert.ok(killedProgress.current_progress > 0);
    assert.ok(Math.abs(killedProgress.last_updated_time - Date.now() / 1000) < 120, JSON.stringify(killedProgress));
    const completedFiles = new Map(
      [...(await treeDigest(siteStore))].filter(
        ([p]) => p.includes(completedName) && !p.includes(".metadata_tmp") && !p.includes(".concurrent_upload"),
      ),
    );
    assert.ok(completedFiles.size > 2, "the completed backup has a control object and chunks");

    // What the crash left: the work directory, chunks without a control object.
    assert.deepEqual(await entries(incoming), [killedName]);
    assert.ok((await listStore(s.env, SITE, "basebackup_chunk", killedName)).length > 0);
    assert.ok(
      !(await listStore(s.env, SITE, "basebackup")).some((e) => e.name.startsWith(killedName)),
      "no control object for the killed backup",
    );

    // Down for a while: a stall counted from the restart would be at least this much smaller.
    await sleep(8000);
    daemon = await DaemonProcess.start(s.env, { logName: "daemon-restarted.log" });
    // The restarted daemon reports how long the killed backup's uploads have not progressed.
    let stalled = NaN;
    let scrapedAt = 0;
    await waitUntil(
      "the stall gauge after the restart",
      async () => {
        const body = (await httpRequest(s.env.port, "GET", "/metrics")).body;
        scrapedAt = Date.now() / 1000;
        const m = /^pghoard_seconds_since_backup_progress_stalled(?:\{\})? (\d+)/m.exec(body);
        if (m) stalled = Number(m[1]);
        return m !== null;
      },
      () => daemon!.logs(),
    );
    // The gauge is refreshed every main-loop iteration (5 s).
    const expected = scrapedAt - killedProgress.last_updated_time;
    assert.ok(stalled >= expected - 6 && stalled <= expected + 1, `${stalled} vs ${expected}`);
    await waitUntil(
      "the leftovers to be removed",
      async () => !existsSync(path.join(chunkRoot, killedName)) && (await entries(incoming)).length === 0,
      () => daemon!.logs(),
    );
    await waitUntil(
      "temp files removed",
      async () => oldTemps.every((f) => !existsSync(f)),
      () => daemon!.logs(),
    );
    assert.ok(existsSync(recentTemp), "a temp file newer than the daemon's start is kept");
    await daemon.waitForLog(new RegExp(`Deleted ${SITE}/basebackup_chunk/${killedName} \\(\\d+ chunks`));
    await daemon.waitForLog(/Removed .*basebackup_incoming.* left by an interrupted basebackup/);

    // The completed backup is untouched, byte for byte.
    const after = await treeDigest(siteStore);
    for (const [file, digest] of completedFiles) assert.equal(after.get(file), digest, `${file} changed`);
    assert.deepEqual(
      (await listStore(s.env, SITE, "basebackup")).map((e) => e.name),
      [completed.name],
    );
    assert.deepEqual(await entries(chunkRoot), [completedName]);

    // And a new backup still works after the clean-up.
    s.daemon = daemon;
    await requestBackup(s);
    assert.equal((await listStore(s.env, SITE, "basebackup")).length, 2);
    assert.deepEqual(await readProgress(), { progress: {} });
  });
});
