import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { BackupProgress, type ProgressState } from "../../src/basebackup/progress.js";

describe("BackupProgress", () => {
  it("logs on every 10 % step and phase change, not on every update, and publishes its state", () => {
    const lines: string[] = [];
    const log = {
      debug: () => undefined,
      info: (m: string) => lines.push(m),
      warn: () => undefined,
      error: () => undefined,
    };
    const published: ProgressState[] = [];
    const p = new BackupProgress("2024-05-01_13-56_0", "local-tar", log, (s) => published.push(s), 3_600_000);
    p.setTotal(1000);
    p.setPhase("uploading");
    const before = lines.length;
    for (let i = 0; i < 1000; i++) p.addDone(1);
    const progressLines = lines.slice(before);
    assert.ok(progressLines.length >= 10 && progressLines.length <= 12, `${progressLines.length} lines`);
    assert.match(progressLines[progressLines.length - 1], /100\.0%/);
    p.addUploaded(500);
    p.finish();
    const last = published[published.length - 1];
    assert.equal(last.phase, "done");
    assert.equal(last.bytes_done, 1000);
    assert.equal(last.bytes_uploaded, 500);
    assert.equal(last.percent, 100);
    assert.equal(last.name, "2024-05-01_13-56_0");
  });
});
