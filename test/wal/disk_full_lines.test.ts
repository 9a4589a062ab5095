/**
 * pg_receivewal on a full disk: the disk_full_error alert stays until the segment that did not fit
 * (or a later one) arrives. A segment pg_receivewal had allocated before the disk filled up still
 * completes meanwhile; it used to remove the alert just raised, so the alert flickered (seen in
 * the full-disk fault test under load).
 */
import assert from "node:assert/strict";
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { describe, it } from "node:test";
import { getLogger } from "../../src/common/logger.js";
import {
  fullDiskSegmentAfter,
  paddedPartialShowsSpaceBack,
  removeCopiesUpTo,
  repairPartialFiles,
  showsSpaceBack,
} from "../../src/wal/receivexlog.js";

const OPEN_FAILED =
  'pg_receivewal: error: could not open write-ahead log file "000000010000000000000004.partial": No space left on device';
const PAD_FAILED =
  'pg_receivewal: error: could not pad write-ahead log file "000000010000000000000005.partial": No space left on device';

describe("pg_receivewal's full disk", () => {
  it("remembers the earliest segment that did not fit, and nothing for other lines", () => {
    assert.equal(fullDiskSegmentAfter(null, "pg_receivewal: finished segment at 0/3000000 (timeline 1)"), null);
    assert.equal(fullDiskSegmentAfter(null, OPEN_FAILED), "000000010000000000000004");
    assert.equal(fullDiskSegmentAfter("000000010000000000000004", PAD_FAILED), "000000010000000000000004");
    assert.equal(fullDiskSegmentAfter("000000010000000000000005", OPEN_FAILED), "000000010000000000000004");
    assert.equal(fullDiskSegmentAfter(null, "could not write to file: Disk quota exceeded"), "");
    assert.equal(fullDiskSegmentAfter("", OPEN_FAILED), "000000010000000000000004");
  });

  it("only the segment that did not fit or a later one completing shows space is back", () => {
    const full = fullDiskSegmentAfter(null, OPEN_FAILED);
    assert.equal(showsSpaceBack(full, "000000010000000000000003"), false, "allocated before the disk filled");
    assert.equal(showsSpaceBack(full, "000000010000000000000004"), true, "the one that did not fit, written now");
    assert.equal(showsSpaceBack(full, "000000010000000000000005"), true);
    assert.equal(showsSpaceBack(full, "00000002.history"), false);
    assert.equal(showsSpaceBack(null, "000000010000000000000003"), true, "not full: any segment");
    assert.equal(showsSpaceBack("", "000000010000000000000003"), true, "a message without a name: any segment");
  });

  // An idle cluster may not complete its next segment for hours: pg_receivewal padding the segment
  // that did not fit (or a later one) to its full size shows the room is back (seen in the
  // full-disk fault test: a short second ENOSPC after the space returned kept the alert for good).
  it("a fully padded .partial of that segment or a later one also shows space is back", () => {
    const full = fullDiskSegmentAfter(null, OPEN_FAILED);
    const SEG = 16 * 1024 * 1024;
    const partial = (name: string, size: number): { name: string; size: number } => ({ name: `${name}.partial`, size });
    assert.equal(paddedPartialShowsSpaceBack(null, [partial("000000010000000000000004", SEG)], SEG), false);
    assert.equal(paddedPartialShowsSpaceBack(full, [partial("000000010000000000000004", SEG)], SEG), true);
    assert.equal(paddedPartialShowsSpaceBack(full, [partial("000000010000000000000006", SEG)], SEG), true);
    assert.equal(
      paddedPartialShowsSpaceBack(full, [partial("000000010000000000000004", 8192)], SEG),
      false,
      "a padding cut short by the full disk",
    );
    assert.equal(
      paddedPartialShowsSpaceBack(full, [partial("000000010000000000000003", SEG)], SEG),
      false,
      "allocated before the disk filled",
    );
    assert.equal(
      paddedPartialShowsSpaceBack(full, [{ name: "000000010000000000000004", size: SEG }], SEG),
      false,
      "a completed segment is the watcher's to report",
    );
    assert.equal(paddedPartialShowsSpaceBack("", [partial("000000010000000000000002", SEG)], SEG), true);
  });

  it("a completed segment removes the kept copies of its own and of earlier short .partial files", async () => {
    // A clean-clone run left 000000010000000000000006.partial_incomplete behind: a daemon killed
    // while the disk was full had kept it, and its segment completed before the next run watched,
    // so the next run, which removed only the copy of each segment it saw complete, never did.
    const dir = await mkdtemp(path.join(os.tmpdir(), "pghoard-copies-"));
    try {
      const names = [
        "000000010000000000000005.partial_incomplete",
        "000000010000000000000006.partial_incomplete",
        "000000010000000000000008.partial_incomplete",
        "000000010000000000000008.partial",
        "000000010000000000000007",
        "00000002.history",
      ];
      for (const name of names) await writeFile(path.join(dir, name), "x");
      assert.deepEqual(await removeCopiesUpTo(dir, "00000002.history"), [], "only a segment name counts");
      assert.deepEqual((await removeCopiesUpTo(dir, "000000010000000000000007")).sort(), [
        "000000010000000000000005.partial_incomplete",
        "000000010000000000000006.partial_incomplete",
      ]);
      assert.deepEqual((await readdir(dir)).sort(), [
        "000000010000000000000007",
        "000000010000000000000008.partial",
        "000000010000000000000008.partial_incomplete",
        "00000002.history",
      ]);
      assert.deepEqual(await removeCopiesUpTo(dir, "000000010000000000000008"), [
        "000000010000000000000008.partial_incomplete",
      ]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
  it("a start finds the kept copies' segments complete and removes the copies", async () => {
    // A second clean-clone run left the copy of segment 6 again: the killed run's receiver had
    // finished segment 6 before this run started, which found it complete at start-up (so no
    // watcher reported it) and had no later .partial yet.
    const dir = await mkdtemp(path.join(os.tmpdir(), "pghoard-copies-"));
    try {
      for (const name of [
        "000000010000000000000006",
        "000000010000000000000006.partial_incomplete",
        "000000010000000000000007.partial_incomplete",
      ])
        await writeFile(path.join(dir, name), "x");
      assert.deepEqual(await repairPartialFiles(dir, getLogger("test")), []);
      assert.deepEqual((await readdir(dir)).sort(), [
        "000000010000000000000006",
        "000000010000000000000007.partial_incomplete",
      ]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
