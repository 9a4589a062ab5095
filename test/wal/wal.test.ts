import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import {
  formatLsn,
  formatWalName,
  historyFileName,
  InvalidLsnError,
  InvalidWalNameError,
  isBackupLabelName,
  isHistoryName,
  isPartialName,
  isWalName,
  LsnMismatchError,
  lsnSegmentOffset,
  lsnToWalName,
  nextWalName,
  parseLsn,
  parseTimelineHistory,
  parseWalName,
  previousWalName,
  readWalHeader,
  segmentsPerLogId,
  TimelineHistoryError,
  timelineForLsn,
  timelineOfHistoryName,
  timelineOfWalName,
  toLsn,
  verifyWalFile,
  verifyWalHeader,
  WAL_SEG_SIZE,
  walNameOnTimeline,
  walNameToLsn,
  walNameToSegmentNumber,
  WalVerificationError,
} from "../../src/wal/index.js";

// Upstream test/test_wal.py: PG 9.5, timeline 1, LSN 0/B000000.
const HEADER_PG95_B = Buffer.from("87d00200010000000000000b0000000000000000", "hex");
// Upstream test/test_wal.py: PG 9.5, timeline 47 (0x2f), LSN 11/9C000000.
const HEADER_PG95_11_9C = Buffer.from("87d006002f0000000000009c1100000000000000", "hex");

function header(magic: number, timeline: number, pageaddr: bigint, info = 0): Buffer {
  const buf = Buffer.alloc(20);
  buf.writeUInt16LE(magic, 0);
  buf.writeUInt16LE(info, 2);
  buf.writeUInt32LE(timeline, 4);
  buf.writeBigUInt64LE(pageaddr, 8);
  return buf;
}

describe("wal/lsn", () => {
  it("parses and formats PostgreSQL LSN text", () => {
    assert.equal(parseLsn("0/7922C68"), 0x7922c68n);
    assert.equal(parseLsn("16/B374D848"), 0x16b374d848n);
    assert.equal(parseLsn("0/10000AB"), 16777387n);
    assert.equal(parseLsn("ffffffff/ffffffff"), (1n << 64n) - 1n);
    assert.equal(formatLsn(0x7922c68n), "0/7922C68");
    assert.equal(formatLsn(0x16b374d848n), "16/B374D848");
    assert.equal(formatLsn(0n), "0/0");
    assert.equal(formatLsn(parseLsn("1/10000AB")), "1/10000AB");
    assert.equal(toLsn(1234), 1234n);
    assert.equal(toLsn("0/4D2"), 1234n);
    assert.equal(toLsn(5n), 5n);
  });

  it("rejects malformed LSNs", () => {
    for (const bad of ["foo", "0/", "/1", "1/2/3", "123456789/0", "0x1/2", ""]) {
      assert.throws(() => parseLsn(bad), InvalidLsnError, bad);
    }
    assert.throws(() => formatLsn(-1n), InvalidLsnError);
    assert.throws(() => formatLsn(1n << 64n), InvalidLsnError);
    assert.throws(() => toLsn(-1), InvalidLsnError);
  });
});

describe("wal/names", () => {
  it("classifies file names", () => {
    assert.equal(isWalName("00000001000000000000000B"), true);
    assert.equal(isWalName("00000001000000000000000b"), false, "upper case only");
    assert.equal(isWalName("00000001000000000000000B.partial"), false);
    assert.equal(isWalName("0000000100000000000000"), false);
    assert.equal(isHistoryName("00000002.history"), true);
    assert.equal(isHistoryName("2.history"), false);
    assert.equal(isPartialName("00000001000000000000000B.partial"), true);
    assert.equal(isPartialName("00000001000000000000000B"), false);
    assert.equal(isBackupLabelName("000000010000000000000002.00000028.backup"), true);
    assert.equal(isBackupLabelName("000000010000000000000002"), false);
  });

  it("maps names to LSNs and back (upstream examples)", () => {
    assert.equal(formatLsn(walNameToLsn("0000002E0000001100000004")), "11/4000000");
    assert.equal(formatLsn(walNameToLsn("000000FF0000001100000004")), "11/4000000", "timeline does not matter");
    assert.equal(lsnToWalName("11/4000000", 0x2e), "0000002E0000001100000004");
    assert.equal(lsnToWalName("11/9C000000", 47), "0000002F000000110000009C");
    assert.equal(lsnToWalName("F/190001B0", 4), "000000040000000F00000019");
    assert.equal(lsnToWalName(parseLsn("0/10000AB"), 1), "000000010000000000000001");
    assert.equal(lsnSegmentOffset("0/10000AB"), 0xab);
    // Log ids with the high byte set must round-trip (an upstream regression).
    const high = "000000010100000000000005";
    assert.equal(lsnToWalName(walNameToLsn(high), 1), high);
    assert.equal(nextWalName(high), "000000010100000000000006");
    assert.equal(previousWalName(high), "000000010100000000000004");
    assert.equal(walNameToSegmentNumber("000000010000000100000000"), 256n);
  });

  it("steps to the next/previous segment across log id boundaries", () => {
    assert.equal(nextWalName("0000002E0000001100000004"), "0000002E0000001100000005");
    assert.equal(previousWalName("0000002E0000001100000004"), "0000002E0000001100000003");
    assert.equal(nextWalName("0000000100000000000000FF"), "000000010000000100000000");
    assert.equal(previousWalName("000000010000000100000000"), "0000000100000000000000FF");
    assert.equal(previousWalName("000000010000000000000000"), null);
    // Before 9.3 the last segment (FF) of each log id was never used.
    assert.equal(nextWalName("0000000100000000000000FE", WAL_SEG_SIZE, 90200), "000000010000000100000000");
    assert.equal(previousWalName("000000010000000100000000", WAL_SEG_SIZE, 90200), "0000000100000000000000FE");
    assert.equal(nextWalName("0000000100000000000000FE", WAL_SEG_SIZE, 90300), "0000000100000000000000FF");
    assert.throws(() => nextWalName("00000001FFFFFFFF000000FF"), RangeError);
  });

  it("supports other segment sizes", () => {
    const mib64 = 64 * 1024 * 1024;
    assert.equal(segmentsPerLogId(mib64), 64n);
    assert.equal(nextWalName("00000001000000000000003F", mib64), "000000010000000100000000");
    assert.equal(previousWalName("000000010000000100000000", mib64), "00000001000000000000003F");
    assert.equal(formatLsn(walNameToLsn("000000010000000100000002", mib64)), "1/8000000");
    assert.equal(lsnToWalName("1/8000001", 1, mib64), "000000010000000100000002");
    const gib = 1024 * 1024 * 1024;
    assert.equal(nextWalName("000000010000000000000003", gib), "000000010000000100000000");
    assert.equal(nextWalName("000000010000000000000000", 1024 * 1024), "000000010000000000000001");
    assert.equal(nextWalName("000000010000000000000FFF", 1024 * 1024), "000000010000000100000000");
    assert.throws(() => nextWalName("000000010000000000000000", 3 * 1024 * 1024), RangeError);
    assert.throws(() => nextWalName("000000010000000000000000", 512 * 1024), RangeError);
  });

  it("counts segments per log id like upstream", () => {
    assert.equal(segmentsPerLogId(WAL_SEG_SIZE, 90200), 255n);
    assert.equal(segmentsPerLogId(WAL_SEG_SIZE, 90300), 256n);
    assert.equal(segmentsPerLogId(WAL_SEG_SIZE, 90301), 256n);
    assert.equal(segmentsPerLogId(WAL_SEG_SIZE, 150000), 256n);
    assert.equal(segmentsPerLogId(WAL_SEG_SIZE, null), 256n);
    assert.equal(segmentsPerLogId(), 256n);
  });

  it("handles timelines", () => {
    assert.equal(timelineOfWalName("0000002E0000001100000004"), 0x2e);
    assert.equal(walNameOnTimeline("0000002E0000001100000004", 3), "000000030000001100000004");
    assert.equal(historyFileName(2), "00000002.history");
    assert.equal(historyFileName(0x1a), "0000001A.history");
    assert.equal(timelineOfHistoryName("0000001A.history"), 26);
    assert.throws(() => timelineOfHistoryName("0000001a.history"), InvalidWalNameError);
    assert.throws(() => historyFileName(0), RangeError);
    assert.deepEqual(parseWalName("0000002E0000001100000004"), { timeline: 0x2e, log: 0x11, seg: 4 });
    assert.equal(formatWalName({ timeline: 1, log: 0x11, seg: 0x9c }), "00000001000000110000009C");
    assert.throws(() => parseWalName("nope"), InvalidWalNameError);
    assert.throws(() => formatWalName({ timeline: -1, log: 0, seg: 0 }), RangeError);
  });
});

describe("wal/verify", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "pghoard-wal-test-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("reads upstream's example headers", () => {
    const h = readWalHeader(HEADER_PG95_B);
    assert.equal(h.serverVersion, 90500);
    assert.equal(h.timeline, 1);
    assert.equal(formatLsn(h.pageaddr), "0/B000000");
    assert.equal(lsnToWalName(h.pageaddr, h.timeline, WAL_SEG_SIZE, h.serverVersion), "00000001000000000000000B");
    assert.equal(verifyWalHeader(HEADER_PG95_B, "00000001000000000000000B").serverVersion, 90500);

    const h2 = readWalHeader(Buffer.concat([HEADER_PG95_11_9C, Buffer.from("XXX")]));
    assert.equal(h2.timeline, 47);
    assert.equal(formatLsn(h2.pageaddr), "11/9C000000");
    const h94 = readWalHeader(Buffer.concat([Buffer.from([0x7e, 0xd0]), HEADER_PG95_11_9C.subarray(2)]));
    assert.equal(h94.serverVersion, 90400);
  });

  it("rejects short input and unknown magic", () => {
    assert.throws(() => readWalHeader(HEADER_PG95_11_9C.subarray(0, 18)), /need at least 20 bytes/);
    const unknown = Buffer.concat([Buffer.from([0x7f, 0xd0]), HEADER_PG95_11_9C.subarray(2)]);
    assert.throws(() => readWalHeader(unknown), /unknown WAL magic 0xD07F/);
    assert.throws(
      () => verifyWalHeader(unknown, "0000002F000000110000009C"),
      (err: unknown) => {
        assert.ok(err instanceof WalVerificationError);
        assert.match((err as Error).message, /verification failed: unknown WAL magic/);
        return true;
      },
    );
    assert.throws(() => verifyWalHeader(Buffer.alloc(0), "0000002F000000110000009C"), WalVerificationError);
  });

  it("reports an LSN mismatch with expected and found LSNs", () => {
    assert.throws(
      () => verifyWalHeader(HEADER_PG95_11_9C, "0".repeat(24)),
      (err: unknown) => {
        assert.ok(err instanceof LsnMismatchError);
        assert.match(err.message, /Expected LSN 0\/0 in WAL file "0{24}"; found 11\/9C000000/);
        assert.equal(err.expectedLsn, 0n);
        assert.equal(err.foundLsn, 0x119c000000n);
        return true;
      },
    );
    // Only the position is compared, not the timeline.
    verifyWalHeader(HEADER_PG95_11_9C, "0000002F000000110000009C");
    verifyWalHeader(HEADER_PG95_11_9C, "00000001000000110000009C");
  });

  it("knows every supported magic", () => {
    const magics: Array<[number, number]> = [
      [0xd075, 90300],
      [0xd07e, 90400],
      [0xd087, 90500],
      [0xd093, 90600],
      [0xd097, 100000],
      [0xd098, 110000],
      [0xd101, 120000],
      [0xd106, 130000],
      [0xd10d, 140000],
      [0xd110, 150000],
      [0xd113, 160000],
      [0xd116, 170000],
      [0xd118, 180000],
    ];
    for (const [magic, version] of magics) {
      const h = verifyWalHeader(header(magic, 3, 0x3000000n), "000000030000000000000003");
      assert.equal(h.serverVersion, version);
    }
  });

  it("uses pre-9.3 arithmetic for 9.2 headers", () => {
    // Segment 1/0 on 9.2 starts at (1 * 255 + 0) * 16 MiB = 0/FF000000.
    verifyWalHeader(header(0xd071, 1, 0xff000000n), "000000010000000100000000");
    assert.throws(() => verifyWalHeader(header(0xd071, 1, 0x100000000n), "000000010000000100000000"), LsnMismatchError);
  });

  it("reads the segment size from a PG ≥ 11 long header", () => {
    const mib64 = 64 * 1024 * 1024;
    const long = Buffer.alloc(40);
    header(0xd110, 1, 0x108000000n, 0x0002).copy(long);
    long.writeBigUInt64LE(7_000_000_000_000_000_000n, 24);
    long.writeUInt32LE(mib64, 32);
    long.writeUInt32LE(8192, 36);
    const h = verifyWalHeader(long, "000000010000000100000002");
    assert.equal(h.segSize, mib64);
    // The same bytes cut to 20 fall back to 16 MiB, under which the name means another LSN.
    assert.throws(() => verifyWalHeader(long.subarray(0, 20), "000000010000000100000002"), LsnMismatchError);
    verifyWalHeader(long.subarray(0, 20), "000000010000000100000002", { segSize: mib64 });
  });

  it("verifies files on disk", async () => {
    const file = path.join(dir, "0000002F000000110000009C");
    await writeFile(file, Buffer.concat([HEADER_PG95_11_9C, Buffer.alloc(300, 0x58)]));
    const h = await verifyWalFile(file, "0000002F000000110000009C");
    assert.equal(h.timeline, 47);
    await assert.rejects(verifyWalFile(file, "0000002F000000110000009D"), LsnMismatchError);
    await assert.rejects(verifyWalFile(`${file}x`, "0000002F000000110000009C"), (err: unknown) => {
      assert.ok(err instanceof WalVerificationError);
      assert.match((err as Error).message, /verification failed: .*ENOENT/);
      return true;
    });
    const short = path.join(dir, "short");
    await writeFile(short, HEADER_PG95_11_9C.subarray(0, 10));
    await assert.rejects(verifyWalFile(short, "0000002F000000110000009C"), /need at least 20 bytes/);
  });
});

describe("wal/timeline", () => {
  it("parses history files", () => {
    const text = "1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tbefore 2000-01-01 05:00:00+00\n";
    const entries = parseTimelineHistory(text);
    assert.deepEqual(entries, [
      { tli: 1, switchpoint: 0x3000158n, reason: "no recovery target specified" },
      { tli: 2, switchpoint: 0x5000000n, reason: "before 2000-01-01 05:00:00+00" },
    ]);
    assert.deepEqual(parseTimelineHistory(Buffer.from("# comment\n1\t0/3000158\n")), [
      { tli: 1, switchpoint: 0x3000158n, reason: "" },
    ]);
    assert.deepEqual(parseTimelineHistory(""), []);
    assert.equal(timelineForLsn(entries, 3, 0x3000157n), 1);
    assert.equal(timelineForLsn(entries, 3, 0x3000158n), 2);
    assert.equal(timelineForLsn(entries, 3, 0x5000000n), 3);
  });

  it("rejects malformed history files", () => {
    assert.throws(() => parseTimelineHistory("garbage\n"), TimelineHistoryError);
    assert.throws(() => parseTimelineHistory("1\tzz/1\treason\n"), TimelineHistoryError);
    assert.throws(() => parseTimelineHistory("2\t0/1\ta\n1\t0/2\tb\n"), /increasing sequence/);
  });
});
