/**
 * JSON the way upstream's `write_json_file` / `json_encode(compact=False)` writes it: indent 4,
 * sorted keys, datetimes as ISO strings with `Z` for UTC.
 */
import { pyJsonUtc } from "../common/pycompat.js";

function sortValue(value: unknown): unknown {
  if (value instanceof Date) return pyJsonUtc(value);
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

export function stringifySorted(value: unknown, indent = 4): string {
  return JSON.stringify(sortValue(value), null, indent);
}
