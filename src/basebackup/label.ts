/** backup_label parsing (its start time is stored in `datetime.isoformat()` form) and compact JSON. */
import { pyIsoformatUtc } from "../common/pycompat.js";

export interface BackupLabelInfo {
  startWalSegment: string;
  /** ISO form, e.g. `2024-05-01T13:56:02+00:00`. */
  startTime: string;
}

/**
 * Parses backup_label's `START TIME: 2024-05-01 13:56:02 UTC` like upstream (dateutil, a zone-less
 * value taken as local time) and returns the instant.
 */
export function parseLabelTime(text: string): Date {
  const m = /^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(\.\d+)?\s*(.*)$/.exec(text.trim());
  if (!m) throw new Error(`Unparseable backup_label time ${JSON.stringify(text)}`);
  const [, y, mo, d, h, mi, s, frac, zone] = m;
  const ms = frac ? Math.round(Number(`0${frac}`) * 1000) : 0;
  const utcMs = Date.UTC(+y, +mo - 1, +d, +h, +mi, +s, ms);
  const z = zone.trim();
  if (z === "") return new Date(+y, +mo - 1, +d, +h, +mi, +s, ms);
  if (/^(UTC|GMT|Z|UT)$/i.test(z)) return new Date(utcMs);
  const off = /^([+-])(\d{1,2})(?::?(\d{2}))?$/.exec(z);
  if (off) {
    const minutes = (Number(off[2]) * 60 + Number(off[3] ?? 0)) * (off[1] === "-" ? -1 : 1);
    return new Date(utcMs - minutes * 60000);
  }
  // dateutil ignores unknown zone abbreviations and the value is then taken as local time
  return new Date(+y, +mo - 1, +d, +h, +mi, +s, ms);
}

export function parseBackupLabel(label: string | Buffer): BackupLabelInfo {
  const text = typeof label === "string" ? label : label.toString("utf8");
  let startWalSegment: string | undefined;
  let startTime: string | undefined;
  for (const line of text.split("\n")) {
    if (line.startsWith("START WAL LOCATION")) {
      // START WAL LOCATION: 0/2000028 (file 000000010000000000000002)
      const word = line.split(/\s+/)[5];
      if (word) startWalSegment = word.replace(/\)+$/, "");
    } else if (line.startsWith("START TIME: ")) {
      startTime = pyIsoformatUtc(parseLabelTime(line.slice("START TIME: ".length)));
    }
  }
  if (!startWalSegment || !startTime) throw new Error("backup_label lacks START WAL LOCATION or START TIME");
  return { startWalSegment, startTime };
}

/** Python-style `json.dumps(obj, separators=(",", ":"))` (insertion order, non-ASCII escaped). */
export function jsonCompact(value: unknown): string {
  // bigint values (delta manifests' mtime_ns exceed 2^53) are written as plain integers
  const marker = "\u0000bigint:";
  const text = JSON.stringify(value, (_key, v: unknown) =>
    typeof v === "bigint" ? `${marker}${v.toString()}` : v,
  ).replace(/"\\u0000bigint:(-?\d+)"/g, "$1");
  return text.replace(/[\u0080-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}
