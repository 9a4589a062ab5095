/**
 * Python renderings and parsing, table-driven. Expected values are what CPython 3.11 prints
 * (`repr(s)`, `datetime.isoformat()`, `str(datetime)`) and what upstream's JSON encoder writes.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  basebackupListTime,
  compareTimestamps,
  parseTimestamp,
  pyIsoformatUtc,
  pyJsonUtc,
  pyNaiveIsoformatUtc,
  pyRepr,
  pyReprDict,
  pyReprList,
  pyStrDatetime,
  pyStrUtc,
} from "../../src/common/pycompat.js";

describe("common/pycompat", () => {
  it("repr() of str", () => {
    const table: Array<[string, string]> = [
      ["plain", "'plain'"],
      ["", "''"],
      ["it's", `"it's"`],
      ['say "hi"', `'say "hi"'`],
      [`both ' and "`, `'both \\' and "'`],
      ["'", `"'"`],
      ['"', `'"'`],
      ["back\\slash", "'back\\\\slash'"],
      ["tab\tnl\nret\r", "'tab\\tnl\\nret\\r'"],
      ["\x00\x01\x1f\x7f", "'\\x00\\x01\\x1f\\x7f'"],
      ["\x80\x9f\xa0\xad", "'\\x80\\x9f\\xa0\\xad'"],
      ["café ü", "'café ü'"],
      ["\u2028\u200b\ufeff", "'\\u2028\\u200b\\ufeff'"],
      ["\u{1F600}", "'\u{1F600}'"],
      ["\u{E0001}", "'\\U000e0001'"],
      ["\ud800", "'\\ud800'"],
    ];
    for (const [input, expected] of table) assert.equal(pyRepr(input), expected, JSON.stringify(input));
  });

  it("repr() of list and dict", () => {
    const table: Array<[string, string]> = [
      [pyReprList([]), "[]"],
      [pyReprList(["a", "it's"]), `['a', "it's"]`],
      [pyReprDict({}), "{}"],
      [pyReprDict({ a: "b", "it's": "x\\y\n" }), `{'a': 'b', "it's": 'x\\\\y\\n'}`],
    ];
    for (const [actual, expected] of table) assert.equal(actual, expected);
  });

  it("datetime renderings of a UTC instant", () => {
    const whole = new Date(Date.UTC(2024, 4, 1, 13, 56, 2));
    const milli = new Date(Date.UTC(2024, 4, 1, 13, 56, 2, 5));
    const table: Array<[string, string]> = [
      [pyIsoformatUtc(whole), "2024-05-01T13:56:02+00:00"],
      [pyIsoformatUtc(milli), "2024-05-01T13:56:02.005000+00:00"],
      [pyIsoformatUtc(milli, 0), "2024-05-01T13:56:02+00:00"],
      [pyIsoformatUtc(whole, 123456), "2024-05-01T13:56:02.123456+00:00"],
      [pyStrUtc(whole), "2024-05-01 13:56:02+00:00"],
      [pyStrUtc(whole, 7), "2024-05-01 13:56:02.000007+00:00"],
      [pyJsonUtc(whole), "2024-05-01T13:56:02Z"],
      [pyJsonUtc(milli), "2024-05-01T13:56:02.005000Z"],
      [pyNaiveIsoformatUtc(whole), "2024-05-01T13:56:02"],
      [pyNaiveIsoformatUtc(milli), "2024-05-01T13:56:02.005000"],
    ];
    for (const [actual, expected] of table) assert.equal(actual, expected);
  });

  it("parses timestamps like dateutil (naive = UTC) and prints str(datetime) in the original offset", () => {
    const table: Array<[string, string]> = [
      ["2024-05-01 10:00", "2024-05-01 10:00:00+00:00"],
      ["2024-05-01T10:00:00.5+02:00", "2024-05-01 10:00:00.500000+02:00"],
      ["2026-11-24 06:19:37.990144+00:00", "2026-11-24 06:19:37.990144+00:00"],
      ["2024-05-01T10:00:00-05:30", "2024-05-01 10:00:00-05:30"],
      ["2024-05-01 10:00:00 UTC", "2024-05-01 10:00:00+00:00"],
      ["2024-05-01T10:00:00+0200", "2024-05-01 10:00:00+02:00"],
    ];
    for (const [input, expected] of table) assert.equal(pyStrDatetime(parseTimestamp(input)), expected, input);
  });

  it("parses to the right instant, or throws", () => {
    const table: Array<[string, number]> = [
      ["2024-05-01T12:00:00+02:00", Date.UTC(2024, 4, 1, 10)],
      ["2024-05-01Z", Date.UTC(2024, 4, 1)],
      ["2022-05-18 12:33:23.745186+02:00", Date.UTC(2022, 4, 18, 10, 33, 23, 745)],
      ["2015-02-12T14:07:19", Date.UTC(2015, 1, 12, 14, 7, 19)],
    ];
    for (const [input, epochMs] of table) assert.equal(parseTimestamp(input).epochMs, epochMs, input);
    const errors: Array<[string, RegExp]> = [
      ["yesterday", /Unknown string format/],
      ["2024-02-30", /day is out of range/],
      ["2024-13-01", /month must be in 1\.\.12/],
      ["2024-05-01 24:00", /time out of range/],
    ];
    for (const [input, message] of errors) assert.throws(() => parseTimestamp(input), message, input);
  });

  it("print_basebackup_list's start time and comparison at microsecond precision", () => {
    assert.equal(basebackupListTime(parseTimestamp("2024-05-01T15:56:48.999+02:00")), "2024-05-01T13:56:48Z");
    const a = parseTimestamp("2024-05-01T10:00:00.000001Z");
    const b = parseTimestamp("2024-05-01T10:00:00.000002Z");
    assert.ok(compareTimestamps(a, b) < 0);
    assert.ok(compareTimestamps(b, a) > 0);
    assert.equal(compareTimestamps(a, parseTimestamp("2024-05-01 12:00:00.000001+02:00")), 0);
  });
});
