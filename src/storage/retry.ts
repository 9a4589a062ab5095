/**
 * Retry with exponential backoff for transient object-store failures (timeouts, 5xx, throttling,
 * dropped connections). Permanent failures (auth, missing bucket, 4xx) are rethrown at once.
 * Used by the backends whose client has no retry of its own (swift, sftp) and around operations the
 * SDK retry policies do not cover.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { isTransientError } from "./errors.js";

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
