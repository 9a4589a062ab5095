/** Small helpers for errors thrown by Node's own APIs (fs, net, child_process). */

/** True when `err` is a Node system error with one of the given `code`s (`ENOENT`, `EEXIST`, ...). */
export function isErrno(err: unknown, ...codes: string[]): boolean {
  return typeof err === "object" && err !== null && codes.includes((err as NodeJS.ErrnoException).code ?? "");
}

/**
 * True when `err` says the file system is full (or the quota is used up). Errors that crossed a
 * worker thread may have lost their `code`, so the message is checked too.
 */
export function isDiskFull(err: unknown): boolean {
  if (isErrno(err, "ENOSPC", "EDQUOT")) return true;
  const message = err instanceof Error ? err.message : String(err);
  return /\b(ENOSPC|EDQUOT)\b|no space left on device|disk quota exceeded/i.test(message);
}
