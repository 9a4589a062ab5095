/**
 * Secrets never reach a log line: structured fields are redacted by key name at any depth (used as
 * pino's `formatters.log`, which unlike path-based `redact` needs no list of paths), and finished
 * lines are scrubbed of `password=...`, URI passwords and PEM private keys.
 */

const REDACTED = "[REDACTED]";

/** Keys whose values are secrets wherever they appear. */
export const SECRET_KEYS: ReadonlySet<string> = new Set([
  "password",
  "webserver_password",
  "private",
  "private_key",
  "aws_secret_access_key",
  "aws_session_token",
  "account_key",
  "sas_token",
  "credentials",
  "pass",
  "secret",
  "client_secret",
  "refresh_token",
  "access_token",
]);

/**
 * Deep copy of `value` with secret values replaced by "[REDACTED]". `key` is a secret only inside
 * an object_storage-like object (swift's key), since elsewhere it names storage objects.
 */
export function redactSecrets(value: unknown, depth = 0, seen: WeakSet<object> = new WeakSet()): unknown {
  if (depth > 12 || value === null || typeof value !== "object") {
    return typeof value === "string" ? scrubText(value) : value;
  }
  if (seen.has(value)) return "[Circular]";
  seen.add(value);
  if (Array.isArray(value)) return value.map((v) => redactSecrets(v, depth + 1, seen));
  const proto = Object.getPrototypeOf(value) as unknown;
  if (proto !== Object.prototype && proto !== null) return value; // Errors etc.: scrubbed as text later
  const obj = value as Record<string, unknown>;
  const isStorage = "storage_type" in obj;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(obj)) {
    const secret = SECRET_KEYS.has(k) || (isStorage && k === "key");
    out[k] = secret && v !== null && v !== undefined && v !== "" ? REDACTED : redactSecrets(v, depth + 1, seen);
  }
  return out;
}

/** A configuration object (or part of one) safe to log. */
export function redactConfig<T>(config: T): T {
  return redactSecrets(config) as T;
}

const TEXT_SECRET_PATTERNS: ReadonlyArray<[RegExp, string]> = [
  [/(-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----)[\s\S]*?(-----END \2PRIVATE KEY-----)/g, `$1${REDACTED}$3`],
  [/\b(password\s*=\s*)('(?:\\.|[^'\\])*'?|[^\s'"]+)/gi, `$1${REDACTED}`],
  [/([a-z][a-z0-9+.-]*:\/\/[^:/@\s'"]*:)[^@/\s'"]+@/gi, `$1${REDACTED}@`],
  [
    /("(?:password|webserver_password|private|private_key|aws_secret_access_key|aws_session_token|account_key|sas_token|pass|secret|client_secret|refresh_token|access_token)"\s*:\s*)"(?:\\.|[^"\\])*"/g,
    `$1"${REDACTED}"`,
  ],
];

/** Removes secrets that look like secrets from free text (connection strings, URIs, PEM keys, JSON). */
export function scrubText(text: string): string {
  let out = text;
  for (const [pattern, replacement] of TEXT_SECRET_PATTERNS) out = out.replace(pattern, replacement);
  return out;
}
