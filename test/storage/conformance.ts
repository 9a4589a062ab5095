/**
 * The one conformance suite every storage backend runs: each StorageBackend operation, metadata
 * round trips, multi-page listings, objects larger than the multipart/segment size, not-found
 * handling and interrupted uploads leaving nothing under the final key.
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { StorageError, StorageNotFoundError, type Metadata, type StorageBackend } from "../../src/storage/types.js";

export interface ConformanceOptions {
  /** Makes a backend whose keys live below `prefix` (the object_storage.prefix). */
  makeBackend: (prefix: string) => Promise<StorageBackend>;
  /** Skip the whole suite with this reason (server unavailable). */
  skip?: string | false;
  /** A size above the backend's configured multipart/segment size (default: no large-object test). */
  largeObjectSize?: number;
  /** Keys written for the multi-page listing test; pick > the configured page size (default 1100). */
  manyKeys?: number;
  /** Azure stores `_` for `-` and reads every `_` back as `-` (upstream rohmu): keys with `_` change. */
  underscoreInMetadataKeys?: "preserved" | "becomes-hyphen";
  /** Backends that store header-style metadata return key names in lower case (S3, Swift). */
  lowerCasesMetadataKeys?: boolean;
}

function sha256(data: Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

/** Deterministic-enough pseudo-random data without spending CPU on crypto for big sizes. */
function makeData(size: number): Buffer {
  const block = randomBytes(Math.min(size, 1 << 20));
  const out = Buffer.allocUnsafe(size);
  for (let off = 0, i = 0; off < size; off += block.length, i++) {
    block.copy(out, off);
    if (off + 8 <= size) out.writeUInt32LE(i, off); // make blocks differ
  }
  return out;
}

/** A stream of `data` in uneven chunks, optionally failing after `failAfter` bytes. */
function chunkedStream(data: Buffer, failAfter?: number): Readable {
  return Readable.from(
    (async function* () {
      let off = 0;
      let step = 65_521;
      while (off < data.length) {
        if (failAfter !== undefined && off >= failAfter) throw new Error("source failed on purpose");
        const end = Math.min(data.length, off + step);
        yield data.subarray(off, end);
        off = end;
        step = step === 65_521 ? 1_000_003 : 65_521;
        await new Promise((r) => setImmediate(r));
      }
      if (failAfter !== undefined) throw new Error("source failed on purpose");
    })(),
  );
}

async function assertNotFound(promise: Promise<unknown>, what: string): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof StorageNotFoundError, `${what}: expected StorageNotFoundError, got ${String(err)}`);
    return true;
  });
}

export function runConformance(name: string, options: ConformanceOptions): void {
  const underscore = options.underscoreInMetadataKeys ?? "preserved";
  const keyCase = (k: string): string => (options.lowerCasesMetadataKeys ? k.toLowerCase() : k);
  /** What the backend returns for metadata we stored. */
  const expectedMetadata = (md: Metadata): Metadata =>
    Object.fromEntries(
      Object.entries(md).map(([k, v]) => [keyCase(underscore === "preserved" ? k : k.replaceAll("_", "-")), v]),
    );

  describe(`storage conformance: ${name}`, { skip: options.skip || false }, () => {
    const runId = `${Date.now().toString(36)}-${randomBytes(3).toString("hex")}`;
    let store: StorageBackend;
    let tmp: string;

    before(async () => {
      store = await options.makeBackend(`conformance-${runId}`);
      tmp = await mkdtemp(path.join(os.tmpdir(), "storage-conformance-"));
    });

    after(async () => {
      await store?.deleteTree("").catch(() => undefined);
      await store?.close();
      await rm(tmp, { recursive: true, force: true });
    });

    it("reports its storage type", () => {
      assert.equal(typeof store.storageType, "string");
      assert.ok(store.storageType.length > 0);
    });

    it("stores from memory and reads back data and metadata", async () => {
      const data = makeData(100_000);
      const metadata = { "compression-algorithm": "snappy", "original-file-size": "16777216", "pg-version": "150004" };
      await store.storeFileFromMemory("site/xlog/000000010000000000000001", data, metadata);
      const got = await store.getContentsToMemory("site/xlog/000000010000000000000001");
      assert.equal(sha256(got.data), sha256(data));
      assert.deepEqual(got.metadata, expectedMetadata(metadata));
      assert.deepEqual(await store.getMetadataForKey("site/xlog/000000010000000000000001"), expectedMetadata(metadata));
    });

    it("round-trips metadata keys with '-', '_', digits and Content-Length", async () => {
      const metadata = {
        "start-wal-segment": "000000010000000000000002",
        "tablespace-name-16385": "tbs",
        with_underscore: "u",
        "mixed-and_both": "m",
        "Content-Length": "3",
        "start-time": "2015-02-12T14:07:19+00:00",
        "end-time": "2022-05-18 12:33:23.745186+02:00",
      };
      await store.storeFileFromMemory("meta/obj", Buffer.from("abc"), metadata);
      const got = await store.getMetadataForKey("meta/obj");
      assert.deepEqual(got, expectedMetadata(metadata));
      const listed = await store.list("meta");
      assert.equal(listed.length, 1);
      assert.deepEqual(listed[0]!.metadata, expectedMetadata(metadata));
    });

    it("stores an empty object", async () => {
      await store.storeFileFromMemory("empty/zero", Buffer.alloc(0), { a: "1" });
      const got = await store.getContentsToMemory("empty/zero");
      assert.equal(got.data.length, 0);
      assert.deepEqual(got.metadata, expectedMetadata({ a: "1" }));
      const [item] = await store.list("empty");
      assert.equal(item?.size, 0);
    });

    it("stores from disk and downloads to a file atomically", async () => {
      const data = makeData(300_000);
      const src = path.join(tmp, "upload.bin");
      await writeFile(src, data);
      await store.storeFileFromDisk("disk/file.bin", src, { format: "pghoard-bb-v2" });
      const dst = path.join(tmp, "out", "..", "download.bin");
      const md = await store.getContentsToFile("disk/file.bin", dst);
      assert.deepEqual(md, expectedMetadata({ format: "pghoard-bb-v2" }));
      assert.equal(sha256(await readFile(dst)), sha256(data));
      const leftovers = (await readdir(tmp)).filter((f) => f !== "upload.bin" && f !== "download.bin");
      assert.deepEqual(leftovers, []);
    });

    it("streams an upload of unknown length and streams a download", async () => {
      const data = makeData(3_000_000);
      await store.storeFileObject("stream/a", chunkedStream(data), { "original-file-size": String(data.length) });
      const { stream, metadata, size } = await store.getReadStream("stream/a");
      assert.equal(size, data.length);
      assert.deepEqual(metadata, expectedMetadata({ "original-file-size": String(data.length) }));
      const chunks: Buffer[] = [];
      for await (const c of stream) chunks.push(c as Buffer);
      assert.equal(sha256(Buffer.concat(chunks)), sha256(data));
    });

    it("overwrites an existing key with new content and metadata", async () => {
      await store.storeFileFromMemory("over/k", Buffer.from("first"), { v: "1", old: "x" });
      await store.storeFileFromMemory("over/k", Buffer.from("second!"), { v: "2" });
      const got = await store.getContentsToMemory("over/k");
      assert.equal(got.data.toString(), "second!");
      assert.deepEqual(got.metadata, expectedMetadata({ v: "2" }));
    });

    it("handles keys with spaces, plus signs and dots", async () => {
      const key = "odd/name with space+plus=eq~tilde.v1.txt";
      await store.storeFileFromMemory(key, Buffer.from("odd"), { k: "v" });
      assert.equal((await store.getContentsToMemory(key)).data.toString(), "odd");
      assert.deepEqual(
        (await store.list("odd")).map((o) => o.name),
        [key],
      );
      await store.deleteKey(key);
      await assertNotFound(store.getMetadataForKey(key), "after delete");
    });

    it("maps every missing object to StorageNotFoundError", async () => {
      await assertNotFound(store.getContentsToMemory("missing/x"), "getContentsToMemory");
      await assertNotFound(store.getReadStream("missing/x"), "getReadStream");
      await assertNotFound(store.getMetadataForKey("missing/x"), "getMetadataForKey");
      await assertNotFound(store.deleteKey("missing/x"), "deleteKey");
      await assertNotFound(store.copyFile("missing/x", "missing/y"), "copyFile");
      const dst = path.join(tmp, "never.bin");
      await assertNotFound(store.getContentsToFile("missing/x", dst), "getContentsToFile");
      await assert.rejects(stat(dst), { code: "ENOENT" });
      assert.deepEqual(await store.list("missing"), []);
      assert.deepEqual(await store.list("missing", { recursive: true }), []);
      await store.deleteTree("missing"); // nothing there: no error
    });

    it("lists one level or recursively, sorted, with sizes, dates and metadata", async () => {
      const before = Date.now() - 5 * 60_000;
      await store.storeFileFromMemory("lst/b", Buffer.alloc(2), { n: "b" });
      await store.storeFileFromMemory("lst/a", Buffer.alloc(1), { n: "a" });
      await store.storeFileFromMemory("lst/sub/c", Buffer.alloc(3), { n: "c" });
      await store.storeFileFromMemory("lst/sub/deeper/d", Buffer.alloc(4), { n: "d" });
      await store.storeFileFromMemory("lst-sibling/e", Buffer.alloc(5), { n: "e" });
      const flat = await store.list("lst");
      assert.deepEqual(
        flat.map((o) => [o.name, o.size, o.metadata]),
        [
          ["lst/a", 1, expectedMetadata({ n: "a" })],
          ["lst/b", 2, expectedMetadata({ n: "b" })],
        ],
      );
      for (const o of flat) {
        assert.ok(o.lastModified instanceof Date && !Number.isNaN(o.lastModified.getTime()));
        assert.ok(
          o.lastModified.getTime() > before && o.lastModified.getTime() < Date.now() + 5 * 60_000,
          String(o.lastModified),
        );
      }
      assert.deepEqual(
        (await store.list("lst/")).map((o) => o.name),
        ["lst/a", "lst/b"],
      );
      const deep = await store.list("lst", { recursive: true });
      assert.deepEqual(
        deep.map((o) => o.name),
        ["lst/a", "lst/b", "lst/sub/c", "lst/sub/deeper/d"],
      );
      assert.deepEqual(
        (await store.list("lst/sub")).map((o) => o.name),
        ["lst/sub/c"],
      );
    });

    it("keeps backends with different prefixes apart", async () => {
      const other = await options.makeBackend(`conformance-${runId}-other`);
      try {
        await other.storeFileFromMemory("iso/x", Buffer.from("other"), {});
        await store.storeFileFromMemory("iso/x", Buffer.from("mine"), {});
        assert.equal((await other.getContentsToMemory("iso/x")).data.toString(), "other");
        assert.equal((await store.getContentsToMemory("iso/x")).data.toString(), "mine");
        assert.deepEqual(
          (await other.list("iso")).map((o) => o.name),
          ["iso/x"],
        );
        await other.deleteTree("");
        assert.equal((await store.getContentsToMemory("iso/x")).data.toString(), "mine");
      } finally {
        await other.close();
      }
    });

    it("deletes keys and trees", async () => {
      await store.storeFileFromMemory("del/one", Buffer.from("1"), {});
      await store.storeFileFromMemory("del/tree/a", Buffer.from("a"), {});
      await store.storeFileFromMemory("del/tree/sub/b", Buffer.from("b"), {});
      await store.storeFileFromMemory("del/tree-sibling/c", Buffer.from("c"), {});
      await store.deleteKey("del/one");
      await assertNotFound(store.getMetadataForKey("del/one"), "deleted key");
      await store.deleteTree("del/tree");
      assert.deepEqual(
        (await store.list("del", { recursive: true })).map((o) => o.name),
        ["del/tree-sibling/c"],
      );
    });

    it("copies with the source metadata or with new metadata", async () => {
      await store.storeFileFromMemory("cp/src", Buffer.from("copy me"), { "source-md": "s", keep: "k" });
      await store.copyFile("cp/src", "cp/same");
      const same = await store.getContentsToMemory("cp/same");
      assert.equal(same.data.toString(), "copy me");
      assert.deepEqual(same.metadata, expectedMetadata({ "source-md": "s", keep: "k" }));
      await store.copyFile("cp/src", "cp/new", { "new-md": "n" });
      const fresh = await store.getContentsToMemory("cp/new");
      assert.equal(fresh.data.toString(), "copy me");
      assert.deepEqual(fresh.metadata, expectedMetadata({ "new-md": "n" }));
      assert.deepEqual(await store.getMetadataForKey("cp/src"), expectedMetadata({ "source-md": "s", keep: "k" }));
    });

    it("lists more than one page", { timeout: 120_000 }, async () => {
      const count = options.manyKeys ?? 1100;
      const names = Array.from({ length: count }, (_, i) => `many/k${String(i).padStart(5, "0")}`);
      let next = 0;
      await Promise.all(
        Array.from({ length: 16 }, async () => {
          while (next < names.length) {
            const key = names[next++]!;
            await store.storeFileFromMemory(key, Buffer.from(key), { i: key.slice(-5) });
          }
        }),
      );
      const listed = await store.list("many");
      assert.equal(listed.length, count);
      assert.deepEqual(
        listed.map((o) => o.name),
        names,
      );
      assert.equal(listed[count - 1]!.metadata[keyCase("i")], names[count - 1]!.slice(-5));
      await store.deleteTree("many");
      assert.deepEqual(await store.list("many"), []);
    });

    it("leaves nothing under the key when a small upload's source fails", async () => {
      await assert.rejects(
        store.storeFileObject("fail/small", chunkedStream(makeData(100_000), 70_000), { x: "1" }),
        (err) => {
          assert.ok(err instanceof Error);
          assert.ok(!(err instanceof StorageNotFoundError));
          return true;
        },
      );
      await assertNotFound(store.getMetadataForKey("fail/small"), "after failed upload");
      assert.deepEqual(await store.list("fail", { recursive: true }), []);
    });

    const large = options.largeObjectSize;
    describe(
      "objects larger than the multipart/segment size",
      { skip: large ? false : "no segment size configured" },
      () => {
        const size = large ?? 0;
        let data: Buffer;
        before(() => {
          data = makeData(size);
        });

        it("streams a large object of unknown length", { timeout: 120_000 }, async () => {
          await store.storeFileObject("large/stream", chunkedStream(data), { "original-file-size": String(size) });
          const got = await store.getContentsToMemory("large/stream");
          assert.equal(got.data.length, size);
          assert.equal(sha256(got.data), sha256(data));
          assert.deepEqual(got.metadata, expectedMetadata({ "original-file-size": String(size) }));
          const [item] = await store.list("large");
          assert.equal(item?.name, "large/stream");
          assert.equal(item?.size, size);
        });

        it("uploads a large file from disk and from memory", { timeout: 120_000 }, async () => {
          const src = path.join(tmp, "large.bin");
          await writeFile(src, data);
          await store.storeFileFromDisk("large/disk", src, { from: "disk" });
          await store.storeFileFromMemory("large/memory", data, { from: "memory" });
          const dst = path.join(tmp, "large-download.bin");
          assert.deepEqual(await store.getContentsToFile("large/disk", dst), expectedMetadata({ from: "disk" }));
          assert.equal(sha256(await readFile(dst)), sha256(data));
          const mem = await store.getContentsToMemory("large/memory");
          assert.equal(sha256(mem.data), sha256(data));
          assert.deepEqual(mem.metadata, expectedMetadata({ from: "memory" }));
        });

        it("copies and overwrites a large object", { timeout: 120_000 }, async () => {
          await store.copyFile("large/disk", "large/copy", { copied: "yes" });
          const copy = await store.getContentsToMemory("large/copy");
          assert.equal(sha256(copy.data), sha256(data));
          assert.deepEqual(copy.metadata, expectedMetadata({ copied: "yes" }));
          const smaller = data.subarray(0, Math.floor(size / 2) + 7);
          await store.storeFileObject("large/disk", chunkedStream(smaller), {});
          assert.equal(sha256((await store.getContentsToMemory("large/disk")).data), sha256(smaller));
        });

        it("deletes a large object completely", async () => {
          for (const key of ["large/stream", "large/disk", "large/memory", "large/copy"]) await store.deleteKey(key);
          await assertNotFound(store.getMetadataForKey("large/stream"), "deleted large object");
          // segments (Swift) or parts live below sibling names; nothing may remain anywhere
          assert.deepEqual(
            (await store.list("", { recursive: true })).filter((o) => o.name.startsWith("large")),
            [],
          );
        });

        it("leaves nothing under the key when a large upload's source fails midway", { timeout: 120_000 }, async () => {
          const failAt = Math.floor(size * 0.75);
          await assert.rejects(store.storeFileObject("large/failing", chunkedStream(data, failAt), {}), (err) => {
            assert.ok(err instanceof Error && !(err instanceof StorageNotFoundError), String(err));
            return true;
          });
          await assertNotFound(store.getMetadataForKey("large/failing"), "after failed large upload");
          assert.deepEqual(
            (await store.list("", { recursive: true })).filter((o) => o.name.startsWith("large")),
            [],
          );
        });
      },
    );

    it("wraps failures other than not-found in StorageError", async () => {
      // an invalid operation every backend must reject without crashing: reading a "directory"
      await store.storeFileFromMemory("dir/inner/file", Buffer.from("x"), {});
      await assert.rejects(store.getContentsToMemory("dir/inner"), (err) => err instanceof StorageError);
    });
  });
}
