import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { after, before, describe, it } from "node:test";
import { isErrno } from "../../src/common/errors.js";
import {
  copyFileAtomic,
  createAtomicWriteStream,
  exists,
  fsyncDirectory,
  mkdirp,
  removeIfExists,
  renameAtomic,
  writeFileAtomic,
} from "../../src/common/fs.js";

describe("common/fs", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "pghoard-fs-test-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("writeFileAtomic writes and replaces content, leaving no temp files", async () => {
    const target = path.join(dir, "a.txt");
    await writeFileAtomic(target, "first");
    await writeFileAtomic(target, Buffer.from("second"), { mode: 0o600 });
    assert.equal(await readFile(target, "utf8"), "second");
    assert.equal((await stat(target)).mode & 0o777, 0o600);
    assert.deepEqual(await readdir(dir), ["a.txt"]);
  });

  it("writeFileAtomic honours an explicit temp path and cleans it up on failure", async () => {
    const sub = path.join(dir, "explicit");
    await mkdirp(sub);
    const target = path.join(sub, "x.metadata");
    await writeFileAtomic(target, "{}", { tempPath: `${target}_tmp` });
    assert.deepEqual(await readdir(sub), ["x.metadata"]);
    // The temp file already exists: creation is exclusive, so the write fails and the target is untouched.
    await writeFile(`${target}_tmp`, "stale");
    await assert.rejects(writeFileAtomic(target, "new", { tempPath: `${target}_tmp` }), /EEXIST/);
    assert.equal(await readFile(target, "utf8"), "{}");
  });

  it("atomic write stream publishes only on commit", async () => {
    const target = path.join(dir, "stream.bin");
    const out = createAtomicWriteStream(target);
    const chunks = Array.from({ length: 50 }, (_, i) => Buffer.alloc(100_000, i));
    await pipeline(Readable.from(chunks), out);
    assert.equal(existsSync(target), false, "nothing under the final name before commit");
    await out.commit();
    const data = await readFile(target);
    assert.equal(data.length, 5_000_000);
    assert.equal(data[4_999_999], 49);
    assert.equal(out.bytesWritten, 5_000_000);
    assert.deepEqual(
      (await readdir(dir)).filter((n) => n.includes("stream")),
      ["stream.bin"],
    );
  });

  it("commit() ends a stream that was written to directly", async () => {
    const target = path.join(dir, "direct.txt");
    const out = createAtomicWriteStream(target);
    out.write("hello ");
    out.write("world");
    await out.commit();
    assert.equal(await readFile(target, "utf8"), "hello world");
    await assert.rejects(out.commit(), /committed/);
  });

  it("a crash mid-write (abort) leaves nothing under the final name", async () => {
    const sub = path.join(dir, "abort");
    await mkdirp(sub);
    const target = path.join(sub, "half.bin");
    const out = createAtomicWriteStream(target);
    out.write(Buffer.alloc(64 * 1024, 1));
    await new Promise((resolve) => setImmediate(resolve));
    await out.abort();
    await out.abort();
    assert.equal(existsSync(target), false);
    assert.deepEqual(await readdir(sub), []);
  });

  it("a failing source in pipeline() removes the temp file", async () => {
    const sub = path.join(dir, "failing");
    await mkdirp(sub);
    const target = path.join(sub, "broken.bin");
    async function* source(): AsyncGenerator<Buffer> {
      yield Buffer.alloc(1000, 7);
      throw new Error("source exploded");
    }
    const out = createAtomicWriteStream(target);
    await assert.rejects(pipeline(Readable.from(source()), out), /source exploded/);
    await assert.rejects(out.commit(), /source exploded|aborted|destroyed/);
    // _destroy's cleanup is asynchronous; wait for the close event.
    if (!out.closed) await new Promise((resolve) => out.once("close", resolve));
    assert.deepEqual(await readdir(sub), []);
  });

  it("commit() after destroy() rejects instead of hanging", async () => {
    const target = path.join(dir, "destroyed.txt");
    const out = createAtomicWriteStream(target);
    out.write("partial");
    out.destroy();
    await assert.rejects(out.commit(), /destroyed|aborted/);
    assert.equal(existsSync(target), false);
  });

  it("an existing file survives an aborted replacement", async () => {
    const target = path.join(dir, "keep.txt");
    await writeFileAtomic(target, "original");
    const out = createAtomicWriteStream(target);
    out.write("replacement");
    await out.abort();
    assert.equal(await readFile(target, "utf8"), "original");
  });

  it("copyFileAtomic, renameAtomic, removeIfExists, fsyncDirectory", async () => {
    const source = path.join(dir, "src.txt");
    const copy = path.join(dir, "nested", "deeper", "copy.txt");
    await writeFileAtomic(source, "payload");
    await mkdirp(path.dirname(copy));
    await copyFileAtomic(source, copy, { mode: 0o640 });
    assert.equal(await readFile(copy, "utf8"), "payload");
    assert.equal((await stat(copy)).mode & 0o777, 0o640);
    await assert.rejects(copyFileAtomic(path.join(dir, "missing"), copy), /ENOENT/);
    assert.deepEqual(await readdir(path.dirname(copy)), ["copy.txt"]);

    const moved = path.join(dir, "moved.txt");
    await renameAtomic(copy, moved);
    assert.equal(await readFile(moved, "utf8"), "payload");
    assert.equal(existsSync(copy), false);

    assert.equal(await removeIfExists(moved), true);
    assert.equal(await removeIfExists(moved), false);
    assert.equal(await removeIfExists(path.join(dir, "nested"), { recursive: true }), true);
    assert.equal(await removeIfExists(path.join(dir, "nested"), { recursive: true }), false);
    await fsyncDirectory(dir);
  });

  it("exists follows links unless noFollow; isErrno matches any of the codes given", async () => {
    const dangling = path.join(dir, "dangling-link");
    await symlink(path.join(dir, "no-such-target"), dangling);
    assert.equal(await exists(dir), true);
    assert.equal(await exists(dangling), false);
    assert.equal(await exists(dangling, { noFollow: true }), true);
    assert.equal(await exists(path.join(dir, "no-such-file"), { noFollow: true }), false);
    const err = await stat(path.join(dir, "no-such-file")).catch((e: unknown) => e);
    assert.equal(isErrno(err, "ENOTDIR", "ENOENT"), true);
    assert.equal(isErrno(err, "EEXIST"), false);
    assert.equal(isErrno("ENOENT", "ENOENT"), false);
  });
});
