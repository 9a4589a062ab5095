/**
 * The per-file temp directory (tmp_root.ts) works, and the disk under it has room for the suite.
 * A machine short of disk fails tests all over the suite in ways that hide the cause (Swift
 * answers 507, drills refuse to start, PostgreSQL stops on WAL writes); this names it in one line.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, statfsSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";

/** The most the suite had on disk at once in a whole run (measured: 2.7 and 2.8 GB in two runs). */
const SUITE_PEAK_BYTES = 2.8 * 1024 ** 3;
/** Below this, other tests fail for want of space for certain: this one then says why. */
const TOO_LITTLE_BYTES = 1024 ** 3;
const hook = path.join(path.dirname(fileURLToPath(import.meta.url)), "tmp_root.js");

describe("the test files' temp directory", () => {
  it("is a directory of the process's own under the system temp dir, removed when the process exits", () => {
    const script =
      "const fs = require('node:fs'); const os = require('node:os');" +
      "fs.mkdirSync(os.tmpdir() + '/left/behind', { recursive: true });" +
      "fs.writeFileSync(os.tmpdir() + '/left/behind/file', 'x'); console.log(os.tmpdir());";
    const run = spawnSync(process.execPath, ["--import", hook, "-e", script], { encoding: "utf8" });
    assert.equal(run.status, 0, run.stderr);
    const dir = run.stdout.trim();
    assert.match(path.basename(dir), /^pghoard-tests-/);
    assert.ok(!existsSync(dir), `${dir} is gone`);
  });

  it("has room for the suite (fails below 1 GiB free, naming the shortage)", () => {
    if (!process.env.TMPDIR?.includes("pghoard-tests-")) return; // a single file run by hand
    const st = statfsSync(os.tmpdir());
    const free = st.bavail * st.bsize;
    assert.ok(
      free >= TOO_LITTLE_BYTES,
      `only ${Math.floor(free / 1024 ** 2)} MiB free under ${os.tmpdir()}; the suite needs about ` +
        `${Math.ceil(SUITE_PEAK_BYTES / 1024 ** 2)} MiB at its peak, and many unrelated tests fail without it`,
    );
  });
});
