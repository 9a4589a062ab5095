/**
 * `pghoard_restore request-basebackup --wait` against a running daemon streaming a real cluster in
 * the default modes (pg_receivexlog, basic): the request is named, each phase of the backup is an
 * INFO line in the daemon log, the backup starts with a fast checkpoint, and the command prints
 * the stored backup's name; a request the daemon cannot start exits 1 with the reason.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { findFreePort, startCluster, type PgCluster } from "../helpers/pgcluster.js";
import { repoRoot } from "../helpers/paths.js";
import { httpRequest, listStoredNames, makeDaemonEnv, type DaemonEnv, type DaemonProcess } from "../daemon/helpers.js";
import { SLOT, startDaemon } from "../wal/streaming.js";

const restoreBin = path.join(repoRoot, "bin", "pghoard_restore.js");

async function runRestore(args: string[], env: DaemonEnv): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [restoreBin, ...args], {
      env: { ...process.env, HOME: env.dir },
      timeout: 180_000,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === "number" ? e.code : -1, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
  }
}

describe("pghoard_restore request-basebackup", { timeout: 240_000 }, () => {
  let cluster: PgCluster;
  let env: DaemonEnv;
  let daemon: DaemonProcess | undefined;

  before(async () => {
    // A long checkpoint_timeout: a spread checkpoint would take minutes, a fast one does not.
    cluster = await startCluster({ settings: { checkpoint_timeout: "1h", checkpoint_completion_target: "0.9" } });
    env = await makeDaemonEnv({
      main: {
        pgDataDirectory: cluster.dataDir,
        extra: {
          active_backup_mode: "pg_receivexlog",
          nodes: [{ host: "127.0.0.1", port: cluster.port, user: "postgres", slot: SLOT }],
        },
      },
      // Nothing listens there: the daemon cannot read the server version, so it cannot start a backup.
      unreachable: {
        pgDataDirectory: cluster.dataDir,
        extra: { nodes: [{ host: "127.0.0.1", port: await findFreePort(), user: "postgres" }] },
      },
    });
    daemon = await startDaemon(env);
  });

  after(async () => {
    await daemon?.stop();
    await cluster?.destroy();
  });

  it("PUT answers 201 with a JSON body naming the request", async () => {
    const res = await httpRequest(env.port, "PUT", "/unreachable/basebackup");
    assert.equal(res.status, 201);
    const body = JSON.parse(res.body) as { request_id: string; site: string };
    assert.equal(body.site, "unreachable");
    assert.match(body.request_id, /^\d{8}T\d{9}Z-[0-9a-f]{8}$/);
  });

  it("--wait prints the phases and the stored backup's name; the daemon logs each phase at INFO", async () => {
    const offset = daemon!.logs().length;
    const result = await runRestore(
      ["request-basebackup", "--site", "main", "--config", env.configPath, "--wait"],
      env,
    );
    assert.equal(result.code, 0, `${result.stdout}${result.stderr}\n${daemon!.logs().slice(offset)}`);
    assert.match(result.stdout, /^Requested a basebackup of site 'main' \(request \S+\)$/m);
    const done = /^Basebackup (\S+) of site 'main' completed in [\d.]+ s$/m.exec(result.stdout);
    assert.ok(done, result.stdout);
    const name = done[1];
    assert.ok((await listStoredNames(env.storageDir, "main", "basebackup")).includes(name));

    const logs = daemon!.logs().slice(offset);
    assert.match(logs, /\tINFO\t.*Started: \S*pg_basebackup .*--checkpoint=fast/);
    for (const phase of ["waiting for checkpoint \\(fast\\)", "streaming", "compressing", "uploading", "done: "]) {
      assert.match(logs, new RegExp(`\\tINFO\\t.*Basebackup ${name}: ${phase}`), `phase ${phase}:\n${logs}`);
    }
    assert.doesNotMatch(logs, /starting: .*\(\d+\.\d%\)/, "no progress line claims the backup is 'starting'");
  });

  it("a request the daemon cannot start exits 1 with the reason", async () => {
    const result = await runRestore(
      ["request-basebackup", "--site", "unreachable", "--config", env.configPath, "--wait", "--timeout", "120"],
      env,
    );
    assert.equal(result.code, 1, result.stdout + result.stderr);
    assert.match(result.stdout, /^FATAL: RestoreError: Basebackup request \S+ was not started: could not connect/m);
  });
});
