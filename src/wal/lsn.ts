/**
 * Log sequence numbers: 64-bit WAL positions, written by PostgreSQL as two upper-case hex
 * halves (`0/7922C68`). Kept as bigint so arithmetic past 2^53 stays exact.
 */

const LSN_TEXT_RE = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/;
export const MAX_LSN = (1n << 64n) - 1n;

export class InvalidLsnError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "InvalidLsnError";
  }
}

/** `"16/B374D848"` → 0x16B374D848n. */
export function parseLsn(text: string): bigint {
  const match = LSN_TEXT_RE.exec(text.trim());
  if (!match) throw new InvalidLsnError(`invalid LSN ${JSON.stringify(text)}: expected the form X/X in hex`);
  return (BigInt(`0x${match[1]}`) << 32n) | BigInt(`0x${match[2]}`);
}

/** 0x16B374D848n → `"16/B374D848"` (PostgreSQL's `%X/%X`). */
export function formatLsn(lsn: bigint): string {
  if (lsn < 0n || lsn > MAX_LSN) throw new InvalidLsnError(`LSN out of range: ${lsn}`);
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}

/** Accepts either representation; callers often get LSNs as text from SQL and as numbers from headers. */
export function toLsn(value: bigint | string | number): bigint {
  if (typeof value === "bigint") return value;
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value) || value < 0) throw new InvalidLsnError(`invalid LSN number ${value}`);
    return BigInt(value);
  }
  return parseLsn(value);
}
