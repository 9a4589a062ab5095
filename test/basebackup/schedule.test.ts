import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  decideNewBackup,
  deltaBackoffAllows,
  normalizedBackupTime,
  recordBackupResult,
  type ScheduledBackupView,
} from "../../src/basebackup/schedule.js";

const d = (s: string): Date => new Date(s);

function backup(start: string, extra: Partial<ScheduledBackupView> = {}): ScheduledBackupView {
  return {
    startTime: d(start),
    backupDecisionTime: d(start),
    backupReason: "scheduled",
    normalizedBackupTime: null,
    ...extra,
  };
}

describe("normalizedBackupTime", () => {
  it("is null unless hour, minute and interval are all set", () => {
    assert.equal(normalizedBackupTime({ basebackup_interval_hours: 24 }, d("2024-05-01T10:00:00Z")), null);
    assert.equal(
      normalizedBackupTime({ basebackup_interval_hours: 24, basebackup_hour: 1 }, d("2024-05-01T10:00:00Z")),
      null,
    );
    assert.equal(
      normalizedBackupTime(
        { basebackup_interval_hours: null, basebackup_hour: 1, basebackup_minute: 0 },
        d("2024-05-01T10:00:00Z"),
      ),
      null,
    );
  });
  it("follows upstream's docstring examples", () => {
    // hour 13, minute 50, now 15:40, interval 60 min -> 14:50 today
    assert.equal(
      normalizedBackupTime(
        { basebackup_interval_hours: 1, basebackup_hour: 13, basebackup_minute: 50 },
        d("2024-05-01T15:40:00Z"),
      ),
      "2024-05-01T14:50:00+00:00",
    );
    // interval 24 h, now 13:45 -> 13:50 yesterday
    assert.equal(
      normalizedBackupTime(
        { basebackup_interval_hours: 24, basebackup_hour: 13, basebackup_minute: 50 },
        d("2024-05-01T13:45:00Z"),
      ),
      "2024-04-30T13:50:00+00:00",
    );
  });
  it("uses slots 01:00, 07:00, 13:00, 19:00 for H=1 and 6 h", () => {
    const s = { basebackup_interval_hours: 6, basebackup_hour: 1, basebackup_minute: 0 };
    assert.equal(normalizedBackupTime(s, d("2024-05-01T00:59:00Z")), "2024-04-30T19:00:00+00:00");
    assert.equal(normalizedBackupTime(s, d("2024-05-01T01:00:00Z")), "2024-05-01T01:00:00+00:00");
    // strict "<" as upstream: exactly at a slot boundary the previous slot still applies
    assert.equal(normalizedBackupTime(s, d("2024-05-01T07:00:00Z")), "2024-05-01T01:00:00+00:00");
    assert.equal(normalizedBackupTime(s, d("2024-05-01T07:00:01Z")), "2024-05-01T07:00:00+00:00");
    assert.equal(normalizedBackupTime(s, d("2024-05-01T12:59:59Z")), "2024-05-01T07:00:00+00:00");
    assert.equal(normalizedBackupTime(s, d("2024-05-01T20:00:00Z")), "2024-05-01T19:00:00+00:00");
  });
});

describe("decideNewBackup", () => {
  const site = "default";
  it("takes a backup when requested, even with scheduling disabled, and consumes nothing else", () => {
    const r = decideNewBackup({
      site,
      settings: { basebackup_interval_hours: null },
      backups: [backup("2024-05-01T00:00:00Z")],
      now: d("2024-05-01T01:00:00Z"),
      requested: true,
    });
    assert.equal(r.metadata?.["backup-reason"], "requested");
    assert.equal(r.metadata?.site, site);
    assert.equal(r.metadata?.["backup-decision-time"], "2024-05-01T01:00:00+00:00");
    assert.equal("normalized-backup-time" in (r.metadata ?? {}), false);
  });
  it("does nothing when the interval is null, even without backups", () => {
    const r = decideNewBackup({
      site,
      settings: { basebackup_interval_hours: null },
      backups: [],
      now: d("2024-05-01T01:00:00Z"),
      requested: false,
    });
    assert.equal(r.metadata, null);
  });
  it("takes the initial backup right away", () => {
    const r = decideNewBackup({
      site,
      settings: { basebackup_interval_hours: 24 },
      backups: [],
      now: d("2024-05-01T01:00:00Z"),
      requested: false,
    });
    assert.equal(r.metadata?.["backup-reason"], "scheduled");
  });
  it("waits a full interval after the latest backup, whatever its reason", () => {
    const settings = { basebackup_interval_hours: 24 };
    const backups = [backup("2024-05-01T00:00:00Z"), backup("2024-05-01T12:00:00Z", { backupReason: "requested" })];
    assert.equal(
      decideNewBackup({ site, settings, backups, now: d("2024-05-02T11:59:59Z"), requested: false }).metadata,
      null,
    );
    assert.equal(
      decideNewBackup({ site, settings, backups, now: d("2024-05-02T12:00:00Z"), requested: false }).metadata?.[
        "backup-reason"
      ],
      "scheduled",
    );
  });
  it("follows the normalized time with the half-interval guard", () => {
    const settings = { basebackup_interval_hours: 24, basebackup_hour: 3, basebackup_minute: 0 };
    const latest = backup("2024-05-01T03:00:10Z", {
      normalizedBackupTime: "2024-05-01T03:00:00+00:00",
      backupDecisionTime: d("2024-05-01T03:00:05Z"),
    });
    // same slot: nothing
    assert.equal(
      decideNewBackup({ site, settings, backups: [latest], now: d("2024-05-02T02:59:00Z"), requested: false }).metadata,
      null,
    );
    // next slot: backup, with the slot recorded
    const r = decideNewBackup({ site, settings, backups: [latest], now: d("2024-05-02T03:00:30Z"), requested: false });
    assert.equal(r.metadata?.["backup-reason"], "scheduled");
    assert.equal(r.metadata?.["normalized-backup-time"], "2024-05-02T03:00:00+00:00");
    // schedule moved to 10:00 shortly after a scheduled backup: the slot differs but half an interval has not passed
    const moved = { ...settings, basebackup_hour: 10 };
    assert.equal(
      decideNewBackup({ site, settings: moved, backups: [latest], now: d("2024-05-01T10:05:00Z"), requested: false })
        .metadata,
      null,
    );
    assert.equal(
      decideNewBackup({ site, settings: moved, backups: [latest], now: d("2024-05-01T15:00:05Z"), requested: false })
        .metadata?.["backup-reason"],
      "scheduled",
    );
  });
  it("ignores basebackup_hour without basebackup_minute", () => {
    const r = decideNewBackup({
      site,
      settings: { basebackup_interval_hours: 1, basebackup_hour: 3 },
      backups: [backup("2024-05-01T00:00:00Z")],
      now: d("2024-05-03T00:00:00Z"),
      requested: false,
    });
    assert.equal(r.metadata, null);
    assert.match(r.message, /basebackup_minute/);
  });
});

describe("delta backoff", () => {
  it("counts consecutive delta failures and resets on success", () => {
    const t0 = d("2024-05-01T00:00:00Z");
    let f = recordBackupResult(undefined, false, "delta", t0);
    assert.deepEqual(f, { lastFailedTime: t0, retries: 0 });
    f = recordBackupResult(f, false, "delta", t0);
    assert.equal(f?.retries, 1);
    assert.equal(recordBackupResult(f, true, "delta", t0), undefined);
    assert.equal(recordBackupResult(undefined, false, "local-tar", t0), undefined);
  });
  it("waits 3^(retries+1) seconds, capped at an hour; gives up after max retries; requests and a passed interval go", () => {
    const t0 = d("2024-05-01T00:00:00Z");
    const settings = { basebackup_interval_hours: 24, basebackup_delta_mode_max_retries: 10 };
    const at = (s: number): Date => new Date(t0.getTime() + s * 1000);
    assert.equal(
      deltaBackoffAllows({ failure: { lastFailedTime: t0, retries: 0 }, settings, now: at(2), requested: false })
        .allowed,
      false,
    );
    assert.equal(
      deltaBackoffAllows({ failure: { lastFailedTime: t0, retries: 0 }, settings, now: at(3), requested: false })
        .allowed,
      true,
    );
    assert.equal(
      deltaBackoffAllows({ failure: { lastFailedTime: t0, retries: 2 }, settings, now: at(26), requested: false })
        .allowed,
      false,
    );
    assert.equal(
      deltaBackoffAllows({ failure: { lastFailedTime: t0, retries: 2 }, settings, now: at(27), requested: false })
        .allowed,
      true,
    );
    assert.equal(
      deltaBackoffAllows({ failure: { lastFailedTime: t0, retries: 9 }, settings, now: at(3599), requested: false })
        .allowed,
      false,
    );
    assert.equal(
      deltaBackoffAllows({ failure: { lastFailedTime: t0, retries: 9 }, settings, now: at(3600), requested: false })
        .allowed,
      true,
    );
    assert.equal(
      deltaBackoffAllows({ failure: { lastFailedTime: t0, retries: 11 }, settings, now: at(7200), requested: false })
        .allowed,
      false,
    );
    assert.equal(
      deltaBackoffAllows({ failure: { lastFailedTime: t0, retries: 11 }, settings, now: at(7200), requested: true })
        .allowed,
      true,
    );
    assert.equal(
      deltaBackoffAllows({
        failure: { lastFailedTime: t0, retries: 11 },
        settings,
        now: at(24 * 3600 + 1),
        requested: false,
      }).allowed,
      true,
    );
  });
});
