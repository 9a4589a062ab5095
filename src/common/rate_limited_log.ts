/**
 * Rate limit for an error that repeats (an unreachable object store during upload retries, a
 * failing WAL streaming connection, a failing probe): the first occurrence is logged, then at
 * most one line per interval, carrying the count of the repeats left out since the last line:
 * `… (repeated N times in the last 60 s)`. A success in between starts over (`clear`).
 */

/** Keys kept at most; expired ones are dropped first, so a burst of distinct errors stays bounded. */
const MAX_KEYS = 1000;

interface Entry {
  /** When the last line for this key was logged. */
  loggedAt: number;
  suppressed: number;
}

export class RateLimitedLog {
  private readonly entries = new Map<string, Entry>();

  constructor(
    readonly intervalMs = 60_000,
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * Logs `message` through `emit` unless `key` was logged less than the interval ago (then the
   * repeat is only counted). Returns whether a line was logged.
   */
  log(key: string, message: string, emit: (line: string) => void): boolean {
    const now = this.now();
    const entry = this.entries.get(key);
    if (entry && now - entry.loggedAt < this.intervalMs) {
      entry.suppressed += 1;
      return false;
    }
    const suppressed = entry?.suppressed ?? 0;
    const seconds = Math.round(this.intervalMs / 1000);
    emit(suppressed > 0 ? `${message} (repeated ${suppressed} times in the last ${seconds} s)` : message);
    if (!entry && this.entries.size >= MAX_KEYS) this.prune(now);
    this.entries.set(key, { loggedAt: now, suppressed: 0 });
    return true;
  }

  /** The condition is over (e.g. the upload succeeded): the next occurrence is logged at once. */
  clear(key: string): void {
    this.entries.delete(key);
  }

  /** `clear` for every key starting with `prefix` (e.g. all of one site's upload errors). */
  clearPrefix(prefix: string): void {
    for (const key of this.entries.keys()) if (key.startsWith(prefix)) this.entries.delete(key);
  }

  private prune(now: number): void {
    for (const [key, entry] of this.entries) {
      if (now - entry.loggedAt >= this.intervalMs) this.entries.delete(key);
    }
    // Still full: forget the oldest (Map keeps insertion order).
    while (this.entries.size >= MAX_KEYS) this.entries.delete(this.entries.keys().next().value as string);
  }
}
