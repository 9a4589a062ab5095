import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { isTransientError } from "../../src/storage/errors.js";
import { withRetry } from "../../src/storage/retry.js";

describe("storage retry", () => {
  it("classifies transient and permanent failures", () => {
    for (const status of [408, 429, 500, 502, 503, 504]) assert.ok(isTransientError({ status }), String(status));
    for (const status of [400, 401, 403, 404, 409]) assert.ok(!isTransientError({ status }), String(status));
    assert.ok(isTransientError(Object.assign(new Error("reset"), { code: "ECONNRESET" })));
    assert.ok(
      isTransientError(
        new TypeError("fetch failed", { cause: Object.assign(new Error("x"), { code: "UND_ERR_SOCKET" }) }),
      ),
    );
    assert.ok(isTransientError(Object.assign(new Error("t"), { name: "TimeoutError" })));
    assert.ok(!isTransientError(new Error("plain")));
  });

  it("retries transient failures with backoff and gives up on permanent ones", async () => {
    let calls = 0;
    const result = await withRetry(
      async () => {
        if (++calls < 3) throw Object.assign(new Error("busy"), { status: 503 });
        return "ok";
      },
      { baseDelayMs: 1 },
    );
    assert.equal(result, "ok");
    assert.equal(calls, 3);

    calls = 0;
    await assert.rejects(
      withRetry(async () => {
        calls++;
        throw Object.assign(new Error("denied"), { status: 403 });
      }),
      /denied/,
    );
    assert.equal(calls, 1);

    calls = 0;
    await assert.rejects(
      withRetry(
        async () => {
          calls++;
          throw Object.assign(new Error("down"), { status: 500 });
        },
        { attempts: 4, baseDelayMs: 1 },
      ),
      /down/,
    );
    assert.equal(calls, 4);
  });
});
