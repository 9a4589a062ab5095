/**
 * JSON the way upstream's `write_json_file` / `json_encode(compact=False)` writes it: indent 4,
 * sorted keys, datetimes as ISO strings with `Z` for UTC.
 */

function sortValue(value: unknown): unknown {
  if (value instanceof Date) return isoUtc(value);
  if (Array.isArray(value)) return value.map(sortValue);
  if (value !== null && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const key of Object.keys(value).sort()) {
      const v = (value as Record<string, unknown>)[key];
      if (v !== undefined) out[key] = sortValue(v);
    }
    return out;
  }
  return value;
}

/** Python `datetime.isoformat()` of an aware UTC datetime, with `+00:00` written as `Z`. */
export function isoUtc(date: Date): string {
  const iso = date.toISOString(); // 2024-05-01T13:57:01.123Z
  const ms = date.getUTCMilliseconds();
  // Python prints microseconds only when non-zero.
  return ms === 0 ? iso.replace(/\.\d{3}Z$/, "Z") : iso.replace(/\.(\d{3})Z$/, ".$1000Z");
}

/** Naive UTC `datetime.utcnow().isoformat()` (no zone), as upstream's `startup_time`. */
export function naiveUtcIso(date: Date): string {
  return isoUtc(date).replace(/Z$/, "");
}

export function stringifySorted(value: unknown, indent = 4): string {
  return JSON.stringify(sortValue(value), null, indent);
}
