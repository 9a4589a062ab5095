/**
 * The Python renderings and parsing that upstream pghoard's stored metadata, JSON files and
 * messages depend on, reproduced byte for byte in one place: `repr()` of str/list/dict, the
 * datetime forms upstream writes, and dateutil-style timestamp parsing.
 */

// ---------------------------------------------------------------------------------------------
// repr()

/** Characters `str.isprintable()` rejects: categories C* and Z* (the ASCII space aside). */
const NON_PRINTABLE = /^[\p{C}\p{Z}]$/u;

function hex(code: number, width: number): string {
  return code.toString(16).padStart(width, "0");
}

/**
 * Python `repr()` of a str (`{!r}` in upstream's messages): single quotes unless the text has `'`
 * and no `"`; `\\`, the quote, `\t`, `\n`, `\r` escaped; other non-printable characters as
 * `\xhh`, `\uhhhh` or `\Uhhhhhhhh`; printable non-ASCII kept as is.
 */
export function pyRepr(value: string): string {
  const quote = value.includes("'") && !value.includes('"') ? '"' : "'";
  let out = quote;
  // for..of walks code points; a lone surrogate comes out alone and is non-printable (Cs).
  for (const ch of value) {
    const code = ch.codePointAt(0) ?? 0;
    if (ch === "\\" || ch === quote) out += `\\${ch}`;
    else if (ch === "\t") out += "\\t";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === " " || !NON_PRINTABLE.test(ch)) out += ch;
    else if (code < 0x100) out += `\\x${hex(code, 2)}`;
    else if (code < 0x10000) out += `\\u${hex(code, 4)}`;
    else out += `\\U${hex(code, 8)}`;
  }
  return out + quote;
}

/** Python `repr()` of a list of str: `['a', 'b']`. */
export function pyReprList(values: readonly string[]): string {
  return `[${values.map(pyRepr).join(", ")}]`;
}

/** Python `repr()` of a str → str dict, in insertion order: `{'a': 'b'}`. */
export function pyReprDict(dict: Readonly<Record<string, string>>): string {
  return `{${Object.entries(dict)
    .map(([k, v]) => `${pyRepr(k)}: ${pyRepr(String(v))}`)
    .join(", ")}}`;
}

// ---------------------------------------------------------------------------------------------
// datetime renderings of a UTC instant. `micros` overrides the Date's millisecond precision
// (upstream's datetimes carry microseconds); Python omits the fraction when it is zero.

function pad(n: number, width = 2): string {
  return String(n).padStart(width, "0");
}

function isoformatNaive(date: Date, micros: number | undefined, separator: string): string {
  const us = micros ?? date.getUTCMilliseconds() * 1000;
  return (
    `${pad(date.getUTCFullYear(), 4)}-${pad(date.getUTCMonth() + 1)}-${pad(date.getUTCDate())}` +
    `${separator}${pad(date.getUTCHours())}:${pad(date.getUTCMinutes())}:${pad(date.getUTCSeconds())}` +
    (us ? `.${pad(us, 6)}` : "")
  );
}

/** `datetime.isoformat()` of an aware UTC datetime: `2024-05-01T13:56:02[.ffffff]+00:00` (backup metadata start-time). */
export function pyIsoformatUtc(date: Date, micros?: number): string {
  return `${isoformatNaive(date, micros, "T")}+00:00`;
}

/** `str(datetime)` of an aware UTC datetime: `2024-05-01 13:56:02[.ffffff]+00:00` (backup metadata end-time). */
export function pyStrUtc(date: Date, micros?: number): string {
  return `${isoformatNaive(date, micros, " ")}+00:00`;
}

/**
 * Upstream's JSON encoder (`default_json_serialization`): aware datetimes as `isoformat()` with
 * `+00:00` replaced by `Z`, `2024-05-01T13:56:02[.ffffff]Z` (state files, HTTP API, control JSON).
 */
export function pyJsonUtc(date: Date, micros?: number): string {
  return `${isoformatNaive(date, micros, "T")}Z`;
}

/** `datetime.utcnow().isoformat()`, a naive datetime without zone (the daemon's `startup_time`). */
export function pyNaiveIsoformatUtc(date: Date): string {
  return isoformatNaive(date, undefined, "T");
}

// ---------------------------------------------------------------------------------------------
// Timestamp parsing

/** A timestamp with its original UTC offset kept, as a timezone-aware Python datetime would. */
export interface ParsedTimestamp {
  /** The instant (milliseconds; the sub-millisecond rest is in `micros`). */
  epochMs: number;
  /** Microseconds within the second (0..999999), kept for `str()` output. */
  micros: number;
  /** UTC offset in minutes (0 for naive input, which is taken as UTC). */
  offsetMinutes: number;
}

const TIMESTAMP_RE =
  /^(\d{4})-(\d{1,2})-(\d{1,2})(?:[T ](\d{1,2})(?::(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?)?\s*(Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)?$/i;

/**
 * Parses an ISO-8601-like timestamp the way upstream's `parse_timestamp` (dateutil) does for the
 * forms people and pghoard write: date, optional time with `T` or space, optional fraction,
 * optional `Z`/`UTC`/`GMT`/`±HH[:MM]` zone. Naive timestamps are UTC. Throws a descriptive Error
 * otherwise.
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

function wholeSecondMs(epochMs: number): number {
  return epochMs - (((epochMs % 1000) + 1000) % 1000);
}

/** `str()` of the aware datetime, in its own offset: `YYYY-MM-DD HH:MM:SS[.ffffff]±HH:MM` (recovery_target_time, preserve-until). */
export function pyStrDatetime(ts: ParsedTimestamp): string {
  const local = new Date(wholeSecondMs(ts.epochMs) + ts.offsetMinutes * 60_000);
  const sign = ts.offsetMinutes < 0 ? "-" : "+";
  const abs = Math.abs(ts.offsetMinutes);
  return `${isoformatNaive(local, ts.micros, " ")}${sign}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}`;
}

/** `print_basebackup_list`'s start time: the UTC `isoformat()[:19] + "Z"`, e.g. `2024-05-01T13:56:48Z`. */
export function basebackupListTime(ts: ParsedTimestamp): string {
  return `${isoformatNaive(new Date(wholeSecondMs(ts.epochMs)), 0, "T")}Z`;
}

/** Compares two parsed timestamps by instant, microsecond precision. */
export function compareTimestamps(a: ParsedTimestamp, b: ParsedTimestamp): number {
  const sa = Math.floor(a.epochMs / 1000);
  const sb = Math.floor(b.epochMs / 1000);
  if (sa !== sb) return sa - sb;
  return a.micros - b.micros;
}
