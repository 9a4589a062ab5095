/**
 * Backups made by the real upstream pghoard (shared fixtures) restored with
 * `node bin/pghoard_restore.js get-basebackup`, as a user runs it: the files match upstream's own
 * restore (restored-manifest-*.json), and PostgreSQL 15, fetching WAL from OUR daemon through
 * pghoard_postgres_command, reaches each recorded restore point with exactly the recorded query
 * results, including the timeline-2 target of snappy-enc-localtar.
 *
 * The only file that differs from upstream's restore is postgresql.auto.conf: upstream replaces
 * it with its recovery block, we keep the backup's ALTER SYSTEM settings and append the same block.
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { readFile, rm } from "node:fs/promises";
import path from "node:path";
import { describe, it } from "node:test";

import { DaemonProcess, makeDaemonEnv, postgresCommandBin } from "../daemon/helpers.js";
import { hasShared } from "../helpers/paths.js";
import { makeTempDir, startCluster } from "../helpers/pgcluster.js";
import {
  directoryManifest,
  FIXTURE_SETS,
  pghoardMadeDir,
  runRestoreCli,
  sortManifest,
  type ManifestEntry,
} from "./helpers.js";

interface RestoreRecord {
  restore_tag: string;
  recovery_target_name: string;
  expected: Record<string, string[]>;
  postgresql_auto_conf_written_by_pghoard_restore: string;
}

interface GroundTruth {
  restores: RestoreRecord[];
}

interface FixtureConfig {
  backup_sites: Record<string, { encryption_key_id?: string; encryption_keys?: Record<string, unknown> }>;
}

const QUERIES: Record<string, string> = {
  accounts: "select count(*)::text as a, sum(abalance)::text as b from pgbench_accounts",
  branches: "select count(*)::text as a, sum(bbalance)::text as b from pgbench_branches",
  history: "select count(*)::text as a, coalesce(sum(delta), 0)::text as b from pgbench_history",
  fixture_known:
    "select count(*)::text as a, md5(string_agg(id::text || '|' || label || '|' || val::text || '|' || coalesce(note, ''), ',' order by id)) as b from fixture_known",
};

const skip =
  hasShared && existsSync(pghoardMadeDir) ? false : "shared fixtures (../shared/fixtures/pghoard-made) absent";

describe("restoring backups made by upstream pghoard", { skip }, () => {
  for (const set of FIXTURE_SETS) {
    const truthPath = path.join(pghoardMadeDir, set, "ground-truth.json");
    const restores = existsSync(truthPath) ? (JSON.parse(readFileSync(truthPath, "utf8")) as GroundTruth).restores : [];
    for (const record of restores) {
      it(`${set} ${record.restore_tag}: files as upstream restored them, PostgreSQL reaches '${record.recovery_target_name}'`, async () => {
        const fixtureConfig = JSON.parse(
          await readFile(path.join(pghoardMadeDir, set, "pghoard.json"), "utf8"),
        ) as FixtureConfig;
        const work = await makeTempDir("restore-fixture");
        const target = path.join(work, "pgdata");
        const env = await makeDaemonEnv({ [set]: { pgDataDirectory: target } }, { restore_prefetch: 2 });
        const site = (env.config.backup_sites as Record<string, Record<string, unknown>>)[set];
        site.object_storage = { storage_type: "local", directory: path.join(pghoardMadeDir, set, "store") };
        site.active = false;
        const upstreamSite = fixtureConfig.backup_sites[set];
        if (upstreamSite.encryption_key_id) {
          site.encryption_key_id = upstreamSite.encryption_key_id;
          site.encryption_keys = upstreamSite.encryption_keys;
        }
        await env.writeConfig();

        const commandBin = `${process.execPath} ${postgresCommandBin}`;
        const result = await runRestoreCli([
          "get-basebackup",
          "--config",
          env.configPath,
          "--target-dir",
          target,
          "--recovery-target-name",
          record.recovery_target_name,
          "--recovery-target-action",
          "promote",
          "--restore-command-mode",
          "daemon",
          "--pghoard-postgres-command-bin",
          commandBin,
        ]);
        assert.equal(result.code, 0, result.stdout + result.stderr);
        assert.match(result.stdout, /Basebackup restoration complete\./);

        // Files: identical to upstream's restore, except the postgresql.auto.conf we append to.
        const upstreamManifest = JSON.parse(
          await readFile(path.join(pghoardMadeDir, set, `restored-manifest-${record.restore_tag}.json`), "utf8"),
        ) as ManifestEntry[];
        const withoutAutoConf = (entries: ManifestEntry[]): ManifestEntry[] =>
          entries.filter((e) => e.path !== "postgresql.auto.conf");
        assert.deepEqual(
          sortManifest(await directoryManifest(target)).filter((e) => e.path !== "postgresql.auto.conf"),
          sortManifest(withoutAutoConf(upstreamManifest)),
        );
        const autoConf = await readFile(path.join(target, "postgresql.auto.conf"), "utf8");
        const upstreamBlock = record.postgresql_auto_conf_written_by_pghoard_restore.replace(
          /restore_command = '\S+ --mode restore --port \d+ /,
          `restore_command = '${commandBin} --mode restore --port ${env.port} `,
        );
        assert.ok(autoConf.endsWith(upstreamBlock), `our block equals upstream's:\n${autoConf}`);
        assert.ok(autoConf.startsWith("# Do not edit this file manually!"), "the backup's own settings are kept");

        // PostgreSQL recovers with WAL served by our daemon.
        const daemon = await DaemonProcess.start(env);
        const cluster = await startCluster({ dataDir: target, settings: { archive_mode: "off" } });
        try {
          await cluster.waitForRecoveryEnd(180_000);
          for (const [name, sql] of Object.entries(QUERIES)) {
            const [row] = await cluster.query<{ a: string; b: string }>(sql);
            assert.deepEqual([row.a, row.b], record.expected[name], `${name} after recovery`);
          }
          const log = await cluster.logContents();
          assert.match(log, new RegExp(`recovery stopping at restore point "${record.recovery_target_name}"`));
          assert.match(log, /restored log file "[0-9A-F]{24}" from archive/);
          if (record.restore_tag === "restore-tl2")
            assert.match(log, /restored log file "00000002.history" from archive/);
        } finally {
          await cluster.destroy();
          await daemon.stop();
          await rm(work, { recursive: true, force: true });
        }
      });
    }
  }
});
