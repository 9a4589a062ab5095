/**
 * The test-server kit's own guarantees that the storage suites depend on.
 */
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { createServer } from "node:net";
import { test } from "node:test";
import { swiftBasePort } from "./servers.js";

test("Swift's ports lie below the ephemeral range, so no concurrent listen(0) or connection takes one", async () => {
  const low = Number((await readFile("/proc/sys/net/ipv4/ip_local_port_range", "utf8")).trim().split(/\s+/)[0]);
  for (let i = 0; i < 20; i++) {
    const base = await swiftBasePort(10);
    assert.ok(base >= 1024 && base + 10 < low, `base ${base} with 10 ports above stays below ${low}`);
    // and all of them are free right now
    for (let p = base; p <= base + 10; p++) {
      await new Promise<void>((resolve, reject) => {
        const srv = createServer();
        srv.once("error", reject);
        srv.listen(p, "127.0.0.1", () => srv.close(() => resolve()));
      });
    }
  }
});
