/**
 * Full check of one WAL segment's contents, streamed page by page with bounded memory: every page
 * header (magic of the segment's major version, pageaddr matching the position the file name
 * claims, continuation lengths), every record that starts and ends inside the segment (length,
 * CRC-32C over payload then header, as PostgreSQL computes it), and the commit/abort timestamps
 * PITR with `recovery_target_time` stops at. Pages after an XLOG_SWITCH record or a zeroed page
 * are unused space and are not checked (PostgreSQL may leave old or zeroed bytes there).
 * Records crossing into the next segment cannot be checked from one segment and are skipped.
 */
import { crc32c } from "@node-rs/crc32";

import { formatLsn } from "./lsn.js";
import { walNameToLsn, WAL_SEG_SIZE } from "./names.js";
import { verifyWalHeader, WalVerificationError, type WalHeader } from "./verify.js";

const SHORT_HEADER = 24;
const LONG_HEADER = 40;
const RECORD_HEADER = 24;
const XLP_FIRST_IS_CONTRECORD = 0x0001;
const XLP_LONG_HEADER = 0x0002;
const RM_XLOG_ID = 0;
const RM_XACT_ID = 1;
const XLOG_SWITCH = 0x40;
const XLOG_XACT_OPMASK = 0x70;
/** COMMIT, ABORT, COMMIT_PREPARED, ABORT_PREPARED: the records `recovery_target_time` looks at. */
const XACT_END_OPS = new Set([0x00, 0x20, 0x30, 0x40]);
/** Microseconds from the Unix epoch to PostgreSQL's epoch, 2000-01-01. */
const PG_EPOCH_US = 946_684_800_000_000n;

const maxAlign = (n: number): number => (n + 7) & ~7;

export interface SegmentCheckResult {
  header: WalHeader;
  /** Records that started and ended in this segment (CRC checked). */
  records: number;
  /** Microseconds since the Unix epoch of the last commit/abort record, or null. */
  lastXactTimeUs: bigint | null;
  /** LSN of that record. */
  lastXactLsn: bigint | null;
  /** The segment ends with an XLOG_SWITCH (rest unused). */
  switched: boolean;
}

interface OpenRecord {
  startLsn: bigint;
  totLen: number;
  got: number;
  header: Buffer;
  crc: number;
  /** Whole record bytes, kept only for transaction records (small). */
  parts: Buffer[] | null;
}

/** PostgreSQL's TimestampTz (µs since 2000-01-01) → ISO 8601 with microseconds, UTC. */
export function formatPgTimestampUs(unixUs: bigint): string {
  const ms = Number(unixUs / 1000n);
  const micro = String(Number(unixUs % 1_000_000n)).padStart(6, "0");
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, `.${micro}+00:00`);
}

/** Feed the decoded segment in order with `update`, then `finish`; both throw WalVerificationError. */
export class WalSegmentChecker {
  private pending = Buffer.alloc(0);
  private pageSize = 8192;
  private pageIndex = 0;
  private bytes = 0;
  private header: WalHeader | null = null;
  private segStart = 0n;
  private ended = false;
  private skipContinuation = 0;
  private record: OpenRecord | null = null;
  private records = 0;
  private switched = false;
  private lastXactTimeUs: bigint | null = null;
  private lastXactLsn: bigint | null = null;

  constructor(
    private readonly walName: string,
    private readonly segSize = WAL_SEG_SIZE,
  ) {}

  private fail(message: string): never {
    throw new WalVerificationError(`WAL segment ${this.walName}: ${message}`);
  }

  update(chunk: Buffer): void {
    this.bytes += chunk.length;
    if (this.bytes > this.segSize) this.fail(`more than ${this.segSize} bytes`);
    let data = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    while (data.length >= this.pageSize) {
      this.page(data.subarray(0, this.pageSize));
      data = data.subarray(this.pageSize);
    }
    // Copy the remainder: the caller may reuse its chunk buffer.
    this.pending = Buffer.from(data);
  }

  finish(): SegmentCheckResult {
    if (this.bytes !== this.segSize) this.fail(`${this.bytes} bytes, expected ${this.segSize}`);
    if (!this.header) this.fail("no page header");
    return {
      header: this.header,
      records: this.records,
      lastXactTimeUs: this.lastXactTimeUs,
      lastXactLsn: this.lastXactLsn,
      switched: this.switched,
    };
  }

  private page(page: Buffer): void {
    const offset = this.pageIndex * this.pageSize;
    this.pageIndex += 1;
    if (!this.header) {
      this.header = verifyWalHeader(page, this.walName, { segSize: this.segSize });
      this.segStart = walNameToLsn(this.walName, this.segSize, this.header.serverVersion);
      if (this.header.info & XLP_LONG_HEADER) {
        const blcksz = page.readUInt32LE(36);
        if (blcksz !== this.pageSize) {
          if (blcksz < 1024 || blcksz > 65536 || (blcksz & (blcksz - 1)) !== 0) this.fail(`bad block size ${blcksz}`);
          // Pages are not 8 KiB: re-split what we have with the real size.
          this.pageSize = blcksz;
          this.pageIndex = 0;
          this.header = null;
          const rest = this.pending;
          this.pending = Buffer.alloc(0);
          this.bytes -= page.length + rest.length;
          this.update(Buffer.concat([page, rest]));
          return;
        }
      }
    }
    if (this.ended) return;
    const magic = page.readUInt16LE(0);
    const info = page.readUInt16LE(2);
    const pageaddr = page.readBigUInt64LE(8);
    if (magic === 0 && pageaddr === 0n) {
      // Zeroed tail (wal_init_zero): the WAL written to this segment ends here.
      this.ended = true;
      this.record = null;
      return;
    }
    const expectedAddr = this.segStart + BigInt(offset);
    if (magic !== this.header!.magic)
      this.fail(
        `page at offset ${offset}: magic 0x${magic.toString(16)}, expected 0x${this.header!.magic.toString(16)}`,
      );
    if (pageaddr !== expectedAddr)
      this.fail(`page at offset ${offset}: pageaddr ${formatLsn(pageaddr)}, expected ${formatLsn(expectedAddr)}`);
    const remLen = page.readUInt32LE(16);
    const headerSize = info & XLP_LONG_HEADER ? LONG_HEADER : SHORT_HEADER;
    let pos = headerSize;
    if (this.record) {
      const left = this.record.totLen - this.record.got;
      if (!(info & XLP_FIRST_IS_CONTRECORD) || remLen !== left)
        this.fail(`page at offset ${offset}: continuation of ${left} bytes expected, header says ${remLen}`);
      pos = this.feed(page, pos);
    } else if (info & XLP_FIRST_IS_CONTRECORD) {
      // The tail of a record begun in an earlier segment (or page): skip it.
      if (offset === 0) this.skipContinuation = remLen;
      else if (remLen !== this.skipContinuation)
        this.fail(
          `page at offset ${offset}: continuation of ${this.skipContinuation} bytes expected, header says ${remLen}`,
        );
      const take = Math.min(remLen, this.pageSize - pos);
      this.skipContinuation = remLen - take;
      pos = take === remLen ? maxAlign(pos + take) : this.pageSize;
    }
    while (!this.ended && pos + 4 <= this.pageSize) {
      const totLen = page.readUInt32LE(pos);
      const lsn = expectedAddr + BigInt(pos);
      if (totLen === 0) {
        // End of the WAL written so far; the rest of the segment is unused.
        this.ended = true;
        return;
      }
      if (totLen < RECORD_HEADER) this.fail(`record at ${formatLsn(lsn)}: invalid length ${totLen}`);
      this.record = { startLsn: lsn, totLen, got: 0, header: Buffer.alloc(RECORD_HEADER), crc: 0, parts: null };
      pos = this.feed(page, pos);
    }
  }

  /** Feeds the open record from `pos`; returns the next record position (page end if it continues). */
  private feed(page: Buffer, pos: number): number {
    const rec = this.record!;
    const take = Math.min(rec.totLen - rec.got, this.pageSize - pos);
    let piece = page.subarray(pos, pos + take);
    if (rec.got < RECORD_HEADER) {
      const h = Math.min(RECORD_HEADER - rec.got, piece.length);
      piece.copy(rec.header, rec.got, 0, h);
      rec.got += h;
      piece = piece.subarray(h);
      if (rec.got === RECORD_HEADER && rec.header[17] === RM_XACT_ID) rec.parts = [Buffer.from(rec.header)];
    }
    if (piece.length) {
      rec.crc = crc32c(piece, rec.crc);
      rec.parts?.push(Buffer.from(piece));
      rec.got += piece.length;
    }
    if (rec.got < rec.totLen) return this.pageSize;
    this.record = null;
    this.completeRecord(rec);
    return maxAlign(pos + take);
  }

  private completeRecord(rec: OpenRecord): void {
    const crc = crc32c(rec.header.subarray(0, 20), rec.crc) >>> 0;
    if (crc !== rec.header.readUInt32LE(20))
      this.fail(`record at ${formatLsn(rec.startLsn)}: CRC mismatch (the segment is corrupt)`);
    this.records += 1;
    const rmid = rec.header[17];
    const info = rec.header[16];
    if (rmid === RM_XLOG_ID && (info & 0xf0) === XLOG_SWITCH) {
      this.switched = true;
      this.ended = true;
    } else if (rmid === RM_XACT_ID && rec.parts && XACT_END_OPS.has(info & XLOG_XACT_OPMASK)) {
      const time = mainDataTimestamp(Buffer.concat(rec.parts), this.header!.serverVersion);
      if (time !== null) {
        this.lastXactTimeUs = time + PG_EPOCH_US;
        this.lastXactLsn = rec.startLsn;
      }
    }
  }
}

/** The TimestampTz at the start of a record's main data (xl_xact_commit/abort.xact_time). */
function mainDataTimestamp(record: Buffer, serverVersion: number): bigint | null {
  let p = RECORD_HEADER;
  let mainLen = -1;
  while (p < record.length && mainLen < 0) {
    const id = record[p++];
    if (id === 255) mainLen = record[p++];
    else if (id === 254) {
      mainLen = record.readUInt32LE(p);
      p += 4;
    } else if (id === 253) p += 2;
    else if (id === 252) p += 4;
    else if (id <= 32) {
      const forkFlags = record[p];
      p += 3;
      if (forkFlags & 0x10) {
        const bimgInfo = record[p + 4];
        p += 5;
        const compressed = serverVersion >= 150000 ? bimgInfo & 0x1c : bimgInfo & 0x02;
        if (bimgInfo & 0x01 && compressed) p += 2;
      }
      if (!(forkFlags & 0x80)) p += 12;
      p += 4;
    } else return null;
  }
  if (mainLen < 8 || mainLen > record.length) return null;
  return record.readBigInt64LE(record.length - mainLen);
}
