/**
 * The addon's process half: glibc malloc thresholds that keep streamed buffers' memory mapped
 * (src/common/native_addon.ts). Checked by what it is for: page faults while decoding.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { describe, it } from "node:test";
import { pathToFileURL } from "node:url";
import path from "node:path";

import { nativeAddon, tuneAllocator } from "../../src/common/native_addon.js";
import { repoRoot } from "../helpers/paths.js";

const built = nativeAddon !== null;
const glibc = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header
  ?.glibcVersionRuntime;

/**
 * A child that snappy-decodes 64 MiB three times in the 64 KiB input pieces of a storage read
 * stream, keeping the last few pieces alive as a consumer does; prints its minor page faults.
 */
function decodeFaults(tune: boolean): number {
  const dist = path.join(repoRoot, "dist", "src");
  const url = (p: string): string => pathToFileURL(path.join(dist, p)).href;
  const script = `
    import { tuneAllocator } from ${JSON.stringify(url("common/native_addon.js"))};
    import { SnappyFrameEncoder, SnappyFrameDecoder } from ${JSON.stringify(url("fileformat/snappy.js"))};
    import { randomBytes } from "node:crypto";
    if (${tune} && !tuneAllocator()) throw new Error("not applied");
    // Compressible like table pages: runs of one byte between random stretches.
    const plain = Buffer.alloc(64 * 1024 * 1024);
    for (let at = 0; at < plain.length; at += 8192) randomBytes(512).copy(plain, at);
    const encoder = new SnappyFrameEncoder();
    const framed = Buffer.concat([...encoder.update(plain), ...encoder.final()].map((p) => Buffer.from(p)));
    const before = process.resourceUsage().minorPageFault;
    const held = [];
    for (let round = 0; round < 3; round++) {
      const decoder = new SnappyFrameDecoder();
      for (let at = 0; at < framed.length; at += 65536)
        for (const piece of decoder.update(framed.subarray(at, at + 65536))) {
          held.push(piece);
          if (held.length > 4) held.shift();
        }
      held.push(...decoder.final());
    }
    process.stdout.write(String(process.resourceUsage().minorPageFault - before));
  `;
  const result = spawnSync(process.execPath, ["--input-type=module", "-e", script], {
    encoding: "utf8",
    // The child decides by itself whether to tune: no inherited malloc settings.
    env: { PATH: process.env.PATH ?? "" },
  });
  assert.equal(result.status, 0, result.stderr);
  return Number(result.stdout);
}

describe("native addon: malloc thresholds", () => {
  it("leaves an operator's own malloc settings alone", () => {
    assert.equal(tuneAllocator({ GLIBC_TUNABLES: "glibc.malloc.trim_threshold=1000000" }), false);
    assert.equal(tuneAllocator({ MALLOC_ARENA_MAX_: "2" }), false);
  });

  it("is applied where the addon is built on glibc", { skip: !built || !glibc }, () => {
    assert.equal(tuneAllocator({}), true);
  });

  it("keeps decoding from faulting its buffers in afresh", { skip: !built || !glibc }, () => {
    const untuned = decodeFaults(false);
    const tuned = decodeFaults(true);
    // Here: 14 000-18 000 faults with glibc's defaults, about 5 000 tuned (and half the CPU).
    assert.ok(tuned < untuned * 0.6, `page faults while decoding: tuned ${tuned}, untuned ${untuned}`);
  });
});
