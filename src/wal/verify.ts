/**
 * WAL segment header check (file-format.md §5.2): the page header at the start of a segment
 * must carry a known magic and a pageaddr equal to the LSN the file name claims. This catches
 * recycled segments (old contents under a new name) and truncated or foreign files.
 */
import { open } from "node:fs/promises";
import os from "node:os";
import { formatLsn } from "./lsn.js";
import { walNameToLsn, WAL_SEG_SIZE } from "./names.js";

/** u16 magic, u16 info, u32 timeline, u64 pageaddr, u32 rem_len — packed, native byte order. */
export const WAL_HEADER_LEN = 20;

/** XLOG_PAGE_MAGIC of each major version (src/include/access/xlog_internal.h) → server_version_num. */
export const WAL_MAGIC: ReadonlyMap<number, number> = new Map([
  [0xd071, 90200],
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
  [0xd121, 190000],
]);

/** Set in xlp_info on the first page of a segment: the long header also records the segment size. */
const XLP_LONG_HEADER = 0x0002;
/** Offset of xlp_seg_size: 20-byte short header padded to 24, then the u64 system identifier. */
const LONG_HEADER_SEG_SIZE_OFFSET = 32;

export interface WalHeader {
  magic: number;
  info: number;
  timeline: number;
  /** LSN of the page (for the first page of a segment: the segment's start LSN). */
  pageaddr: bigint;
  remLen: number;
  /** server_version_num of the major version that wrote this WAL, e.g. 150000. */
  serverVersion: number;
  /** Segment size from the long page header (PG ≥ 11), when the bytes include it. */
  segSize?: number;
}

export class WalVerificationError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "WalVerificationError";
  }
}

/** The header is valid but describes a different position than the file name. */
export class LsnMismatchError extends WalVerificationError {
  constructor(
    message: string,
    readonly expectedLsn: bigint,
    readonly foundLsn: bigint,
  ) {
    super(message);
    this.name = "LsnMismatchError";
  }
}

const littleEndian = os.endianness() === "LE";

export function readWalHeader(bytes: Uint8Array): WalHeader {
  if (bytes.length < WAL_HEADER_LEN) {
    throw new WalVerificationError(`need at least ${WAL_HEADER_LEN} bytes to read a WAL header, got ${bytes.length}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const magic = view.getUint16(0, littleEndian);
  const serverVersion = WAL_MAGIC.get(magic);
  if (serverVersion === undefined) {
    throw new WalVerificationError(`unknown WAL magic 0x${magic.toString(16).toUpperCase().padStart(4, "0")}`);
  }
  const info = view.getUint16(2, littleEndian);
  const header: WalHeader = {
    magic,
    info,
    timeline: view.getUint32(4, littleEndian),
    pageaddr: view.getBigUint64(8, littleEndian),
    remLen: view.getUint32(16, littleEndian),
    serverVersion,
  };
  if (serverVersion >= 110000 && info & XLP_LONG_HEADER && bytes.length >= LONG_HEADER_SEG_SIZE_OFFSET + 4) {
    const segSize = view.getUint32(LONG_HEADER_SEG_SIZE_OFFSET, littleEndian);
    if (segSize >= 1 << 20 && segSize <= 1 << 30 && (segSize & (segSize - 1)) === 0) header.segSize = segSize;
  }
  return header;
}

export interface VerifyOptions {
  /** Segment size used to turn the name into an LSN; default: from the long header, else 16 MiB. */
  segSize?: number;
  /** Where the bytes came from, for error messages (default: the WAL name). */
  source?: string;
}

/**
 * Checks the first bytes of a segment against its name. Pass at least 20 bytes (40 lets the
 * segment size be read from the long header). Returns the parsed header; throws
 * WalVerificationError / LsnMismatchError.
 */
export function verifyWalHeader(bytes: Uint8Array, walName: string, options: VerifyOptions = {}): WalHeader {
  const source = options.source ?? walName;
  let header: WalHeader;
  let expected: bigint;
  try {
    header = readWalHeader(bytes);
    expected = walNameToLsn(walName, options.segSize ?? header.segSize ?? WAL_SEG_SIZE, header.serverVersion);
  } catch (err) {
    throw new WalVerificationError(
      `WAL file ${JSON.stringify(source)} verification failed: ${(err as Error).message}`,
      { cause: err },
    );
  }
  // Only the position is compared: after a promotion the name's timeline legitimately differs.
  if (header.pageaddr !== expected) {
    throw new LsnMismatchError(
      `Expected LSN ${formatLsn(expected)} in WAL file ${JSON.stringify(source)}; found ${formatLsn(header.pageaddr)}`,
      expected,
      header.pageaddr,
    );
  }
  return header;
}

/** Reads the header of the file at `filePath` and verifies it against `walName`. */
export async function verifyWalFile(
  filePath: string,
  walName: string,
  options: Omit<VerifyOptions, "source"> = {},
): Promise<WalHeader> {
  let bytes: Buffer;
  try {
    const handle = await open(filePath, "r");
    try {
      const buffer = Buffer.alloc(LONG_HEADER_SEG_SIZE_OFFSET + 4);
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, 0);
      bytes = buffer.subarray(0, bytesRead);
    } finally {
      await handle.close();
    }
  } catch (err) {
    throw new WalVerificationError(
      `WAL file ${JSON.stringify(filePath)} verification failed: ${(err as Error).message}`,
      { cause: err },
    );
  }
  return verifyWalHeader(bytes, walName, { ...options, source: filePath });
}
