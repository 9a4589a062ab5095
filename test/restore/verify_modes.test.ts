/**
 * `verify` and `info` against backups the daemon made of a real PostgreSQL 15 cluster, one site
 * holding every basebackup mode (basic, pipe, local-tar, delta), encrypted and not: everything
 * verifies; a chunk, a delta object, a control object, a single-object backup or a WAL segment
 * with one flipped byte, truncated or missing is named; and the recoverable window `info` reports
 * is confirmed by point-in-time recoveries just inside both of its ends.
 */
import assert from "node:assert/strict";
import { readFile, readdir, stat, truncate, unlink, utimes, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";

import { DaemonProcess, sleep, switchWal, waitArchived } from "../daemon/helpers.js";
import type { PgCluster } from "../helpers/pgcluster.js";
import { requestBackup, restoreAndRecover, startScenario, type Scenario } from "../basebackup/helpers.js";
import { restoreCli } from "./helpers.js";

const SITE = "vfy";
const COMBOS: Array<{ mode: string; encrypted: boolean; compression: string }> = [
  { mode: "basic", encrypted: false, compression: "snappy" },
  { mode: "pipe", encrypted: true, compression: "snappy" },
  { mode: "local-tar", encrypted: false, compression: "zstd" },
  { mode: "local-tar", encrypted: true, compression: "snappy" },
  { mode: "delta", encrypted: true, compression: "zstd" },
  { mode: "delta", encrypted: false, compression: "snappy" },
];

interface Problem {
  object: string;
  problem: string;
}

describe("verify and info on daemon-made backups of every mode", { timeout: 1_800_000 }, () => {
  let s: Scenario;
  const backups: Array<{ key: string; mode: string; encrypted: boolean; metadata: Record<string, string> }> = [];
  let lateA = "";
  let lateB = "";
  const restored: Array<{ cluster: PgCluster; daemon: DaemonProcess }> = [];

  before(async () => {
    s = await startScenario({
      site: SITE,
      siteExtra: {
        basebackup_mode: "basic",
        basebackup_count: 20,
        basebackup_chunk_size: 4 * 1024 * 1024,
        basebackup_delta_mode_min_delta_file_size: 1024 * 1024,
        basebackup_delta_mode_chunk_size: 4 * 1024 * 1024,
      },
    });
    const c = s.cluster;
    await c.query("CREATE TABLE marks (id serial PRIMARY KEY, label text, at timestamptz DEFAULT clock_timestamp())");
    await c.query("CREATE TABLE bulk AS SELECT i, md5(i::text) AS v FROM generate_series(1, 150000) i");
    const site = (s.env.config.backup_sites as Record<string, Record<string, unknown>>)[SITE];
    const keys = { encryption_key_id: site.encryption_key_id, encryption_keys: site.encryption_keys };
    for (const combo of COMBOS) {
      await s.daemon.stop();
      site.basebackup_mode = combo.mode;
      if (combo.encrypted) Object.assign(site, keys);
      else delete site.encryption_key_id;
      s.env.config.compression = { algorithm: combo.compression, thread_count: 2 };
      await s.env.writeConfig();
      s.daemon = await DaemonProcess.start(s.env);
      await c.query("INSERT INTO marks (label) VALUES ($1)", [`before-${combo.mode}-${combo.encrypted}`]);
      await c.query("UPDATE bulk SET v = v || 'x' WHERE i % 50 = 0");
      const entry = await requestBackup(s);
      backups.push({ key: `${SITE}/basebackup/${entry.name}`, ...combo, metadata: entry.metadata });
    }
    await c.query("INSERT INTO marks (label) VALUES ('late-a')");
    await sleep(1500);
    await c.query("INSERT INTO marks (label) VALUES ('late-b')");
    const rows = await c.query<{ label: string; at: string }>(
      "SELECT label, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') AS at FROM marks WHERE label LIKE 'late-%' ORDER BY id",
    );
    [lateA, lateB] = rows.map((r) => r.at);
    await waitArchived(c, await switchWal(c));
  });

  after(async () => {
    for (const r of restored) {
      await r.cluster.destroy().catch(() => undefined);
      await r.daemon.stop().catch(() => undefined);
    }
    await s?.cleanup();
  });

  const verify = async (args: string[]): Promise<{ code: number; problems: Problem[]; stdout: string }> => {
    const result = await restoreCli(["verify", "--config", s.env.configPath, ...args, "--json"]);
    const report = JSON.parse(result.stdout) as { problems: Problem[] };
    return { code: result.code, problems: report.problems, stdout: result.stdout };
  };

  it("verifies every backup and the WAL from the oldest one on", async () => {
    for (const b of backups) {
      assert.equal(b.metadata["basebackup-mode"], b.mode);
      assert.equal(Boolean(b.metadata["encryption-key-id"]), b.encrypted);
    }
    const { code, problems, stdout } = await verify(["--basebackup", "all"]);
    assert.deepEqual(problems, []);
    assert.equal(code, 0);
    const report = JSON.parse(stdout) as { backups: Array<{ ok: boolean }>; wal: { segments: number } };
    assert.equal(report.backups.length, COMBOS.length);
    assert.ok(report.wal.segments >= COMBOS.length);
    const text = await restoreCli(["verify", "--config", s.env.configPath]);
    assert.equal(text.code, 0);
    assert.match(text.stdout, /Verification succeeded/);
  });

  /** The file of a stored object in the local store. */
  const fileOf = (key: string): string => path.join(s.env.storageDir, key);
  async function firstObject(dir: string): Promise<string> {
    const names = (await readdir(path.join(s.env.storageDir, dir))).filter((n) => !n.includes(".metadata"));
    assert.ok(names.length > 0, `nothing in ${dir}`);
    return `${dir}/${names.sort()[0]}`;
  }

  const damages: Record<string, (file: string) => Promise<void>> = {
    flipped: async (file) => {
      const data = await readFile(file);
      data[Math.floor(data.length / 2)] ^= 0x04;
      await writeFile(file, data);
    },
    truncated: async (file) => truncate(file, Math.floor((await stat(file)).size / 2)),
    missing: async (file) => unlink(file),
  };

  async function damaged(key: string, damage: string, backupName: string): Promise<void> {
    const file = fileOf(key);
    const original = await readFile(file);
    // The stored time of a single-object backup is its end in `info`: keep it.
    const { atime, mtime } = await stat(file);
    await damages[damage](file);
    try {
      if (damage === "missing" && key.endsWith(backupName)) {
        // Nothing is left of a deleted single-object backup: asked for by name, it is not found.
        const { code, stdout } = await restoreCli(["verify", "--config", s.env.configPath, "--basebackup", backupName]);
        assert.equal(code, 1);
        assert.match(stdout, new RegExp(`^FATAL: RestoreError: Basebackup '${backupName}' not found`, "m"));
        return;
      }
      const { code, problems } = await verify(["--basebackup", backupName]);
      assert.equal(code, 1);
      const named = problems.filter((p) => p.object === key);
      assert.equal(named.length, 1, `${key} not named in ${JSON.stringify(problems)}`);
    } finally {
      await writeFile(file, original);
      await utimes(file, atime, mtime);
    }
  }

  const name = (b: { key: string }): string => path.posix.basename(b.key).replace(/\.00000000\.pghoard$/, "");

  for (const damage of Object.keys(damages)) {
    it(`names a ${damage} chunk, delta object, control object, single-object backup and WAL segment`, async () => {
      const localTar = backups.find((b) => b.mode === "local-tar" && b.encrypted)!;
      const delta = backups.find((b) => b.mode === "delta" && !b.encrypted)!;
      const basic = backups.find((b) => b.mode === "basic")!;
      await damaged(await firstObject(`${SITE}/basebackup_chunk/${name(localTar)}`), damage, name(localTar));
      // Some delta objects only the second delta backup references: verify them all.
      await damaged(await firstObject(`${SITE}/basebackup_delta`), damage, "all");
      await damaged(delta.key, damage, name(delta));
      await damaged(basic.key, damage, name(basic));
      const segments = (await readdir(fileOf(`${SITE}/xlog`))).filter((n) => /^[0-9A-F]{24}$/.test(n)).sort();
      // A segment in the middle of the newest backup's chain.
      const start = backups.at(-1)!.metadata["start-wal-segment"];
      const middle = segments.find((n) => n > start && n !== segments.at(-1))!;
      await damaged(`${SITE}/xlog/${middle}`, damage, name(backups.at(-1)!));
    });
  }

  it("reports a recoverable window that PITR confirms at both ends", async () => {
    const { code, stdout } = await restoreCli(["info", "--config", s.env.configPath, "--json"]);
    assert.equal(code, 0);
    const info = JSON.parse(stdout) as {
      basebackups: Array<{ name: string; wal_chain_complete: boolean; basebackup_mode: string }>;
      recoverable_window: { earliest: { time: string; backup: string }; latest: { time: string } };
    };
    assert.equal(info.basebackups.length, COMBOS.length);
    assert.ok(info.basebackups.every((b) => b.wal_chain_complete));
    const window = info.recoverable_window;
    assert.equal(window.earliest.backup, backups[0].key);
    // latest is the commit of 'late-b': just after the row's clock_timestamp().
    const latestMs = Date.parse(window.latest.time);
    const lateBMs = Date.parse(`${lateB}Z`);
    assert.ok(latestMs >= lateBMs && latestMs - lateBMs < 1000, `${window.latest.time} vs ${lateB}`);
    assert.ok(Date.parse(`${lateA}Z`) < latestMs - 1000);

    const iso = (ms: number): string => new Date(ms).toISOString().replace("Z", "+00:00");
    // Just after the earliest end: the oldest backup, nothing written after it.
    const early = await restoreAndRecover(s, ["--recovery-target-time", iso(Date.parse(window.earliest.time) + 1)]);
    restored.push(early);
    const earlyLabels = (await early.cluster.query<{ label: string }>("SELECT label FROM marks ORDER BY id")).map(
      (r) => r.label,
    );
    assert.deepEqual(earlyLabels, ["before-basic-false"]);
    await early.cluster.destroy();
    await early.daemon.stop();

    // Just before the latest end: everything but the last transaction.
    const late = await restoreAndRecover(s, ["--recovery-target-time", iso(latestMs - 1)]);
    restored.push(late);
    const lateLabels = (await late.cluster.query<{ label: string }>("SELECT label FROM marks ORDER BY id")).map(
      (r) => r.label,
    );
    assert.equal(lateLabels.at(-1), "late-a");
    assert.equal(lateLabels.length, COMBOS.length + 1);
  });
});
