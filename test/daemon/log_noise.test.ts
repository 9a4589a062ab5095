/**
 * Expected conditions log one line without a stack trace: an upload that keeps failing logs its
 * error once, not once per retry (rate-limited: then once a minute with a count), and succeeds
 * once the store is usable again; a HEAD for a segment that is not
 * in the archive (restore_command probing for the end of the archive) logs no WARNING.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdir, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import {
  DaemonProcess,
  httpRequest,
  listStoredNames,
  makeDaemonEnv,
  makeFakePgdata,
  sleep,
  syntheticSegment,
  type DaemonEnv,
} from "./helpers.js";

const SITE = "noise";
const SEG = "000000010000000000000021";

function linesSince(logs: string, offset: number): string[] {
  return logs.slice(offset).split("\n").filter(Boolean);
}

describe("daemon log noise", { timeout: 120_000 }, () => {
  let env: DaemonEnv;
  let daemon: DaemonProcess | undefined;
  let pgdata: string;

  before(async () => {
    pgdata = await makeFakePgdata();
    // The alert file after the 3rd attempt shows the retries happened.
    env = await makeDaemonEnv({ [SITE]: { pgDataDirectory: pgdata } }, { upload_retries_warning_limit: 2 });
    daemon = await DaemonProcess.start(env);
  });

  after(async () => {
    await daemon?.stop();
  });

  it("a HEAD for a missing segment logs no WARNING", async () => {
    const offset = daemon!.logs().length;
    for (let i = 0; i < 3; i++) {
      assert.equal((await httpRequest(env.port, "HEAD", `/${SITE}/archive/0000000100000000000000AB`)).status, 404);
    }
    await sleep(200);
    const lines = linesSince(daemon!.logs(), offset);
    assert.ok(lines.length > 0, "the requests are logged");
    assert.deepEqual(
      lines.filter((l) => /\t(WARNING|ERROR)\t/.test(l)),
      [],
    );
  });

  it("a failing upload logs its error once, no stack trace, and succeeds later", async () => {
    // The store cannot take the object: its type directory is a file (mkdir fails with ENOTDIR/EEXIST).
    const typeDir = path.join(env.storageDir, SITE, "xlog");
    await mkdir(path.dirname(typeDir), { recursive: true });
    await rm(typeDir, { recursive: true, force: true });
    await writeFile(typeDir, "not a directory");
    await writeFile(path.join(pgdata, "pg_wal", SEG), syntheticSegment(SEG));
    const offset = daemon!.logs().length;
    const put = httpRequest(env.port, "PUT", `/${SITE}/archive/${SEG}`);

    // Three attempts or more (0.5 s and 1 s backoff) raise the alert file.
    const alert = path.join(env.alertDir, "upload_retries_warning");
    const deadline = Date.now() + 60_000;
    while (!existsSync(alert)) {
      assert.ok(Date.now() < deadline, `no retries:\n${daemon!.logs().slice(offset)}`);
      await sleep(200);
    }
    const retries = linesSince(daemon!.logs(), offset).filter((l) => l.includes("need to retry"));
    assert.equal(retries.length, 1, `the repeated error is logged once:\n${retries.join("\n")}`);
    const lines = linesSince(daemon!.logs(), offset);
    assert.deepEqual(
      lines.filter((l) => /^\s+at /.test(l) || !/^\d{4}-\d\d-\d\d /.test(l)),
      [],
      "every log line is a complete record, no stack trace lines",
    );
    for (const line of retries) {
      assert.match(
        line,
        new RegExp(`Problem uploading .* to ${SITE}/xlog/${SEG}, need to retry \\(attempt \\d+\\): \\w+`),
      );
    }

    await rm(typeDir);
    await mkdir(typeDir);
    const res = await put;
    assert.equal(res.status, 201, res.body);
    assert.ok((await listStoredNames(env.storageDir, SITE, "xlog")).includes(SEG));
  });
});
