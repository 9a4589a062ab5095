/** Every configuration problem surfaces as one ConfigError whose message names the key path. */
export class ConfigError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "ConfigError";
  }
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
