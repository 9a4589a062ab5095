import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { RateLimitedLog } from "../../src/common/rate_limited_log.js";

describe("RateLimitedLog", () => {
  function setup(): {
    limiter: RateLimitedLog;
    lines: string[];
    clock: { t: number };
    say: (k: string, m: string) => boolean;
  } {
    const clock = { t: 1_000_000 };
    const limiter = new RateLimitedLog(60_000, () => clock.t);
    const lines: string[] = [];
    return { limiter, lines, clock, say: (k, m) => limiter.log(k, m, (l) => lines.push(l)) };
  }

  it("logs the first occurrence, then one line per interval with the count of repeats left out", () => {
    const { lines, clock, say } = setup();
    assert.equal(say("store", "upload failed 1"), true);
    for (let i = 2; i <= 5; i++) {
      clock.t += 10_000;
      assert.equal(say("store", `upload failed ${i}`), false);
    }
    assert.deepEqual(lines, ["upload failed 1"]);
    clock.t += 20_000; // 60 s after the first line
    assert.equal(say("store", "upload failed 6"), true);
    assert.deepEqual(lines, ["upload failed 1", "upload failed 6 (repeated 4 times in the last 60 s)"]);
    clock.t += 60_000; // nothing left out meanwhile: no count
    say("store", "upload failed 7");
    assert.equal(lines[2], "upload failed 7");
  });

  it("keys are independent, and clear() starts a key over", () => {
    const { limiter, lines, clock, say } = setup();
    say("a", "a1");
    say("b", "b1");
    say("a", "a2");
    assert.deepEqual(lines, ["a1", "b1"]);
    limiter.clear("a");
    clock.t += 1;
    say("a", "a3");
    say("b", "b2");
    assert.deepEqual(lines, ["a1", "b1", "a3"]);
  });

  it("stays bounded with many distinct keys and still limits a recent one", () => {
    const { lines, clock, say } = setup();
    for (let i = 0; i < 1500; i++) {
      say(`k${i}`, `m${i}`);
      clock.t += 1;
    }
    assert.equal(lines.length, 1500);
    assert.equal(say("k1499", "again"), false);
  });
});
