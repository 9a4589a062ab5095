/**
 * operations.md §3.4 on a real PostgreSQL 15 whose pg_hba.conf lets the backup role in for
 * replication only (as many operators set it up): the server version is asked over the
 * replication connection, so `basic` and `pipe` backups work (they failed with
 * configuration_error when the version was queried over a normal connection). A pg_basebackup
 * of another major version raises `version_mismatch_error` and takes no backup. No pg_basebackup
 * of another major exists on this machine, so that one is a two-line script printing a 14.x version.
 * The basic backup runs under `standalone_hot_backup`: pg_basebackup fetches the WAL into the tar.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { chmod, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { findTarMember } from "../../src/catalog/index.js";
import {
  DaemonProcess,
  decodeStoredObject,
  httpRequest,
  makeDaemonEnv,
  sleep,
  type DaemonEnv,
} from "../daemon/helpers.js";
import { startCluster, type PgCluster } from "../helpers/pgcluster.js";
import { listStore, requestBackup, reloadSite, type Scenario } from "./helpers.js";

describe("basebackups with a replication-only pg_hba.conf", { timeout: 300_000 }, () => {
  let cluster: PgCluster;
  let env: DaemonEnv;
  let daemon: DaemonProcess | undefined;
  const site = "ro";

  const reload = (change: (siteConfig: Record<string, unknown>) => void): Promise<void> =>
    reloadSite(env, daemon!, site, change);

  before(async () => {
    cluster = await startCluster({ hba: ["host all repuser 127.0.0.1/32 reject"] });
    await cluster.query("CREATE ROLE repuser LOGIN REPLICATION");
    env = await makeDaemonEnv(
      {
        [site]: {
          pgDataDirectory: cluster.dataDir,
          extra: {
            nodes: [{ host: cluster.host, port: cluster.port, user: "repuser" }],
            basebackup_mode: "basic",
          },
        },
      },
      { log_level: "INFO" },
    );
    const wrongMajor = path.join(env.dir, "pg_basebackup14");
    await writeFile(wrongMajor, '#!/bin/sh\necho "pg_basebackup (PostgreSQL) 14.10"\n');
    await chmod(wrongMajor, 0o755);
    (env.config.backup_sites as Record<string, Record<string, unknown>>)[site]!.pg_basebackup_path = wrongMajor;
    await env.writeConfig();
    daemon = await DaemonProcess.start(env);
  });

  after(async () => {
    await daemon?.stop();
    await cluster?.destroy();
  });

  it("raises version_mismatch_error for a pg_basebackup of another major version", async () => {
    const res = await httpRequest(env.port, "PUT", `/${site}/archive/basebackup`);
    assert.ok(res.status < 300, res.body);
    const alert = path.join(env.alertDir, "version_mismatch_error");
    const deadline = Date.now() + 60_000;
    while (!existsSync(alert)) {
      if (Date.now() > deadline) assert.fail(`no version_mismatch_error: ${daemon!.logs().slice(-3000)}`);
      await sleep(200);
    }
    assert.match(daemon!.logs(), /does not match pg_basebackup version 140010/);
    assert.equal(existsSync(path.join(env.alertDir, "configuration_error")), false);
    assert.deepEqual(await listStore(env, site, "basebackup"), []);
  });

  it("takes basic (standalone_hot_backup) and pipe backups with replication access only", async () => {
    await reload((c) => {
      delete c.pg_basebackup_path;
      c.active_backup_mode = "standalone_hot_backup";
    });
    const s = { site, env, cluster, daemon: daemon! } as unknown as Scenario;
    const basic = await requestBackup(s);
    assert.equal(basic.metadata["basebackup-mode"], "basic");
    assert.equal(basic.metadata["active-backup-mode"], "standalone_hot_backup");
    assert.match(daemon!.logs(), /pg_basebackup --format tar .*--wal-method=fetch/);
    const { data } = await decodeStoredObject(env.storageDir, path.join(site, "basebackup", basic.name), {});
    assert.ok(
      findTarMember(data, (name) => /^(\.\/)?pg_wal\/[0-9A-F]{24}$/.test(name)),
      "the standalone backup carries its WAL",
    );
    assert.ok(findTarMember(data, "backup_label"));
    await reload((c) => {
      c.basebackup_mode = "pipe";
      c.active_backup_mode = "archive_command";
    });
    const pipe = await requestBackup(s);
    assert.equal(pipe.metadata["basebackup-mode"], "pipe");
    for (const alert of ["configuration_error", "authentication_error"]) {
      assert.equal(existsSync(path.join(env.alertDir, alert)), false, `${alert}: ${daemon!.logs().slice(-3000)}`);
    }
  });
});
