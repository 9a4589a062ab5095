/**
 * Per-site health gauges that operators ask for and upstream lacks:
 *   pghoard.seconds_since_last_wal_upload{site}
 *   pghoard.seconds_since_last_basebackup{site}
 *   pghoard.oldest_restorable_point{site}       (unix seconds; end of the oldest kept basebackup)
 *   pghoard.oldest_restorable_point_age{site}   (seconds)
 *   pghoard.wal_archive_lag_bytes{site}         (server WAL position minus end of the last archived segment)
 *   pghoard.site_server_reachable{site}         (1 when the last probe of the server succeeded, else 0)
 *   pghoard.site_server_probe_failures{site}    (counter of failed probes)
 * The daemon reports events; `emit()` (called from a timer) turns them into gauges, so the "seconds
 * since" values keep growing while nothing happens. A registered site and every event emit that
 * site's gauges at once, so a scrape right after start already shows each site (and a failing probe).
 */
import { MetricNames } from "./names.js";
import { WAL_SEG_SIZE, isWalName, walNameToLsn } from "../wal/index.js";

export interface SiteHealthSink {
  gauge(name: string, value: number, tags?: Record<string, string>): void;
  increase?(name: string, inc: number, tags?: Record<string, string>): void;
}

interface SiteState {
  lastWalUploadMs?: number;
  /** End LSN (exclusive) of the newest segment archived. */
  archivedUpTo?: bigint;
  lastBasebackupMs?: number;
  oldestRestorableMs?: number | null;
  serverLsn?: bigint;
  /** Whether the last probe of the server succeeded; undefined = the site is not probed (not registered). */
  reachable?: boolean;
}

/** A backup as the daemon lists it; times are Dates or ISO / Python str(datetime) strings. */
export interface BackupTimes {
  startTime: Date | string;
  endTime?: Date | string | null;
}

function toMs(value: Date | string): number {
  if (value instanceof Date) return value.getTime();
  // Python's str(datetime) uses a space instead of `T`.
  return Date.parse(value.includes("T") ? value : value.replace(" ", "T"));
}

export class SiteHealth {
  private readonly sites = new Map<string, SiteState>();
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly sink: SiteHealthSink,
    private readonly now: () => number = Date.now,
  ) {}

  private state(site: string): SiteState {
    let s = this.sites.get(site);
    if (!s) {
      s = {};
      this.sites.set(site, s);
    }
    return s;
  }

  /** A WAL segment (or its .partial) reached storage. `at` defaults to now (pass an object's mtime when seeding at startup). */
  walUploaded(site: string, walName: string, at?: Date, segSize: number = WAL_SEG_SIZE): void {
    const s = this.state(site);
    const when = at ? at.getTime() : this.now();
    s.lastWalUploadMs = Math.max(s.lastWalUploadMs ?? 0, when);
    const name = walName.slice(0, 24);
    if (isWalName(name) && !walName.endsWith(".partial")) {
      const end = walNameToLsn(name, segSize) + BigInt(segSize);
      if (s.archivedUpTo === undefined || end > s.archivedUpTo) s.archivedUpTo = end;
    }
    this.emitSite(site, s, this.now());
  }

  basebackupCompleted(site: string, at?: Date): void {
    const s = this.state(site);
    const when = at ? at.getTime() : this.now();
    s.lastBasebackupMs = Math.max(s.lastBasebackupMs ?? 0, when);
  }

  /**
   * The site's current backup list (after each refresh / retention). The oldest restorable point
   * is the end of the oldest backup (start when the end is unknown); the newest start also
   * seeds "last basebackup" after a restart.
   */
  backupsListed(site: string, backups: readonly BackupTimes[]): void {
    const s = this.state(site);
    let oldest: number | null = null;
    for (const b of backups) {
      const start = toMs(b.startTime);
      const end = b.endTime ? toMs(b.endTime) : start;
      const point = Number.isNaN(end) ? start : end;
      if (!Number.isNaN(point) && (oldest === null || point < oldest)) oldest = point;
      if (!Number.isNaN(start) && start > (s.lastBasebackupMs ?? 0)) s.lastBasebackupMs = start;
    }
    s.oldestRestorableMs = oldest;
    this.emitSite(site, s, this.now());
  }

  /** The server's current WAL write (or receive) position. */
  serverPosition(site: string, lsn: bigint): void {
    this.state(site).serverLsn = lsn;
  }

  /**
   * A site the daemon backs up: its gauges exist from now on, `site_server_reachable` is 0 until a
   * probe succeeds and `site_server_probe_failures` starts at 0.
   */
  registerSite(site: string): void {
    const s = this.state(site);
    if (s.reachable !== undefined) return;
    s.reachable = false;
    this.sink.increase?.(MetricNames.SITE_SERVER_PROBE_FAILURES, 0, { site });
    this.emitSite(site, s, this.now());
  }

  /** Outcome of one probe of the site's server. */
  probeResult(site: string, ok: boolean): void {
    const s = this.state(site);
    s.reachable = ok;
    if (!ok) this.sink.increase?.(MetricNames.SITE_SERVER_PROBE_FAILURES, 1, { site });
    this.emitSite(site, s, this.now());
  }

  emit(): void {
    const now = this.now();
    for (const [site, s] of this.sites) this.emitSite(site, s, now);
  }

  private emitSite(site: string, s: SiteState, now: number): void {
    {
      const tags = { site };
      if (s.reachable !== undefined) this.sink.gauge(MetricNames.SITE_SERVER_REACHABLE, s.reachable ? 1 : 0, tags);
      if (s.lastWalUploadMs !== undefined) {
        this.sink.gauge(MetricNames.SECONDS_SINCE_LAST_WAL_UPLOAD, Math.max(0, (now - s.lastWalUploadMs) / 1000), tags);
      }
      if (s.lastBasebackupMs !== undefined) {
        this.sink.gauge(
          MetricNames.SECONDS_SINCE_LAST_BASEBACKUP,
          Math.max(0, (now - s.lastBasebackupMs) / 1000),
          tags,
        );
      }
      if (s.oldestRestorableMs !== undefined && s.oldestRestorableMs !== null) {
        this.sink.gauge(MetricNames.OLDEST_RESTORABLE_POINT, s.oldestRestorableMs / 1000, tags);
        this.sink.gauge(
          MetricNames.OLDEST_RESTORABLE_POINT_AGE,
          Math.max(0, (now - s.oldestRestorableMs) / 1000),
          tags,
        );
      }
      if (s.serverLsn !== undefined && s.archivedUpTo !== undefined) {
        const lag = s.serverLsn > s.archivedUpTo ? s.serverLsn - s.archivedUpTo : 0n;
        this.sink.gauge(MetricNames.WAL_ARCHIVE_LAG_BYTES, Number(lag), tags);
      }
    }
  }

  /** Emits every `intervalMs` on an unref'd timer (never keeps the process alive). */
  start(intervalMs = 10_000): void {
    this.stop();
    this.timer = setInterval(() => this.emit(), intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}
