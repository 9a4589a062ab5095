/**
 * The backup stops without pg_backup_stop's archive wait and checks storage itself: it is not
 * reported complete (no control object, still running) while its end segment is held back from
 * archiving, completes once archiving is released, and fails after the site's
 * `basebackup_end_segment_timeout` with a message naming the segment when it never reaches storage.
 */
import assert from "node:assert/strict";
import { readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
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

  it("fails after basebackup_end_segment_timeout, naming the segment, when it never reaches storage", async () => {
    // Archiving held back again, and the site key set to 1 s through a config reload (SIGHUP).
    await rm(gate, { force: true });
    const before = await listStore(s.env, s.site, "basebackup");
    const sites = s.env.config.backup_sites as Record<string, Record<string, unknown>>;
    sites[s.site].basebackup_end_segment_timeout = 1;
    await s.env.writeConfig();
    const logStart = s.daemon.logs().length;
    s.daemon.child.kill("SIGHUP");
    await until("the config reload", async () => s.daemon.logs().slice(logStart).includes("Configuration reloaded"), s);

    const res = await httpRequest(s.env.port, "PUT", `/${s.site}/archive/basebackup`);
    assert.ok(res.status < 300, `basebackup request: ${res.status} ${res.body}`);
    const failure = await until(
      "the backup to fail",
      async () => /Basebackup of site \S+ failed: (.*)/.exec(s.daemon.logs().slice(logStart))?.[1] ?? undefined,
      s,
    );
    assert.match(failure, /end WAL segment [0-9A-F]{24} was not in storage after 1 s/);
    assert.match(failure, /basebackup_end_segment_timeout/);
    assert.match(failure, /Check WAL archiving/);
    const segment = /end WAL segment ([0-9A-F]{24})/.exec(failure)?.[1] as string;
    assert.ok(!(await listStore(s.env, s.site, "xlog")).some((e) => e.name === segment), "end segment held back");
    // No control object: the backup is not reported complete.
    assert.deepEqual(await listStore(s.env, s.site, "basebackup"), before);
    await until("the backup to stop running", async () => (await basebackupState(s))?.running === false, s);
  });
});
