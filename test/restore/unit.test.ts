/** Pure parts of restore: output formats, timestamps, selection, recovery configuration, member mapping. */
import assert from "node:assert/strict";
import { lstat, mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Writable } from "node:stream";
import { describe, it } from "node:test";
import { writeFileDurable } from "../../src/common/native_addon.js";
import { ProgressTracker } from "../../src/restore/fetch.js";
import { ProgressReporter, formatSummary, formatTerminalProgress } from "../../src/restore/progress.js";
import { installedClientBin, repoRoot } from "../helpers/paths.js";

import {
  appendToAutoConf,
  buildRecoveryConfig,
  formatBasebackupList,
  formatStatusJson,
  formatProgress,
  mapMemberName,
  RestoreTarget,
  selectBasebackup,
  tarRulesForFormat,
} from "../../src/restore/index.js";
import type { BasebackupEntry } from "../../src/restore/index.js";
import { parseTimestamp } from "../../src/common/pycompat.js";

const backups: BasebackupEntry[] = [
  {
    name: "site/basebackup/2024-05-02_10-00_0.00000000.pghoard",
    size: 1000,
    metadata: {
      "start-time": "2024-05-02T10:00:00+00:00",
      "end-time": "2024-05-02 10:05:00+00:00",
      "total-size-enc": "3145728",
      "total-size-plain": "10485760",
      format: "pghoard-bb-v2",
    },
  },
  {
    name: "site/basebackup/2024-05-01_10-00_0",
    size: 5 * 1024 * 1024 + 1,
    metadata: { "start-time": "2024-05-01T12:00:00+02:00", "original-file-size": "0" },
  },
];

describe("list format (cli.md §2.4)", () => {
  it("prints the exact columns, caption and verbose metadata line", () => {
    const text = formatBasebackupList(backups, { caption: "Available 'site' basebackups:", verbose: true });
    const expected = [
      "Available 'site' basebackups: ",
      "",
      "Basebackup                                Backup size    Orig size  Start time          ",
      "----------------------------------------  -----------  -----------  --------------------",
      "site/basebackup/2024-05-01_10-00_0               5 MB          n/a  2024-05-01T10:00:00Z",
      "    metadata: {'original-file-size': '0'}",
      "site/basebackup/2024-05-02_10-00_0.00000000.pghoard         3 MB        10 MB  2024-05-02T10:00:00Z",
      "    metadata: {'end-time': '2024-05-02 10:05:00+00:00', 'total-size-enc': '3145728', 'total-size-plain': '10485760', 'format': 'pghoard-bb-v2'}",
      "",
    ].join("\n");
    assert.equal(text, expected);
  });
});

describe("backup selection", () => {
  it("latest = newest start-time, with the candidate list", () => {
    const { backup, output } = selectBasebackup(backups, { name: "latest" });
    assert.equal(backup.name, backups[0].name);
    assert.match(output, /^Found 2 applicable basebackups \n/);
    assert.match(output, /\nSelecting 'site\/basebackup\/2024-05-02_10-00_0.00000000.pghoard' for restore\n$/);
  });

  it("by time: backups that ended before the target (end-time, else start-time)", () => {
    const pick = (t: string): string =>
      selectBasebackup(backups, { name: "latest", recoveryTargetTime: parseTimestamp(t) }).backup.name;
    assert.equal(pick("2024-05-02 10:06"), backups[0].name);
    assert.equal(pick("2024-05-02 10:04"), backups[1].name);
    assert.throws(() => pick("2024-05-01 10:00"), /No applicable basebackups found, exiting/);
  });

  it("no applicable backup: the line names the backups, newest first (at most 10), and the name format", () => {
    const message = (fn: () => unknown): string => {
      try {
        fn();
      } catch (err) {
        return (err as Error).message;
      }
      throw new Error("did not throw");
    };
    assert.equal(
      message(() => selectBasebackup(backups, { name: "2024-05-01_10-00_0" })),
      "No applicable basebackup found, exiting. Existing basebackups, newest first: " +
        "site/basebackup/2024-05-02_10-00_0.00000000.pghoard (started 2024-05-02T10:00:00Z), " +
        "site/basebackup/2024-05-01_10-00_0 (started 2024-05-01T10:00:00Z). " +
        "--basebackup takes a name exactly as list-basebackups prints it (e.g. 'site/basebackup/2024-05-02_10-00_0.00000000.pghoard') or 'latest'.",
    );
    const many: BasebackupEntry[] = Array.from({ length: 12 }, (_, i) => ({
      name: `site/basebackup/2024-06-${String(i + 1).padStart(2, "0")}_00-00_0`,
      size: 1,
      metadata: { "start-time": `2024-06-${String(i + 1).padStart(2, "0")}T00:00:00+00:00` },
    }));
    const text = message(() =>
      selectBasebackup(many, { name: "latest", recoveryTargetTime: parseTimestamp("2024-01-01") }),
    );
    assert.match(
      text,
      /^No applicable basebackups found, exiting\. Existing basebackups, newest first: site\/basebackup\/2024-06-12_00-00_0 \(started 2024-06-12T00:00:00Z\), /,
    );
    assert.match(text, /2024-06-03_00-00_0 \(started 2024-06-03T00:00:00Z\) and 2 older\. /);
    assert.doesNotMatch(text, /2024-06-02_/);
    assert.equal(
      message(() => selectBasebackup([], { name: "latest" })),
      "No applicable basebackups found, exiting. The site has no basebackups.",
    );
  });

  it("by exact name only", () => {
    assert.equal(selectBasebackup(backups, { name: backups[1].name }).backup, backups[1]);
    assert.throws(
      () => selectBasebackup(backups, { name: "2024-05-01_10-00_0" }),
      /No applicable basebackup found, exiting/,
    );
  });
});

/** Upstream's restore_command (through the daemon), as these upstream-text comparisons expect. */
const DAEMON = { restoreCommandMode: "daemon", commandBin: "pghoard_postgres_command" } as const;

describe("recovery configuration (operations.md §12)", () => {
  it("default: the direct restore_command with absolute paths and the prefetch cleanup at recovery end", () => {
    const config = buildRecoveryConfig({
      pgVersion: "15",
      site: "my site",
      port: 1,
      configPath: "relative/pghoard.json",
      recoveryEndCommand: "echo done",
      restoreToPrimary: true,
    });
    const command = `${process.execPath} ${path.join(repoRoot, "bin", "pghoard_postgres_command.js")}`;
    const config_ = path.resolve("relative/pghoard.json");
    assert.ok(
      config.content.includes(
        `\nrestore_command = '${command} --mode restore --config ${config_} --site ''my site'' --output %p --xlog %f'\n`,
      ),
      config.content,
    );
    assert.ok(
      config.content.includes(`\nrecovery_end_command = '${command} --mode cleanup; echo done'\n`),
      config.content,
    );
    assert.throws(
      () => buildRecoveryConfig({ pgVersion: "15", site: "s", port: 1 }),
      /needs the path of the configuration/,
    );
  });

  it("daemon mode: the installed client (native front or bash), with the node running now for its hand-overs", () => {
    const config = buildRecoveryConfig({
      restoreCommandMode: "daemon",
      pgVersion: "15",
      site: "my site",
      port: 16001,
      username: "u",
      password: "p w",
    });
    const client = installedClientBin;
    assert.ok(
      config.content.includes(
        `\nrestore_command = 'PGHOARD_NODE=${process.execPath} ${client} --mode restore --port 16001 --site ''my site'' --output %p --xlog %f --username u --password ''p w'''\n`,
      ),
      config.content,
    );
    assert.ok(!config.content.includes("recovery_end_command"), config.content);
  });

  it("PG 15: same text upstream wrote for the fixture restore", () => {
    const config = buildRecoveryConfig({
      ...DAEMON,
      pgVersion: "15\n",
      site: "snappy-enc-localtar",
      port: 16101,
      commandBin: "/srv/pghoard-fixtures/bin/pghoard_postgres_command",
      targetAction: "promote",
      targetName: "fixture_snappy-enc-localtar",
    });
    assert.equal(
      config.content,
      "# pghoard created recovery.conf\nrecovery_target_timeline = 'latest'\nrestore_command = '/srv/pghoard-fixtures/bin/pghoard_postgres_command --mode restore --port 16101 --site snappy-enc-localtar --output %p --xlog %f'\npromote_trigger_file = 'trigger_file'\nrecovery_target_action = 'promote'\nrecovery_target_name = 'fixture_snappy-enc-localtar'\n",
    );
    assert.equal(config.fileName, "postgresql.auto.conf");
    assert.deepEqual(config.signalFiles, ["standby.signal"]);
  });

  it("restore to primary writes recovery.signal; credentials, conninfo quoting, LSN and immediate targets", () => {
    const config = buildRecoveryConfig({
      ...DAEMON,
      pgVersion: "16",
      site: "s",
      port: 1,
      username: "u",
      password: "p",
      primaryConninfo: "host=x password='a\\b'",
      recoveryEndCommand: "echo done",
      targetLsn: "0/1000000",
      restoreToPrimary: true,
    });
    assert.deepEqual(config.signalFiles, ["recovery.signal"]);
    assert.ok(!config.content.includes("trigger_file"), "no trigger file setting for PG 16");
    assert.match(config.content, /--xlog %f --username u --password p'\n/);
    assert.match(config.content, /\nprimary_conninfo = 'host=x password=''a\\\\b'''\n/);
    assert.match(config.content, /\nrecovery_end_command = 'echo done'\n/);
    assert.match(config.content, /\nrecovery_target_lsn = '0\/1000000'\n$/);
    const immediate = buildRecoveryConfig({ ...DAEMON, pgVersion: "15", site: "s", port: 1, targetImmediate: true });
    assert.match(immediate.content, /\nrecovery_target = 'immediate'\n$/);
  });

  it("PG < 12: recovery.conf with trigger_file and standby_mode; 9.4 action mapping", () => {
    const config = buildRecoveryConfig({ ...DAEMON, pgVersion: "11", site: "s", port: 16000, targetXid: "1234" });
    assert.equal(config.fileName, "recovery.conf");
    assert.deepEqual(config.signalFiles, []);
    assert.equal(
      config.content,
      "# pghoard created recovery.conf\nrecovery_target_timeline = 'latest'\nrestore_command = 'pghoard_postgres_command --mode restore --port 16000 --site s --output %p --xlog %f'\ntrigger_file = 'trigger_file'\nstandby_mode = 'on'\nrecovery_target_xid = '1234'\n",
    );
    const old = buildRecoveryConfig({
      ...DAEMON,
      pgVersion: "9.4",
      site: "s",
      port: 1,
      targetAction: "pause",
      restoreToPrimary: true,
    });
    assert.ok(old.content.includes("pause_at_recovery_target = True\n"));
    assert.ok(!old.content.includes("standby_mode"));
    const shutdown = buildRecoveryConfig({ ...DAEMON, pgVersion: "9.4", site: "s", port: 1, targetAction: "shutdown" });
    assert.equal(shutdown.warnings.length, 1);
    assert.throws(
      () => buildRecoveryConfig({ ...DAEMON, pgVersion: "9.6", site: "s", port: 1, targetLsn: "0/1" }),
      /PostgreSQL 10/,
    );
  });

  it("at most one target, with upstream's message", () => {
    assert.throws(
      () => buildRecoveryConfig({ ...DAEMON, pgVersion: "15", site: "s", port: 1, targetName: "a", targetXid: "1" }),
      {
        message: "Specify at most one of recovery_target_name, recovery_target_time or recovery_target_xid",
      },
    );
  });

  it("appending keeps ALTER SYSTEM settings and disables earlier recovery settings", () => {
    const existing =
      "# Do not edit this file manually!\nwork_mem = '8MB'\nrestore_command = 'old'\nrecovery_target_name = 'old'";
    const merged = appendToAutoConf(existing, "restore_command = 'new'\n");
    assert.equal(
      merged,
      "# Do not edit this file manually!\nwork_mem = '8MB'\n# disabled by pghoard_restore: restore_command = 'old'\n# disabled by pghoard_restore: recovery_target_name = 'old'\nrestore_command = 'new'\n",
    );
  });
});

describe("progress output", () => {
  it("formats the bar and the status file like upstream", () => {
    const snap = { downloaded: 5 * 1024 * 1024, total: 40 * 1024 * 1024, fraction: 0.125 };
    assert.equal(formatProgress(snap), "Download progress: 12.50% (5 / 40 MiB)");
    assert.equal(
      formatStatusJson(snap),
      '{\n    "downloaded_bytes": 5242880,\n    "progress_percent": 0.125,\n    "total_bytes": 41943040\n}\n',
    );
    assert.match(formatStatusJson({ downloaded: 1, total: 1, fraction: 1 }), /"progress_percent": 1.0,/);
  });

  it("on a terminal: rate and ETA on the line, and a closing summary", async () => {
    const snap = { downloaded: 5 * 1024 * 1024, total: 40 * 1024 * 1024, fraction: 0.125 };
    assert.equal(formatTerminalProgress(snap, 2), "Download progress: 12.50% (5 / 40 MiB), 2.5 MiB/s, ETA 0:14");
    assert.equal(
      formatSummary({ ...snap, downloaded: snap.total, fraction: 1 }, 16),
      "Downloaded 40.0 MiB in 0:16 (2.5 MiB/s)",
    );
    const tracker = new ProgressTracker([{ size: 4 * 1024 * 1024 }]);
    let written = "";
    const out = new Writable({
      write(chunk: Buffer, _enc, cb) {
        written += chunk.toString();
        cb();
      },
    });
    const reporter = new ProgressReporter({ tracker, out, isTTY: true });
    reporter.start();
    tracker.add(0, 4 * 1024 * 1024);
    await reporter.stop();
    assert.match(written, /\r\nDownloaded 4\.0 MiB in \d+:\d\d \([\d.]+ MiB\/s\)\n$/);
    // Piped output stays upstream's lines, without a summary.
    written = "";
    const plain = new ProgressReporter({ tracker, out, isTTY: false });
    plain.start();
    await plain.stop();
    assert.doesNotMatch(written, /Downloaded|MiB\/s/);
  });
});

describe("tar member mapping", () => {
  const target = new RestoreTarget("/restore/pgdata", [{ name: "ts1", oid: 16395, path: "/restore/ts1" }]);
  const v2 = tarRulesForFormat("pghoard-bb-v2");
  it("strips pgdata/, maps tablespaces, skips metadata members", () => {
    assert.equal(mapMemberName("pgdata/base/1/2", v2, target), "base/1/2");
    assert.equal(mapMemberName("pgdata", v2, target), null);
    assert.equal(mapMemberName("tablespaces/ts1/PG_15/1/2", v2, target), "/restore/ts1/PG_15/1/2");
    assert.equal(mapMemberName("tablespaces/ts1", v2, target), null);
    assert.equal(mapMemberName(".pghoard_tar_metadata.json", v2, target), null);
    assert.equal(mapMemberName("pgdata/.manifest.json", v2, target), "pgdata/.manifest.json".slice(7));
    assert.equal(mapMemberName("pgdata/.manifest.json", tarRulesForFormat("pghoard-delta-v2"), target), null);
    assert.equal(mapMemberName("pgdata/x", tarRulesForFormat(undefined), target), "pgdata/x");
    assert.throws(() => tarRulesForFormat("pghoard-bb-v9"), /Unrecognized basebackup format 'pghoard-bb-v9'/);
  });

  it("refuses names escaping the target", () => {
    assert.throws(() => target.resolve("../x", "test"), /'\.\.'/);
    assert.throws(() => target.resolve("/etc/passwd", "test"), /absolute member name/);
    assert.equal(target.resolve("/restore/ts1/PG_15/x", "test"), "/restore/ts1/PG_15/x");
    assert.equal(target.resolve("./base//1", "test"), "/restore/pgdata/base/1");
    assert.equal(
      target.resolve("global/pg_control", "test"),
      "/restore/pgdata/global/pg_control.pghoard_restore_incomplete",
    );
  });
});

describe("restore target: small files", () => {
  it(
    "writes them with the native addon exactly as through Node's fs",
    { skip: writeFileDurable === null ? "the native addon is not built" : false },
    async () => {
      const root = await mkdtemp(path.join(os.tmpdir(), "restore-small-files-"));
      try {
        for (const [name, writer] of [
          ["native", writeFileDurable],
          ["node", null],
        ] as const) {
          await mkdir(path.join(root, name));
          const target = new RestoreTarget(path.join(root, name), [], { writeFileDurable: writer });
          await target.writeChunks(
            path.join(target.pgdata, "f1"),
            [Buffer.from("ab"), Buffer.from("cd")],
            0o100644,
            1e9,
          );
          await target.writeChunks(path.join(target.pgdata, "f2"), [], 0o600);
        }
        for (const file of ["f1", "f2"]) {
          const [a, b] = await Promise.all(["native", "node"].map((n) => lstat(path.join(root, n, file))));
          assert.equal(a.mode, b.mode, file);
          assert.equal(a.size, b.size, file);
          if (file === "f1") assert.equal(a.mtimeMs, b.mtimeMs);
          assert.deepEqual(
            await readFile(path.join(root, "native", file)),
            await readFile(path.join(root, "node", file)),
          );
        }
        assert.equal((await lstat(path.join(root, "native", "f1"))).mode & 0o7777, 0o644);
      } finally {
        await rm(root, { recursive: true, force: true });
      }
    },
  );
});
