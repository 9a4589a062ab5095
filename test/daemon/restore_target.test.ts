/**
 * Restore target paths against a real PostgreSQL 15 data directory: only the names PostgreSQL asks
 * for, directly in pg_wal/, may be written; global/pg_control and every other PGDATA file are
 * refused with a 400 and left untouched.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readFile, symlink } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { isRestoreTargetName } from "../../src/daemon/restore_target.js";
import { startCluster, type PgCluster } from "../helpers/pgcluster.js";
import { DaemonProcess, httpRequest, makeDaemonEnv, type DaemonEnv } from "./helpers.js";

const SITE = "target";

async function digest(file: string): Promise<string> {
  return createHash("sha256")
    .update(await readFile(file))
    .digest("hex");
}

describe("restore target path", { timeout: 120_000 }, () => {
  let cluster: PgCluster;
  let env: DaemonEnv;
  let daemon: DaemonProcess | undefined;
  let segment: string;

  before(async () => {
    cluster = await startCluster();
    // The segment PostgreSQL is writing: in pg_wal, so the daemon would serve it from disk.
    const rows = await cluster.query<{ name: string }>("SELECT pg_walfile_name(pg_current_wal_lsn()) AS name");
    segment = rows[0].name;
    env = await makeDaemonEnv({ [SITE]: { pgDataDirectory: cluster.dataDir } }, { restore_prefetch: 0 });
    daemon = await DaemonProcess.start(env);
  });

  after(async () => {
    await daemon?.stop();
    await cluster?.destroy();
  });

  it("refuses global/pg_control and other PGDATA files, leaving them untouched", async () => {
    const pgdata = cluster.dataDir;
    const walDir = path.join(pgdata, "pg_wal");
    await mkdir(path.join(walDir, "sub"), { recursive: true });
    await symlink(path.join(pgdata, "global", "pg_control"), path.join(walDir, "RECOVERYHISTORY"));
    const refused = [
      path.join(pgdata, "global", "pg_control"),
      path.join(pgdata, "postgresql.auto.conf"),
      path.join(pgdata, "PG_VERSION"),
      path.join(pgdata, "RECOVERYXLOG"), // right name, wrong directory
      path.join(walDir, "archive_status", "RECOVERYXLOG"),
      path.join(walDir, "sub", "RECOVERYXLOG"),
      path.join(walDir, "000000010000000000000077"), // a segment name other than the one requested
      path.join(walDir, "RECOVERYHISTORY"), // a symlink to global/pg_control
    ];
    const before = new Map<string, string>();
    for (const file of [path.join(pgdata, "global", "pg_control"), path.join(pgdata, "postgresql.auto.conf")]) {
      before.set(file, await digest(file));
    }
    for (const target of refused) {
      const res = await httpRequest(env.port, "GET", `/${SITE}/archive/${segment}`, {
        "x-pghoard-target-path": target,
      });
      assert.equal(res.status, 400, `${target}: ${res.status} ${res.body}`);
      assert.match(res.body, /Invalid xlog file path/, target);
    }
    for (const [file, sum] of before) assert.equal(await digest(file), sum, `${file} changed`);
    assert.equal(existsSync(path.join(pgdata, "RECOVERYXLOG")), false);
    assert.equal(existsSync(path.join(walDir, "000000010000000000000077")), false);
    // The cluster is still fine.
    assert.equal((await cluster.query<{ one: number }>("SELECT 1 AS one"))[0].one, 1);
  });

  it("accepts the names PostgreSQL uses", async () => {
    const walDir = path.join(cluster.dataDir, "pg_wal");
    const first = await httpRequest(env.port, "GET", `/${SITE}/archive/${segment}`, {
      "x-pghoard-target-path": path.join(walDir, "RECOVERYXLOG"),
    });
    assert.equal(first.status, 201, first.body);
    // Served from pg_wal once; later requests go to the (empty) store: 404, but the target was accepted.
    for (const target of [path.join(walDir, segment), path.join(walDir, "..", "pg_wal", "RECOVERYXLOG")]) {
      const res = await httpRequest(env.port, "GET", `/${SITE}/archive/${segment}`, {
        "x-pghoard-target-path": target,
      });
      assert.equal(res.status, 404, `${target}: ${res.status} ${res.body}`);
    }
  });

  it("names: recovery names, the requested name and the daemon's own prefetch/temp names", () => {
    const seg = "000000010000000000000005";
    for (const ok of [
      "RECOVERYXLOG",
      "RECOVERYHISTORY",
      seg,
      `${seg}.pghoard.prefetch`,
      `${seg}.0123456789ab.pghoard.tmp`,
      ".RECOVERYXLOG.0123456789ab.pghoard.tmp",
    ]) {
      assert.equal(isRestoreTargetName(ok, seg), true, ok);
    }
    for (const bad of ["pg_control", "000000010000000000000006", `${seg}.partial`, "x.pghoard.tmp", "RECOVERYXLOG2"]) {
      assert.equal(isRestoreTargetName(bad, seg), false, bad);
    }
  });
});
