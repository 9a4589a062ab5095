/**
 * The addon's process and file halves (src/common/native_addon.ts): glibc malloc thresholds that
 * keep streamed buffers' memory mapped, checked by what they are for (page faults while decoding);
 * and a small file written and fsync'd in one call (test/restore/unit.test.ts checks a restore
 * target writing with it against Node's fs).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { constants as fsConstants } from "node:fs";
import { lstat, mkdtemp, readFile, rm, symlink, writeFile } from "node:fs/promises";
import os from "node:os";
import { after, describe, it } from "node:test";
import { pathToFileURL } from "node:url";
import path from "node:path";

import { nativeAddon, tuneAllocator, writeFileDurable } from "../../src/common/native_addon.js";
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

  it("refuses values that are not byte counts", { skip: !built }, () => {
    const raw = nativeAddon!.tuneAllocator as (mmapThreshold: unknown, trimThreshold: unknown) => boolean;
    assert.throws(() => raw(-1, 1024), { name: "TypeError", message: /two positive byte counts/ });
    assert.throws(() => raw("4M", 1024), { name: "TypeError" });
  });

  it("keeps decoding from faulting its buffers in afresh", { skip: !built || !glibc }, () => {
    const untuned = decodeFaults(false);
    const tuned = decodeFaults(true);
    // Here: 11 500-18 000 faults with glibc's defaults, about 5 000 tuned (and about half the CPU).
    assert.ok(tuned < untuned * 0.6, `page faults while decoding: tuned ${tuned}, untuned ${untuned}`);
  });
});

describe("native addon: a small file in one call", { skip: !built }, () => {
  const FLAGS = fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_TRUNC | fsConstants.O_NOFOLLOW;
  let dir = "";
  const fresh = async (): Promise<string> => (dir ||= await mkdtemp(path.join(os.tmpdir(), "native-write-")));
  after(() => (dir ? rm(dir, { recursive: true, force: true }) : undefined));

  it("writes the bytes, mode and mtime (fractions of a second too)", async () => {
    const file = path.join(await fresh(), "a");
    await writeFile(file, "longer old content"); // O_TRUNC: nothing of it stays
    await writeFileDurable!(file, Buffer.from("hello"), FLAGS, { mode: 0o640, mtime: 1234567890.25 });
    assert.equal(await readFile(file, "utf8"), "hello");
    const st = await lstat(file);
    assert.equal(st.mode & 0o7777, 0o640);
    assert.equal(st.mtimeMs, 1234567890250);
    await writeFileDurable!(file, new Uint8Array(0), FLAGS);
    assert.equal((await lstat(file)).size, 0);
  });

  it("fails like Node's fs, naming the call and the path", async () => {
    const missing = path.join(await fresh(), "no-such-dir", "f");
    await assert.rejects(writeFileDurable!(missing, Buffer.from("x"), FLAGS), {
      code: "ENOENT",
      errno: -2,
      syscall: "open",
      path: missing,
      message: new RegExp(`^ENOENT: .*, open '${missing}'$`),
    });
    // O_NOFOLLOW: a symlink planted where a file goes is not written through.
    const link = path.join(await fresh(), "link");
    await symlink(path.join(await fresh(), "elsewhere"), link);
    await assert.rejects(writeFileDurable!(link, Buffer.from("x"), FLAGS), { code: "ELOOP", syscall: "open" });
    await assert.rejects(lstat(path.join(await fresh(), "elsewhere")), { code: "ENOENT" });
    const raw = nativeAddon!.writeFileDurable as (...args: unknown[]) => Promise<void>;
    assert.throws(() => raw(missing, "not bytes", FLAGS, -1, NaN), { name: "TypeError" });
  });
});
