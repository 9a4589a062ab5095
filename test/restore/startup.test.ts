/**
 * Restore start-up: the real `pghoard_restore get-basebackup` of a pghoard-made encrypted snappy
 * backup runs with a preload (`--require`, inherited by its worker threads) that records which
 * packages each thread has loaded: when the main thread starts an object worker, when a worker
 * reports an object done, and when the process exits. The object worker must start before the
 * command's CLI layer (commander) is loaded, the main thread must not load the drill's PostgreSQL
 * client or any cloud SDK for a local store, and a worker loads only the decode/extract path.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, describe, it } from "node:test";

import { makeTempDir } from "../helpers/pgcluster.js";
import { pghoardMadeDir, runRestoreCli, writeFixtureConfig } from "./helpers.js";

const SET = "snappy-enc-localtar";
const skip = existsSync(path.join(pghoardMadeDir, SET)) ? false : `fixture set ${SET} is absent`;

/** CommonJS preload: one JSON line per event, with the packages the thread has loaded so far. */
const PRELOAD = `
const fs = require("node:fs");
const threads = require("node:worker_threads");
const log = process.env.MODULE_TRACE_LOG;
function packages() {
  const names = new Set();
  for (const file of Object.keys(require.cache)) {
    const m = /node_modules\\/((?:@[^/]+\\/)?[^/]+)\\//.exec(file.slice(file.lastIndexOf("node_modules/")));
    if (m) names.add(m[1]);
  }
  return [...names].sort();
}
function record(event) {
  fs.appendFileSync(log, JSON.stringify({ event, thread: threads.threadId, packages: packages() }) + "\\n");
}
if (threads.isMainThread) {
  const Original = threads.Worker;
  threads.Worker = class extends Original {
    constructor(...args) {
      record("spawn " + String(args[0]));
      super(...args);
    }
  };
  require("node:module").syncBuiltinESMExports();
  process.on("exit", () => record("exit"));
} else if (threads.parentPort) {
  const port = threads.parentPort;
  const post = port.postMessage.bind(port);
  port.postMessage = (message, transfer) => {
    if (message && message.type === "done") record("done");
    return post(message, transfer);
  };
}
`;

interface TraceLine {
  event: string;
  thread: number;
  packages: string[];
}

/** Packages of the decode/extract path (codecs, CRC, tar reader and what they load). */
const WORKER_PACKAGES =
  /^(snappy|@napi-rs\/snappy-.*|@node-rs\/crc32(-.*)?|tar-stream|streamx|fast-fifo|b4a|text-decoder|events-universal|queue-tick|bare-events)$/;
const CLOUD_SDK = /^(@aws-sdk|@smithy|@google-cloud|@azure|ssh2|ssh2-sftp-client)(\/|$)/;

describe("restore start-up", { skip }, () => {
  const dirs: string[] = [];
  after(async () => {
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  it("starts the object worker before loading the command, and loads only what a local restore uses", async () => {
    const dir = await makeTempDir("restore-startup");
    dirs.push(dir);
    const config = await writeFixtureConfig(SET, dir);
    const preload = path.join(dir, "trace.cjs");
    const log = path.join(dir, "trace.log");
    await writeFile(preload, PRELOAD);
    const target = path.join(dir, "pgdata");
    const result = await runRestoreCli(["get-basebackup", "--config", config, "--target-dir", target], {
      NODE_OPTIONS: `--require ${preload}`,
      MODULE_TRACE_LOG: log,
    });
    assert.equal(result.code, 0, result.stdout + result.stderr);
    assert.ok(existsSync(path.join(target, "global", "pg_control")));

    const lines = (await readFile(log, "utf8"))
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as TraceLine);
    const spawns = lines.filter(
      (l) => l.thread === 0 && l.event.startsWith("spawn ") && l.event.includes("object_worker"),
    );
    assert.ok(spawns.length >= 1, `no object worker was started: ${JSON.stringify(lines.map((l) => l.event))}`);
    // Started first thing: the main thread had not loaded the CLI (or anything else) yet.
    assert.deepEqual(
      spawns[0].packages.filter((p) => p === "commander" || p === "pino"),
      [],
      `the object worker started only after the command loaded: ${spawns[0].packages.join(", ")}`,
    );

    const exit = lines.find((l) => l.thread === 0 && l.event === "exit");
    assert.ok(exit, "the main thread's exit was not recorded");
    assert.ok(exit.packages.includes("commander"), "the trace saw the CLI being loaded");
    const mainExtra = exit.packages.filter((p) => p === "pg" || CLOUD_SDK.test(p));
    assert.deepEqual(mainExtra, [], "a local restore loaded the PostgreSQL client or a cloud SDK");

    const done = lines.filter((l) => l.thread !== 0 && l.event === "done");
    assert.ok(done.length >= 1, "no object worker reported an object done");
    for (const line of done) {
      assert.ok(line.packages.includes("tar-stream"), "the trace saw the worker's tar reader");
      const extra = line.packages.filter((p) => !WORKER_PACKAGES.test(p));
      assert.deepEqual(extra, [], `object worker ${line.thread} loaded more than the decode/extract path`);
    }
  });
});
