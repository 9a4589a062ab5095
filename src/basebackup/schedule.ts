/**
 * Basebackup scheduling (operations.md §3): whether to start a backup now, and the metadata that
 * records why. Pure functions; the daemon supplies the listing, the clock and the request flag.
 */
import { pyIsoformatUtc } from "../common/pycompat.js";

/** Site settings the schedule reads (a subset of SiteConfig). */
export interface ScheduleSettings {
  basebackup_interval_hours: number | null;
  basebackup_hour?: number | null;
  basebackup_minute?: number | null;
  basebackup_delta_mode_max_retries?: number;
}

/** The fields of a listed backup the schedule looks at (see retention.ts `BasebackupInfo`). */
export interface ScheduledBackupView {
  startTime: Date;
  backupDecisionTime: Date;
  backupReason: string;
  normalizedBackupTime: string | null;
}

export interface NewBackupMetadata {
  "backup-decision-time": string;
  "backup-reason": "scheduled" | "requested";
  "normalized-backup-time"?: string;
  site: string;
}

export interface ScheduleDecision {
  metadata: NewBackupMetadata | null;
  /** Human-readable reason, for the log. */
  message: string;
}

const HOUR_MS = 3600 * 1000;

/** operations.md §3.2: the schedule slot `now` belongs to, or null without hour+minute+interval. */
export function normalizedBackupTime(settings: ScheduleSettings, now: Date): string | null {
  const hour = settings.basebackup_hour;
  const minute = settings.basebackup_minute;
  const interval = settings.basebackup_interval_hours;
  if (hour === undefined || hour === null || minute === undefined || minute === null || interval === null) return null;
  let base = new Date(now.getTime());
  if (now.getUTCHours() < hour || (now.getUTCHours() === hour && now.getUTCMinutes() < minute)) {
    base = new Date(base.getTime() - 24 * HOUR_MS);
  }
  let t = Date.UTC(base.getUTCFullYear(), base.getUTCMonth(), base.getUTCDate(), hour, minute, 0, 0);
  const step = interval * HOUR_MS;
  if (step > 0) {
    while (t + step < now.getTime()) t += step;
  }
  return pyIsoformatUtc(new Date(t), 0);
}

/** operations.md §3.1 (`get_new_backup_details`). `backups` sorted by start-time, oldest first. */
export function decideNewBackup(args: {
  site: string;
  settings: ScheduleSettings;
  backups: readonly ScheduledBackupView[];
  now: Date;
  requested: boolean;
}): ScheduleDecision {
  const { site, settings, backups, now, requested } = args;
  const normalized = normalizedBackupTime(settings, now);
  const hour = settings.basebackup_hour ?? null;
  const minute = settings.basebackup_minute ?? null;
  const interval = settings.basebackup_interval_hours;
  let reason: "scheduled" | "requested" | null = null;
  let message: string;

  if (requested) {
    reason = "requested";
    message = `Creating a new basebackup for ${site} due to request`;
  } else if (interval === null || interval === undefined) {
    message = "Scheduled basebackups are disabled (basebackup_interval_hours is null)";
  } else if (backups.length === 0) {
    reason = "scheduled";
    message = `Creating a new basebackup for ${site} because there are currently none`;
  } else if (hour !== null && minute !== null) {
    const latest = backups[backups.length - 1];
    const scheduled = backups.filter((b) => b.backupReason === "scheduled");
    const lastScheduledDecision = scheduled.length > 0 ? scheduled[scheduled.length - 1].backupDecisionTime : null;
    const changed = latest.normalizedBackupTime !== normalized;
    const notTooRecent =
      lastScheduledDecision === null || lastScheduledDecision.getTime() + (interval / 2) * HOUR_MS <= now.getTime();
    if (changed && notTooRecent) {
      reason = "scheduled";
      message = `Normalized backup time ${normalized} differs from previous ${latest.normalizedBackupTime}, creating new basebackup`;
    } else {
      message = "Latest backup matches the current schedule slot";
    }
  } else if (hour !== null && minute === null) {
    message = "Ignoring basebackup_hour as basebackup_minute is not defined";
  } else {
    const latest = backups[backups.length - 1];
    const elapsed = now.getTime() - latest.startTime.getTime();
    if (elapsed >= interval * HOUR_MS) {
      reason = "scheduled";
      message = `Creating a new basebackup for ${site} by schedule (${(elapsed / 1000).toFixed(0)} s from previous)`;
    } else {
      message = "Latest backup is newer than basebackup_interval_hours";
    }
  }
  if (reason === null) return { metadata: null, message };
  const metadata: NewBackupMetadata = {
    "backup-decision-time": pyIsoformatUtc(now, now.getUTCMilliseconds() * 1000),
    "backup-reason": reason,
    site,
  };
  if (normalized !== null) metadata["normalized-backup-time"] = normalized;
  return { metadata, message };
}

/** Consecutive failures of `delta` backups of one site (operations.md §3.3). */
export interface DeltaFailureInfo {
  lastFailedTime: Date;
  /** 0 after the first failure. */
  retries: number;
}

export function recordBackupResult(
  previous: DeltaFailureInfo | undefined,
  success: boolean,
  mode: string,
  now: Date,
): DeltaFailureInfo | undefined {
  if (success) return undefined;
  if (mode !== "delta") return previous;
  if (!previous) return { lastFailedTime: now, retries: 0 };
  return { lastFailedTime: now, retries: previous.retries + 1 };
}

/** Whether the delta backoff lets a backup start now. */
export function deltaBackoffAllows(args: {
  failure: DeltaFailureInfo | undefined;
  settings: ScheduleSettings;
  now: Date;
  requested: boolean;
}): { allowed: boolean; message: string } {
  const { failure, settings, now, requested } = args;
  if (!failure) return { allowed: true, message: "no previous delta failures" };
  if (requested) return { allowed: true, message: "backup requested" };
  const interval = settings.basebackup_interval_hours;
  if (
    interval !== null &&
    interval !== undefined &&
    now.getTime() - failure.lastFailedTime.getTime() > interval * HOUR_MS
  ) {
    return { allowed: true, message: "an interval has passed since the last failure" };
  }
  const maxRetries = settings.basebackup_delta_mode_max_retries ?? 10;
  if (failure.retries > maxRetries) {
    return { allowed: false, message: `Giving up backup after exceeding max retries: ${failure.retries}` };
  }
  const waitSeconds = Math.min(3 ** (failure.retries + 1), 3600);
  if (now.getTime() >= failure.lastFailedTime.getTime() + waitSeconds * 1000) {
    return { allowed: true, message: "Re-trying delta basebackup" };
  }
  return {
    allowed: false,
    message: "Waiting for backoff time before re-trying new delta backup due to previous failures",
  };
}
