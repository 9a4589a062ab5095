/** Every configuration problem surfaces as one ConfigError whose message names the key path. */
export class ConfigError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "ConfigError";
  }
}

/** Python `repr()` of a string, as upstream's `{!r}` renders it in its messages. */
export function pyRepr(value: string): string {
  if (value.includes("'") && !value.includes('"')) return `"${value.replace(/\\/g, "\\\\")}"`;
  return `'${value.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`;
}

/** Python `repr()` of a list of strings: `['a', 'b']`. */
export function pyReprList(values: readonly string[]): string {
  return `[${values.map(pyRepr).join(", ")}]`;
}

/** "the string \"x\"", "an array", "null", "2.5" … for error messages. */
export function describeValue(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  switch (typeof value) {
    case "string":
      return `the string ${JSON.stringify(value.length > 60 ? value.slice(0, 57) + "..." : value)}`;
    case "object":
      return "an object";
    case "undefined":
      return "nothing";
    default:
      return String(value);
  }
}
