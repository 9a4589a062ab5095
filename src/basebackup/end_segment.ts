/**
 * The backup's end WAL segment, checked by us instead of by pg_backup_stop's archive wait.
 *
 * pg_backup_stop(wait_for_archive => true) polls pg_wal/archive_status once a second, so every
 * backup of an archiving cluster spent about a second waiting there. We stop without the wait
 * and poll our own storage for the segment holding the stop LSN (and the timeline's history
 * file after a switch) before the control object is written, as pgBackRest checks its archive:
 * a backup is reported complete only once the WAL needed to make it consistent is stored. The
 * segment reaches storage through archive_command → daemon, or through the WAL receiver in the
 * streaming modes; polling storage covers every path.
 */
import { timelineKey, walKey } from "../catalog/index.js";
import { sleep } from "../common/async.js";
import { BackupFailure } from "./common.js";
import { siteConfigOf, type BasebackupContext } from "./types.js";

/**
 * Site key `basebackup_end_segment_timeout`'s default, for contexts built without the validator.
 * pgBackRest's archive-timeout is 60 s; a daemon busy uploading chunks can take longer.
 */
const DEFAULT_END_SEGMENT_TIMEOUT_S = 300;
/**
 * Polls start at 20 ms and grow to 100 ms for the first seconds (archive_command usually stores
 * the segment within a few hundred ms of the switch, and every poll interval late is added to the
 * backup's time), then to 1 s: a HEAD request per poll is cheap on every backend.
 */
const FIRST_POLL_MS = 20;
const FAST_POLL_MS = 100;
const FAST_POLL_WINDOW_MS = 5000;
const SLOW_POLL_MS = 1000;

export type EndSegmentCheck =
  /** The server waits itself (PostgreSQL < 10, or a standby, where it decides by archive_mode). */
  | { kind: "server" }
  /** No wait anywhere: no WAL archive the server would have waited for (archiving off, standalone). */
  | { kind: "none" }
  /** Stop without the server's wait, then poll storage for the end segment. */
  | { kind: "storage" };

/** Decided before pg_backup_stop, on the backup's session. */
export async function endSegmentCheckOf(
  ctx: BasebackupContext,
  query: (sql: string) => Promise<Array<Record<string, unknown>>>,
): Promise<EndSegmentCheck> {
  if (ctx.pgVersion < 100000) return { kind: "server" };
  const [row] = await query(
    "SELECT pg_is_in_recovery() AS in_recovery, current_setting('archive_mode') AS archive_mode",
  );
  if (row.in_recovery) return { kind: "server" };
  const mode = siteConfigOf(ctx).active_backup_mode;
  // WAL streamed to us: the backup is useless without its end segment, whatever archive_mode says.
  if (mode === "pg_receivexlog" || mode === "walreceiver") return { kind: "storage" };
  if (mode === "standalone_hot_backup" || row.archive_mode === "off") return { kind: "none" };
  return { kind: "storage" };
}

function historyName(segment: string): string | null {
  const tli = segment.slice(0, 8);
  return parseInt(tli, 16) > 1 ? `${tli}.history` : null;
}

async function stored(ctx: BasebackupContext, key: string): Promise<boolean> {
  try {
    await ctx.storage.getMetadataForKey(key);
    return true;
  } catch (err) {
    if ((err as Error).name === "StorageNotFoundError") return false;
    throw err;
  }
}

/**
 * Resolves once `segment` (and its timeline's history file) are in the site's storage; throws a
 * BackupFailure after the site's `basebackup_end_segment_timeout`, or when the backup is aborted.
 */
export async function waitForEndSegment(
  ctx: BasebackupContext,
  segment: string,
  /** Ends the polling when the backup failed otherwise meanwhile. */
  cancel: AbortSignal,
): Promise<void> {
  const timeoutS = siteConfigOf(ctx).basebackup_end_segment_timeout ?? DEFAULT_END_SEGMENT_TIMEOUT_S;
  const timeoutMs = timeoutS * 1000;
  const signal = ctx.signal ? AbortSignal.any([ctx.signal, cancel]) : cancel;
  const prefix = siteConfigOf(ctx).prefix;
  const history = historyName(segment);
  const missing = [walKey(prefix, segment), ...(history ? [timelineKey(prefix, history)] : [])];
  const started = Date.now();
  const deadline = started + timeoutMs;
  let delay = FIRST_POLL_MS;
  let logged = false;
  for (;;) {
    while (missing.length > 0 && (await stored(ctx, missing[0]))) missing.shift();
    if (missing.length === 0) return;
    if (signal.aborted) throw new BackupFailure("thread termination requested");
    if (Date.now() >= deadline) {
      throw new BackupFailure(
        `The backup's end WAL segment ${segment}${history ? ` (with ${history})` : ""} was not in storage after ${timeoutS} s ` +
          `(basebackup_end_segment_timeout; still missing: ${missing.join(", ")}); the backup cannot be restored without ` +
          `it. Check WAL archiving (archive_command / the WAL receiver) and the daemon's uploads`,
      );
    }
    const slow = Date.now() - started >= FAST_POLL_WINDOW_MS;
    if (!logged && slow) {
      ctx.log.info(`Waiting for the backup's end WAL segment ${segment} to be stored`);
      logged = true;
    }
    await sleep(Math.min(delay, Math.max(1, deadline - Date.now())), signal).catch(() => undefined);
    delay = Math.min(slow ? SLOW_POLL_MS : FAST_POLL_MS, Math.ceil(delay * 1.5));
  }
}
