/**
 * WAL file names and their mapping to LSNs.
 *
 * A segment name is `TTTTTTTTLLLLLLLLSSSSSSSS` (timeline, log id, segment within the log id).
 * Each log id covers 4 GiB of WAL, so it holds `2^32 / segSize` segments (256 for 16 MiB);
 * servers before 9.3 skipped the last segment of every log id (255 for 16 MiB), which only
 * matters when the server version is known to be that old.
 */
import { InvalidLsnError, toLsn } from "./lsn.js";

export const WAL_SEG_SIZE = 16 * 1024 * 1024;

export const WAL_NAME_RE = /^[A-F0-9]{24}$/;
export const TIMELINE_HISTORY_RE = /^[A-F0-9]{8}\.history$/;
export const PARTIAL_WAL_RE = /^[A-F0-9]{24}\.partial$/;
/** Backup history files PostgreSQL archives, e.g. `000000010000000000000002.00000028.backup`. */
export const BACKUP_LABEL_RE = /\.backup$/;

export function isWalName(name: string): boolean {
  return WAL_NAME_RE.test(name);
}

export function isHistoryName(name: string): boolean {
  return TIMELINE_HISTORY_RE.test(name);
}

export function isPartialName(name: string): boolean {
  return PARTIAL_WAL_RE.test(name);
}

export function isBackupLabelName(name: string): boolean {
  return BACKUP_LABEL_RE.test(name);
}

export class InvalidWalNameError extends Error {
  constructor(name: string, what = "WAL segment") {
    super(`invalid ${what} name ${JSON.stringify(name)}`);
    this.name = "InvalidWalNameError";
  }
}

export interface WalNameParts {
  timeline: number;
  log: number;
  seg: number;
}

function checkSegSize(segSize: number): bigint {
  // PostgreSQL allows powers of two from 1 MiB to 1 GiB.
  if (!Number.isInteger(segSize) || segSize < 1 << 20 || segSize > 1 << 30 || (segSize & (segSize - 1)) !== 0) {
    throw new RangeError(`invalid WAL segment size ${segSize}: must be a power of two between 1 MiB and 1 GiB`);
  }
  return BigInt(segSize);
}

/** Segments per log id: 2^32 / segSize, or floor((2^32 - 1) / segSize) for servers before 9.3. */
export function segmentsPerLogId(segSize: number = WAL_SEG_SIZE, serverVersion?: number | null): bigint {
  const size = checkSegSize(segSize);
  if (serverVersion !== undefined && serverVersion !== null && serverVersion < 90300) return 0xffffffffn / size;
  return 0x100000000n / size;
}

function hex8(value: number | bigint): string {
  return value.toString(16).toUpperCase().padStart(8, "0");
}

export function parseWalName(name: string): WalNameParts {
  if (!isWalName(name)) throw new InvalidWalNameError(name);
  return {
    timeline: Number.parseInt(name.slice(0, 8), 16),
    log: Number.parseInt(name.slice(8, 16), 16),
    seg: Number.parseInt(name.slice(16, 24), 16),
  };
}

export function formatWalName(parts: WalNameParts): string {
  for (const [key, value] of Object.entries(parts)) {
    if (!Number.isInteger(value) || value < 0 || value > 0xffffffff)
      throw new RangeError(`WAL name ${key} out of range: ${value}`);
  }
  return `${hex8(parts.timeline)}${hex8(parts.log)}${hex8(parts.seg)}`;
}

/** Segment number counted from LSN 0 (PostgreSQL's XLogSegNo). */
export function walNameToSegmentNumber(
  name: string,
  segSize: number = WAL_SEG_SIZE,
  serverVersion?: number | null,
): bigint {
  const { log, seg } = parseWalName(name);
  return BigInt(log) * segmentsPerLogId(segSize, serverVersion) + BigInt(seg);
}

export function segmentNumberToWalName(
  timeline: number,
  segNo: bigint,
  segSize: number = WAL_SEG_SIZE,
  serverVersion?: number | null,
): string {
  const perLogId = segmentsPerLogId(segSize, serverVersion);
  if (segNo < 0n) throw new RangeError(`negative WAL segment number ${segNo}`);
  const log = segNo / perLogId;
  if (log > 0xffffffffn) throw new RangeError(`WAL segment number ${segNo} is past the end of the WAL address space`);
  return formatWalName({ timeline, log: Number(log), seg: Number(segNo % perLogId) });
}

/** Start LSN of the segment. */
export function walNameToLsn(name: string, segSize: number = WAL_SEG_SIZE, serverVersion?: number | null): bigint {
  return walNameToSegmentNumber(name, segSize, serverVersion) * BigInt(segSize);
}

/** Name of the segment on `timeline` that contains `lsn`. */
export function lsnToWalName(
  lsn: bigint | string,
  timeline: number,
  segSize: number = WAL_SEG_SIZE,
  serverVersion?: number | null,
): string {
  const value = toLsn(lsn);
  if (value < 0n) throw new InvalidLsnError(`negative LSN ${value}`);
  return segmentNumberToWalName(timeline, value / BigInt(checkSegSize(segSize)), segSize, serverVersion);
}

/** Offset of `lsn` within its segment. */
export function lsnSegmentOffset(lsn: bigint | string, segSize: number = WAL_SEG_SIZE): number {
  return Number(toLsn(lsn) % checkSegSize(segSize));
}

export function timelineOfWalName(name: string): number {
  return parseWalName(name).timeline;
}

/** The segment that follows `name` on the same timeline (…FF rolls over to the next log id). */
export function nextWalName(name: string, segSize: number = WAL_SEG_SIZE, serverVersion?: number | null): string {
  const { timeline } = parseWalName(name);
  return segmentNumberToWalName(
    timeline,
    walNameToSegmentNumber(name, segSize, serverVersion) + 1n,
    segSize,
    serverVersion,
  );
}

/** The segment before `name` on the same timeline, or null for the very first segment. */
export function previousWalName(
  name: string,
  segSize: number = WAL_SEG_SIZE,
  serverVersion?: number | null,
): string | null {
  const { timeline } = parseWalName(name);
  const segNo = walNameToSegmentNumber(name, segSize, serverVersion);
  if (segNo === 0n) return null;
  return segmentNumberToWalName(timeline, segNo - 1n, segSize, serverVersion);
}

/** The same WAL position on another timeline. */
export function walNameOnTimeline(name: string, timeline: number): string {
  const parts = parseWalName(name);
  return formatWalName({ ...parts, timeline });
}

/** `00000002.history` for timeline 2. */
export function historyFileName(timeline: number): string {
  if (!Number.isInteger(timeline) || timeline < 1 || timeline > 0xffffffff)
    throw new RangeError(`invalid timeline ${timeline}`);
  return `${hex8(timeline)}.history`;
}

export function timelineOfHistoryName(name: string): number {
  if (!isHistoryName(name)) throw new InvalidWalNameError(name, "timeline history file");
  return Number.parseInt(name.slice(0, 8), 16);
}
