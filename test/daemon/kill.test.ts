/**
 * Durability: the daemon is SIGKILLed again and again while PostgreSQL archives under load. A 201
 * is only sent once the segment is stored, so every segment PostgreSQL marked `.done` must be in
 * storage afterwards and decode to the bytes in pg_wal.
 */
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { findFreePort, startCluster, type PgCluster } from "../helpers/pgcluster.js";
import {
  DaemonProcess,
  decodeStoredObject,
  doneSegments,
  listStoredNames,
  makeDaemonEnv,
  makeKeyPair,
  postgresCommandBin,
  sleep,
  switchWal,
  type DaemonEnv,
} from "./helpers.js";

const SITE = "killtest";
const KEY_ID = "killtest-key";

describe("SIGKILL while archiving", () => {
  let cluster: PgCluster;
  let env: DaemonEnv;
  let daemon: DaemonProcess | undefined;
  const keys = makeKeyPair();

  before(async () => {
    const port = await findFreePort();
    cluster = await startCluster({
      archiveCommand: `${process.execPath} ${postgresCommandBin} --mode archive --port ${port} --site ${SITE} --xlog %f`,
      settings: { wal_keep_size: "4GB", wal_recycle: "off", max_wal_size: "4GB" },
    });
    env = await makeDaemonEnv(
      { [SITE]: { pgDataDirectory: cluster.dataDir, keyId: KEY_ID, keys } },
      { http_port: port },
    );
    daemon = await DaemonProcess.start(env);
    await cluster.pgbench(["-i", "-s", "2"]);
  });

  after(async () => {
    await daemon?.stop("SIGKILL");
    await cluster?.destroy();
  });

  it("loses no segment PostgreSQL was told is archived", { timeout: 600_000 }, async () => {
    let loadRunning = true;
    const load = cluster.pgbench(["-c", "2", "-T", "30"]).finally(() => {
      loadRunning = false;
    });
    const switcher = (async () => {
      while (loadRunning) {
        await switchWal(cluster).catch(() => undefined);
        await sleep(400);
      }
    })();
    let kills = 0;
    while (loadRunning) {
      await sleep(1500 + Math.floor(Math.random() * 2000));
      await daemon!.stop("SIGKILL");
      kills++;
      daemon = await DaemonProcess.start(env, { logName: `daemon-${kills}.log` });
    }
    await load;
    await switcher;
    assert.ok(kills >= 5, `only ${kills} kills`);

    // Let PostgreSQL catch up (its archiver retries failed segments; a WAL switch wakes it up).
    const last = await switchWal(cluster);
    const deadline = Date.now() + 240_000;
    for (;;) {
      const rows = await cluster.query<{ last_archived_wal: string | null }>(
        "SELECT last_archived_wal FROM pg_stat_archiver",
      );
      if ((rows[0]?.last_archived_wal ?? "") >= last) break;
      assert.ok(Date.now() < deadline, `archiving did not catch up to ${last}`);
      await cluster.query("SELECT pg_switch_wal()");
      await sleep(1000);
    }

    const done = (await doneSegments(cluster)).filter((n) => /^[0-9A-F]{24}$/.test(n));
    assert.ok(done.length >= 10, `expected many archived segments, got ${done.length}`);
    const stored = new Set(await listStoredNames(env.storageDir, SITE, "xlog"));
    for (const name of done) {
      assert.ok(stored.has(name), `${name} is .done in pg_wal but missing from storage`);
      const original = await readFile(path.join(cluster.dataDir, "pg_wal", name));
      const { data } = await decodeStoredObject(env.storageDir, `${SITE}/xlog/${name}`, { [KEY_ID]: keys.privatePem });
      assert.ok(data.equals(original), `${name} in storage differs from pg_wal`);
    }
  });
});
