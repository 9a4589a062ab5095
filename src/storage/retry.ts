/**
 * Retry with exponential backoff for transient object-store failures (timeouts, 5xx, throttling,
 * dropped connections). Permanent failures (auth, missing bucket, 4xx) are rethrown at once.
 * Used by the backends whose client has no retry of its own (swift, sftp) and around operations the
 * SDK retry policies do not cover.
 */
import { setTimeout as sleep } from "node:timers/promises";

export interface RetryOptions {
  /** Attempts in total, including the first (default 6). */
  attempts?: number;
  /** First delay in ms (default 200), doubled per attempt with jitter, capped at `maxDelayMs`. */
  baseDelayMs?: number;
  maxDelayMs?: number;
  /** Decides whether an error is worth another attempt (default `isTransientError`). */
  isRetryable?: (err: unknown) => boolean;
  /** Called before each wait; the message must not contain secrets. */
  onRetry?: (err: unknown, attempt: number, delayMs: number) => void;
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

export async function withRetry<T>(operation: (attempt: number) => Promise<T>, options: RetryOptions = {}): Promise<T> {
  const attempts = options.attempts ?? 6;
  const base = options.baseDelayMs ?? 200;
  const max = options.maxDelayMs ?? 10_000;
  const retryable = options.isRetryable ?? isTransientError;
  for (let attempt = 1; ; attempt++) {
    try {
      return await operation(attempt);
    } catch (err) {
      if (attempt >= attempts || !retryable(err)) throw err;
      const delay = Math.min(max, base * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2);
      options.onRetry?.(err, attempt, delay);
      await sleep(delay);
    }
  }
}
