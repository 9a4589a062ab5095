/**
 * Every log line about a site's WAL event carries the `site` field (one structured field, not
 * the site's name in some messages only): archive, restore and upload/download lines of a daemon
 * in archive_command mode.
 */
import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import {
  DaemonProcess,
  httpRequest,
  makeDaemonEnv,
  makeFakePgdata,
  sleep,
  syntheticSegment,
  type DaemonEnv,
} from "./helpers.js";

const SITE = "sitefield";
const SEG = "000000010000000000000031";

describe("log lines carry the site field", { timeout: 120_000 }, () => {
  let env: DaemonEnv;
  let daemon: DaemonProcess | undefined;
  let pgdata: string;

  before(async () => {
    pgdata = await makeFakePgdata();
    env = await makeDaemonEnv({ [SITE]: { pgDataDirectory: pgdata } }, { log_level: "DEBUG" });
    daemon = await DaemonProcess.start(env);
  });

  after(async () => {
    await daemon?.stop();
  });

  it("archive and restore lines of a segment name the site in the site field", async () => {
    await writeFile(path.join(pgdata, "pg_wal", SEG), syntheticSegment(SEG));
    const offset = daemon!.logs().length;
    const put = await httpRequest(env.port, "PUT", `/${SITE}/archive/${SEG}`);
    assert.equal(put.status, 201, put.body);
    const target = path.join(pgdata, "pg_wal", "RECOVERYXLOG");
    const get = await httpRequest(env.port, "GET", `/${SITE}/archive/${SEG}`, {
      "x-pghoard-target-path": target,
    });
    assert.equal(get.status, 201, get.body);
    assert.equal((await httpRequest(env.port, "HEAD", `/${SITE}/archive/0000000100000000000000AB`)).status, 404);
    await sleep(300);
    const lines = daemon!
      .logs()
      .slice(offset)
      .split("\n")
      .filter((l) => /^\d{4}-/.test(l));
    const about = lines.filter((l) => l.includes(SEG) || l.includes("0000000100000000000000AB"));
    assert.ok(about.length >= 4, `the events are logged:\n${lines.join("\n")}`);
    const missing = about.filter((l) => !l.includes(`"site":"${SITE}"`));
    assert.deepEqual(missing, [], "every line about the site's WAL carries the site field");
  });
});
