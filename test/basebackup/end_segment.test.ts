/**
 * The backup stops without pg_backup_stop's archive wait and checks storage itself: it is not
 * reported complete (no control object, still running) while its end segment is held back from
 * archiving, completes once archiving is released, and fails with a clear message when the
 * segment never reaches its storage.
 */
import assert from "node:assert/strict";
import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { runBasebackup, type BasebackupContext } from "../../src/basebackup/index.js";
import type { PghoardConfig } from "../../src/config/types.js";
import { FileFormatPool } from "../../src/fileformat/index.js";
import { createStorage } from "../../src/storage/index.js";
import { chownToPostgres, makeTempDir } from "../helpers/pgcluster.js";
import { httpRequest, sleep } from "../daemon/helpers.js";
import { listStore, startScenario, type Scenario } from "./helpers.js";

async function basebackupState(s: Scenario): Promise<{ running: boolean; progress?: { phase: string } } | undefined> {
  try {
    const state = JSON.parse(await readFile(s.env.statePath, "utf8")) as {
      pg_basebackups?: Record<string, { running: boolean; progress?: { phase: string } }>;
    };
    return state.pg_basebackups?.[s.site];
  } catch {
    return undefined;
  }
}

async function until<T>(what: string, probe: () => Promise<T | undefined | false>, s: Scenario): Promise<T> {
  const deadline = Date.now() + 120_000;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline)
      throw new Error(`timed out waiting for ${what}; daemon log:\n${s.daemon.logs().slice(-4000)}`);
    await sleep(100);
  }
}

describe("basebackup end segment check", { timeout: 300_000 }, () => {
  let s: Scenario;
  let gate: string;
  before(async () => {
    // Without the work-ahead the gate in archive_command is the only way the segment reaches storage.
    s = await startScenario({ site: "endseg", siteExtra: { basebackup_mode: "local-tar", archive_work_ahead: false } });
    const gateDir = await makeTempDir("bb-gate");
    await chownToPostgres(gateDir);
    gate = path.join(gateDir, "open");
    const [{ archive_command: command }] = await s.cluster.query<{ archive_command: string }>("SHOW archive_command");
    await s.cluster.query(
      `ALTER SYSTEM SET archive_command = '${`test -f ${gate} && ${command}`.replace(/'/g, "''")}'`,
    );
    await s.cluster.query("SELECT pg_reload_conf()");
  });
  after(async () => {
    await s?.cleanup();
  });

  it("is not reported complete before its end segment is stored", async () => {
    const res = await httpRequest(s.env.port, "PUT", `/${s.site}/archive/basebackup`);
    assert.ok(res.status < 300, `basebackup request: ${res.status} ${res.body}`);
    const phase = await until(
      "the backup to wait for its end segment",
      async () =>
        (await basebackupState(s))?.progress?.phase.match(/^waiting for WAL segment ([0-9A-F]{24}) to be stored$/) ??
        undefined,
      s,
    );
    const segment = phase[1];
    // Held back for a while: not complete, and not waiting inside pg_backup_stop either.
    await sleep(1500);
    assert.deepEqual(await listStore(s.env, s.site, "basebackup"), []);
    assert.equal((await basebackupState(s))?.running, true);
    assert.ok(!(await listStore(s.env, s.site, "xlog")).some((e) => e.name === segment), "end segment held back");
    const stopping = await s.cluster.query<{ n: string }>(
      "SELECT count(*)::text AS n FROM pg_stat_activity WHERE query ILIKE '%pg_backup_stop%' AND state = 'active' AND pid <> pg_backend_pid()",
    );
    assert.equal(stopping[0].n, "0");

    await writeFile(gate, "");
    await chownToPostgres(gate);
    await s.cluster.query("SELECT pg_reload_conf()"); // wakes the archiver at once
    await until(
      "the backup to complete",
      async () => {
        const list = await listStore(s.env, s.site, "basebackup");
        return list.length > 0 && (await basebackupState(s))?.running === false && list;
      },
      s,
    );
    assert.ok(
      (await listStore(s.env, s.site, "xlog")).some((e) => e.name === segment),
      "end segment stored",
    );
    assert.match(s.daemon.logs(), /Basebackup .* completed/);
  });

  it("fails with a clear message when the end segment never reaches its storage", async () => {
    // Same cluster, but a store the daemon does not archive into: the segment never arrives there.
    const dir = await makeTempDir("bb-endseg-store");
    const site = {
      prefix: "other",
      active: true,
      active_backup_mode: "archive_command",
      basebackup_mode: "local-tar",
      pg_data_directory: s.cluster.dataDir,
      nodes: [s.cluster.connectionInfo()],
      encryption_key_id: null,
      encryption_keys: {},
      basebackup_threads: 1,
      basebackup_chunks_in_progress: 2,
      basebackup_chunk_size: 1024 * 1024 * 1024,
      object_storage: { storage_type: "local", directory: dir },
    };
    const config = {
      backup_location: path.join(dir, "spool"),
      backup_sites: { other: site },
      compression: { algorithm: "snappy", level: 0, thread_count: 1 },
    } as unknown as PghoardConfig;
    const storage = await createStorage(site.object_storage as PghoardConfig["backup_sites"][string]["object_storage"]);
    const pool = new FileFormatPool(1);
    const ctx: BasebackupContext = {
      config,
      site: "other",
      node: site.nodes[0] as Record<string, string>,
      pgVersion: Number(
        (await s.cluster.query<{ v: string }>("SELECT current_setting('server_version_num') AS v"))[0].v,
      ),
      storage,
      pool,
      decision: { "backup-reason": "requested" },
      log: { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined },
      endSegmentTimeoutMs: 1000,
    };
    try {
      await assert.rejects(runBasebackup(ctx), (err: Error) => {
        assert.equal(err.name, "BackupFailure");
        assert.match(err.message, /end WAL segment [0-9A-F]{24} was not in storage after 1 s/);
        assert.match(err.message, /Check WAL archiving/);
        return true;
      });
      assert.deepEqual(await storage.list("other/basebackup", { recursive: true }), []);
    } finally {
      await pool.close();
      await storage.close();
    }
  });
});
