/**
 * The one place where errors of the storage clients (AWS/Azure/Google SDKs, Swift over fetch,
 * ssh2-sftp-client, sockets) are classified and turned into the storage layer's own errors:
 * not found → StorageNotFoundError, transient → worth a retry, anything else → StorageError with
 * a message that names backend and key but never a configured secret.
 */
import { StorageError, StorageNotFoundError } from "./types.js";

/** HTTP status of an SDK error: S3 (`$metadata.httpStatusCode`), Azure (`statusCode`), Google (numeric `code`). */
export function statusOf(err: unknown): number | undefined {
  const rec = err as
    { $metadata?: { httpStatusCode?: unknown }; statusCode?: unknown; code?: unknown } | null | undefined;
  for (const value of [rec?.$metadata?.httpStatusCode, rec?.statusCode, rec?.code])
    if (typeof value === "number") return value;
  return undefined;
}

/** Error names (S3) and codes (Azure) that mean "no such object" besides HTTP 404. */
const NOT_FOUND_NAMES = new Set(["NoSuchKey", "NotFound"]);
const NOT_FOUND_CODES = new Set(["BlobNotFound", "CannotVerifyCopySource"]);

/** An SDK error saying the object (or copy source) does not exist. */
export function isNotFound(err: unknown): boolean {
  const rec = err as { name?: unknown; code?: unknown } | null | undefined;
  return (
    statusOf(err) === 404 ||
    (typeof rec?.name === "string" && NOT_FOUND_NAMES.has(rec.name)) ||
    (typeof rec?.code === "string" && NOT_FOUND_CODES.has(rec.code))
  );
}

/** An SFTP error saying the remote file does not exist (SSH_FX_NO_SUCH_FILE is status 2). */
export function isNoSuchFile(err: unknown): boolean {
  const rec = err as { code?: unknown; message?: unknown };
  return rec?.code === 2 || rec?.code === "ENOENT" || /no such file/i.test(String(rec?.message ?? ""));
}

/** The SFTP connection itself failed (dropped, reset, not connected): reconnect and try again. */
export function isConnectionError(err: unknown): boolean {
  const rec = err as { code?: unknown; message?: unknown; level?: unknown };
  const code = String(rec?.code ?? "");
  return (
    ["ECONNRESET", "ECONNREFUSED", "ETIMEDOUT", "EPIPE", "ERR_NOT_CONNECTED", "ERR_GENERIC_CLIENT"].includes(code) ||
    rec?.level === "client-socket" ||
    /no sftp connection|not connected|connection lost|socket|channel/i.test(String(rec?.message ?? ""))
  );
}

const TRANSIENT_CODES = new Set([
  "ECONNRESET",
  "ECONNREFUSED",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENETDOWN",
  "UND_ERR_SOCKET",
  "UND_ERR_CONNECT_TIMEOUT",
  "UND_ERR_HEADERS_TIMEOUT",
  "UND_ERR_BODY_TIMEOUT",
  "UND_ERR_CLOSED",
]);

/** HTTP statuses that mean "try again later": timeouts, throttling and server-side failures. */
export function isTransientStatus(status: number | undefined): boolean {
  return status === 408 || status === 429 || (status !== undefined && status >= 500 && status <= 599);
}

/** An error carrying an HTTP status (set by the swift client) or a transient socket error code. */
export function isTransientError(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e && typeof e === "object" && depth < 5; depth++) {
    const rec = e as { status?: unknown; code?: unknown; name?: unknown; cause?: unknown };
    if (typeof rec.status === "number") return isTransientStatus(rec.status);
    if (typeof rec.code === "string" && TRANSIENT_CODES.has(rec.code)) return true;
    if (rec.name === "TimeoutError") return true;
    // undici reports network failures as TypeError("fetch failed") with the socket error as cause
    if (rec.name === "TypeError" && rec.cause === undefined) return false;
    e = rec.cause;
  }
  return false;
}

/**
 * `<name>: <message> (<code>) (HTTP <status>); cause: ...`, cut to a sane length: what a client
 * error says, for a StorageError message (scrub it of secrets before use).
 */
export function describeBackendError(err: unknown): string {
  if (err instanceof Error) {
    const rec = err as Error & {
      code?: unknown;
      status?: unknown;
      statusCode?: unknown;
      $metadata?: { httpStatusCode?: number };
    };
    const status = rec.$metadata?.httpStatusCode ?? rec.status ?? rec.statusCode;
    let text = `${err.name}: ${err.message}`.slice(0, 500);
    if (typeof rec.code === "string" && !text.includes(rec.code)) text += ` (${rec.code})`;
    if (typeof status === "number") text += ` (HTTP ${status})`;
    const cause = (err as { cause?: unknown }).cause;
    if (cause instanceof Error && !text.includes(cause.message)) text += `; cause: ${describeBackendError(cause)}`;
    return text;
  }
  return String(err).slice(0, 500);
}

/** Builds StorageErrors whose messages name the backend and key but never a configured secret. */
export class ErrorFactory {
  private readonly secrets: string[];

  /** `notFound` tells which client errors mean "no such object" (default: the SDK/HTTP ones). */
  constructor(
    readonly backend: string,
    secrets: Array<string | null | undefined>,
    private readonly notFound: (err: unknown) => boolean = isNotFound,
  ) {
    // longest first, so a secret containing another is scrubbed whole
    this.secrets = secrets
      .filter((s): s is string => typeof s === "string" && s.length >= 4)
      .sort((a, b) => b.length - a.length);
  }

  scrub(text: string): string {
    let out = text;
    for (const secret of this.secrets) {
      out = out.split(secret).join("***");
      const encoded = encodeURIComponent(secret);
      if (encoded !== secret) out = out.split(encoded).join("***");
    }
    return out;
  }

  /** Wraps `err` (unless it already is a StorageError) as "<backend>: <operation> <key> failed: ...". */
  wrap(err: unknown, operation: string, key?: string): StorageError {
    if (err instanceof StorageError) return err;
    const what = key === undefined ? operation : `${operation} ${key}`;
    const wrapped = new StorageError(`${this.backend}: ${what} failed: ${this.scrub(describeBackendError(err))}`);
    const rec = err as { status?: unknown; code?: unknown; $metadata?: { httpStatusCode?: unknown } } | null;
    const status = rec?.status ?? rec?.$metadata?.httpStatusCode;
    // the original error stays out (SDK errors can carry request URLs with SAS tokens or headers)
    Object.assign(wrapped, { status: typeof status === "number" ? status : undefined, code: rec?.code });
    return wrapped;
  }

  /**
   * StorageNotFoundError(`missingKey`, default `key`) when `err` says the object does not exist,
   * else `wrap(err, operation, key)`.
   */
  translate(err: unknown, operation: string, key: string, missingKey = key): StorageError {
    if (this.notFound(err)) return new StorageNotFoundError(missingKey);
    return this.wrap(err, operation, key);
  }

  /** Runs `op`; its failure becomes `wrap(err, operation, key)`. */
  async wrapping<T>(operation: string, key: string, op: () => Promise<T>): Promise<T> {
    try {
      return await op();
    } catch (err) {
      throw this.wrap(err, operation, key);
    }
  }

  /** Runs `op`; its failure becomes `translate(err, operation, key, missingKey)`. */
  async translating<T>(operation: string, key: string, op: () => Promise<T>, missingKey = key): Promise<T> {
    try {
      return await op();
    } catch (err) {
      throw this.translate(err, operation, key, missingKey);
    }
  }

  /** "<backend>: <what>: <message of err>", keeping `err` as the cause (local filesystem errors carry no secrets). */
  because(what: string, err: unknown): StorageError {
    return new StorageError(`${this.backend}: ${this.scrub(`${what}: ${(err as Error).message}`)}`, { cause: err });
  }

  /** StorageError for a problem found by this code itself (bad config, unexpected reply). */
  error(message: string): StorageError {
    return new StorageError(`${this.backend}: ${this.scrub(message)}`);
  }
}
