import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parsePreservationRequests, parseStoredTime, selectBackupsToDelete } from "../../src/basebackup/retention.js";

const d = (s: string): Date => new Date(s);
type B = { name: string; startTime: Date; preserveUntil: Date | null };
const b = (name: string, start: string, preserveUntil: string | null = null): B => ({
  name,
  startTime: d(start),
  preserveUntil: preserveUntil ? d(preserveUntil) : null,
});
const names = (list: B[]): string[] => list.map((x) => x.name);

describe("selectBackupsToDelete", () => {
  const now = d("2024-05-10T00:00:00Z");
  const backups = [
    b("a", "2024-05-01T00:00:00Z"),
    b("b", "2024-05-02T00:00:00Z"),
    b("c", "2024-05-03T00:00:00Z"),
    b("d", "2024-05-04T00:00:00Z"),
  ];

  it("keeps basebackup_count newest, oldest deleted first", () => {
    const r = selectBackupsToDelete(
      backups,
      { basebackup_count: 2, basebackup_count_min: 2, basebackup_interval_hours: 24 },
      now,
    );
    assert.deepEqual(names(r.toDelete), ["a", "b"]);
    assert.deepEqual(names(r.remaining), ["c", "d"]);
  });
  it("null count keeps everything", () => {
    const r = selectBackupsToDelete(
      backups,
      { basebackup_count: null, basebackup_count_min: 2, basebackup_interval_hours: 24 },
      now,
    );
    assert.deepEqual(r.toDelete, []);
  });
  it("a preserved backup stops deletion and protects every newer one", () => {
    const list = [
      b("a", "2024-05-01T00:00:00Z"),
      b("b", "2024-05-02T00:00:00Z", "2024-06-01T00:00:00Z"),
      ...backups.slice(2),
    ];
    const r = selectBackupsToDelete(
      list,
      { basebackup_count: 1, basebackup_count_min: 1, basebackup_interval_hours: 24 },
      now,
    );
    assert.deepEqual(names(r.toDelete), ["a"]);
    // an expired request protects nothing
    const expired = [b("a", "2024-05-01T00:00:00Z", "2024-05-09T00:00:00Z"), ...backups.slice(1)];
    assert.deepEqual(
      names(
        selectBackupsToDelete(
          expired,
          { basebackup_count: 2, basebackup_count_min: 2, basebackup_interval_hours: 24 },
          now,
        ).toDelete,
      ),
      ["a", "b"],
    );
  });
  it("age rule: age = now - (start + interval), float days, keeps basebackup_count_min", () => {
    const settings = {
      basebackup_count: 10,
      basebackup_count_min: 2,
      basebackup_age_days_max: 6,
      basebackup_interval_hours: 24,
    };
    // a: 9 - 1 = 8 days old, b: 7, c: 6 (not > 6), d: 5
    assert.deepEqual(names(selectBackupsToDelete(backups, settings, now).toDelete), ["a", "b"]);
    assert.deepEqual(names(selectBackupsToDelete(backups, { ...settings, basebackup_count_min: 3 }, now).toDelete), [
      "a",
    ]);
    assert.deepEqual(names(selectBackupsToDelete(backups, { ...settings, basebackup_count_min: 0 }, now).toDelete), []);
    assert.deepEqual(
      names(
        selectBackupsToDelete(
          backups,
          { ...settings, basebackup_interval_hours: null, basebackup_age_days_max: 6.5 },
          now,
        ).toDelete,
      ),
      ["a", "b"],
    );
  });
  it("count rule applies before and regardless of count_min and age", () => {
    const r = selectBackupsToDelete(
      backups,
      { basebackup_count: 1, basebackup_count_min: 3, basebackup_age_days_max: 100, basebackup_interval_hours: 24 },
      now,
    );
    assert.deepEqual(names(r.toDelete), ["a", "b", "c"]);
  });
});

describe("preservation requests", () => {
  it("keeps the latest preserve-until per backup", () => {
    const m = parsePreservationRequests([
      { metadata: { "preserve-backup": "x", "preserve-until": "2024-06-01 00:00:00+00:00" } },
      { metadata: { "preserve-backup": "x", "preserve-until": "2024-07-01 00:00:00+00:00" } },
      { metadata: { "preserve-backup": "x", "preserve-until": "2024-05-01 00:00:00+00:00" } },
      { metadata: { "preserve-backup": "y", "preserve-until": "2024-05-01T00:00:00Z" } },
    ]);
    assert.equal(m.get("x")?.toISOString(), "2024-07-01T00:00:00.000Z");
    assert.equal(m.get("y")?.toISOString(), "2024-05-01T00:00:00.000Z");
  });
  it("parses upstream's timestamp renderings", () => {
    assert.equal(parseStoredTime("2022-05-18 12:33:23.745186+02:00").toISOString(), "2022-05-18T10:33:23.745Z");
    assert.equal(parseStoredTime("2015-02-12T14:07:19+00:00").toISOString(), "2015-02-12T14:07:19.000Z");
    assert.equal(parseStoredTime("2015-02-12T14:07:19").toISOString(), "2015-02-12T14:07:19.000Z");
  });
});
