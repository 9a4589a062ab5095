/**
 * The few Python formatting and parsing behaviours restore output must reproduce byte for byte:
 * `repr()` of a str→str dict (verbose listing), `str(datetime)` (recovery_target_time,
 * preservation requests) and dateutil-style timestamp parsing (naive = UTC).
 */

/** Python `repr()` of a str. */
export function pythonStrRepr(value: string): string {
  const quote = value.includes("'") && !value.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of value) {
    const code = ch.codePointAt(0) ?? 0;
    if (ch === "\\") out += "\\\\";
    else if (ch === quote) out += "\\" + quote;
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (code < 0x20 || code === 0x7f) out += "\\x" + code.toString(16).padStart(2, "0");
    else if (code >= 0x80 && code < 0xa0) out += "\\x" + code.toString(16).padStart(2, "0");
    else out += ch;
  }
  return out + quote;
}

/** Python `repr()` of a dict whose keys and values are strings, in insertion order. */
export function pythonDictRepr(dict: Record<string, string>): string {
  const parts = Object.entries(dict).map(([k, v]) => `${pythonStrRepr(k)}: ${pythonStrRepr(String(v))}`);
  return `{${parts.join(", ")}}`;
}

/** A timestamp with its original UTC offset kept, as a timezone-aware Python datetime would. */
export interface ParsedTimestamp {
  /** The instant. */
  epochMs: number;
  /** Microseconds within the second (0..999999), kept for `str()` output. */
  micros: number;
  /** UTC offset in minutes (0 for naive input, which is taken as UTC). */
  offsetMinutes: number;
}

const TIMESTAMP_RE =
  /^(\d{4})-(\d{1,2})-(\d{1,2})(?:[T ](\d{1,2})(?::(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?)?\s*(Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)?$/i;

/**
 * Parses an ISO-8601-like timestamp the way upstream's `dates.parse_timestamp` (dateutil) does for
 * the forms people use: date, optional time with `T` or space, optional fraction, optional
 * `Z`/`UTC`/`±HH[:MM]` zone. Naive timestamps are UTC. Throws a descriptive Error otherwise.
 */
export function parseTimestamp(text: string): ParsedTimestamp {
  const m = TIMESTAMP_RE.exec(text.trim());
  if (!m) throw new Error(`Unknown string format: ${text}`);
  const [year, month, day] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const [hour, minute, second] = [Number(m[4] ?? 0), Number(m[5] ?? 0), Number(m[6] ?? 0)];
  const micros = m[7] ? Number(m[7].slice(0, 6).padEnd(6, "0")) : 0;
  if (month < 1 || month > 12) throw new Error(`month must be in 1..12: ${text}`);
  const daysInMonth = new Date(Date.UTC(year, month, 0)).getUTCDate();
  if (day < 1 || day > daysInMonth) throw new Error(`day is out of range for month: ${text}`);
  if (hour > 23 || minute > 59 || second > 59) throw new Error(`time out of range: ${text}`);
  let offsetMinutes = 0;
  const zone = m[8];
  if (zone && !/^(Z|UTC|GMT)$/i.test(zone)) {
    const sign = zone.startsWith("-") ? -1 : 1;
    const digits = zone.slice(1).replace(":", "");
    offsetMinutes = sign * (Number(digits.slice(0, 2)) * 60 + Number(digits.slice(2) || 0));
  }
  const localMs = Date.UTC(year, month - 1, day, hour, minute, second);
  return { epochMs: localMs - offsetMinutes * 60_000 + Math.floor(micros / 1000), micros, offsetMinutes };
}

function pad(n: number, width = 2): string {
  return String(n).padStart(width, "0");
}

/** Python `str()` of an aware datetime: `YYYY-MM-DD HH:MM:SS[.ffffff]+HH:MM`. */
export function pythonDatetimeStr(ts: ParsedTimestamp): string {
  const local = new Date(ts.epochMs - (ts.epochMs % 1000 + 1000) % 1000 + ts.offsetMinutes * 60_000);
  const date = `${local.getUTCFullYear()}-${pad(local.getUTCMonth() + 1)}-${pad(local.getUTCDate())}`;
  const time = `${pad(local.getUTCHours())}:${pad(local.getUTCMinutes())}:${pad(local.getUTCSeconds())}`;
  const frac = ts.micros ? `.${pad(ts.micros, 6)}` : "";
  const sign = ts.offsetMinutes < 0 ? "-" : "+";
  const abs = Math.abs(ts.offsetMinutes);
  return `${date} ${time}${frac}${sign}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}`;
}

/** `2024-05-01T13:56:48Z`: the instant in UTC, whole seconds (upstream: `isoformat()[:19] + "Z"`). */
export function utcSecondsIso(ts: ParsedTimestamp): string {
  return new Date(ts.epochMs - (ts.epochMs % 1000 + 1000) % 1000).toISOString().slice(0, 19) + "Z";
}

/** Compares two parsed timestamps by instant, microsecond precision. */
export function compareTimestamps(a: ParsedTimestamp, b: ParsedTimestamp): number {
  const sa = Math.floor(a.epochMs / 1000);
  const sb = Math.floor(b.epochMs / 1000);
  if (sa !== sb) return sa - sb;
  return a.micros - b.micros;
}
