import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { createStorage } from "../../src/storage/index.js";
import { decodeSidecar, encodeSidecar, LocalStorage } from "../../src/storage/local.js";
import { StorageError, StorageNotFoundError } from "../../src/storage/types.js";
import { hasShared, sharedDir } from "../helpers/paths.js";
import { runConformance } from "./conformance.js";

const sha256 = (data: Buffer | string): string => createHash("sha256").update(data).digest("hex");

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Every file below `dir`, relative, sorted (to see temp files and sidecars). */
async function tree(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => path.relative(dir, path.join(e.parentPath ?? e.path, e.name)))
    .sort();
}

describe("storage/local", () => {
  let dir: string;
  let storage: LocalStorage;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "pghoard-local-storage-"));
    storage = (await createStorage({ storage_type: "local", directory: dir, prefix: "/pfx/" })) as LocalStorage;
  });
  after(async () => {
    await storage.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("is created by the factory; unknown types are rejected", async () => {
    assert.ok(storage instanceof LocalStorage);
    assert.equal(storage.storageType, "local");
    assert.equal(storage.root, path.join(dir, "pfx"));
    await assert.rejects(createStorage({ storage_type: "ftp" }), (err: unknown) => {
      assert.ok(err instanceof StorageError);
      assert.equal((err as Error).message, "unsupported storage type 'ftp'");
      return true;
    });
    await assert.rejects(createStorage({ storage_type: "local" }), /requires 'directory'/);
  });

  it("stores from memory with an upstream-style sidecar", async () => {
    const data = Buffer.from("hello world");
    await storage.storeFileFromMemory("site/xlog/000000010000000000000001", data, {
      "original-file-size": "11",
      host: "h",
    });
    const file = path.join(dir, "pfx", "site", "xlog", "000000010000000000000001");
    assert.deepEqual(await readFile(file), data);
    assert.equal(
      await readFile(`${file}.metadata`, "utf8"),
      `{"original-file-size": "11", "host": "h", "_hash": "${sha256(data)}"}`,
    );
    const got = await storage.getContentsToMemory("site/xlog/000000010000000000000001");
    assert.deepEqual(got.data, data);
    assert.deepEqual(got.metadata, { "original-file-size": "11", host: "h" });
    assert.deepEqual(await storage.getMetadataForKey("/site/xlog/000000010000000000000001/".slice(1)), got.metadata);
    assert.deepEqual(await tree(path.join(dir, "pfx", "site")), [
      "xlog/000000010000000000000001",
      "xlog/000000010000000000000001.metadata",
    ]);
  });

  it("round-trips metadata values: strings kept, numbers stringified, null dropped, non-ASCII escaped", async () => {
    // Callers written against upstream sometimes pass numbers; the sidecar holds strings only.
    const metadata = { "a-b": "x", n: 5, none: null, unicode: "päivää ☃ 𝄞", quote: 'say "hi"\n' } as unknown as Record<
      string,
      string
    >;
    await storage.storeFileFromMemory("meta/obj", Buffer.alloc(0), metadata);
    const expected = { "a-b": "x", n: "5", unicode: "päivää ☃ 𝄞", quote: 'say "hi"\n' };
    assert.deepEqual(await storage.getMetadataForKey("meta/obj"), expected);
    const sidecar = await readFile(path.join(dir, "pfx", "meta", "obj.metadata"), "utf8");
    assert.match(sidecar, /"p\\u00e4iv\\u00e4\\u00e4 \\u2603 \\ud834\\udd1e"/);
    assert.deepEqual(decodeSidecar(sidecar), { ...expected, _hash: sha256("") });
    const [listed] = await storage.list("meta");
    assert.equal(listed?.size, 0);
    assert.equal(listed?.md5, sha256(""));
  });

  it("writes sidecars byte-identical to Python's json.dump", (t) => {
    const python = spawnSync("python3", ["-c", "import json,sys; json.dump(json.load(sys.stdin), sys.stdout)"], {
      input: JSON.stringify({ "k-1": "v", u: "ä☃𝄞\u007f\u0001\t", e: "", "Content-Length": "12" }),
      encoding: "utf8",
    });
    if (python.error || python.status !== 0) {
      t.skip("python3 not available");
      return;
    }
    assert.equal(encodeSidecar({ "k-1": "v", u: "ä☃𝄞\u007f\u0001\t", e: "", "Content-Length": "12" }), python.stdout);
    assert.equal(encodeSidecar({}), "{}");
  });

  it("stores from disk and from a stream; downloads atomically to a file", async () => {
    const source = path.join(dir, "source.bin");
    const payload = Buffer.alloc(3 * 1024 * 1024 + 17, 0xab);
    await writeFile(source, payload);
    await storage.storeFileFromDisk("site/basebackup/bb1", source, { "start-time": "2024-01-01T00:00:00+00:00" });
    const chunks = Array.from({ length: 40 }, (_, i) => Buffer.alloc(100_000, i));
    await storage.storeFileObject("site/basebackup/bb2", Readable.from(chunks), { format: "pghoard-bb-v2" });

    const { stream, metadata, size } = await storage.getReadStream("site/basebackup/bb2");
    assert.equal(size, 4_000_000);
    assert.deepEqual(metadata, { format: "pghoard-bb-v2" });
    assert.deepEqual(await readAll(stream), Buffer.concat(chunks));

    const downloadDir = path.join(dir, "download");
    await mkdir(downloadDir);
    const target = path.join(downloadDir, "bb1");
    assert.deepEqual(await storage.getContentsToFile("site/basebackup/bb1", target), {
      "start-time": "2024-01-01T00:00:00+00:00",
    });
    assert.deepEqual(await readFile(target), payload);
    await assert.rejects(
      storage.getContentsToFile("site/basebackup/missing", path.join(downloadDir, "x")),
      StorageNotFoundError,
    );
    assert.deepEqual(await readdir(downloadDir), ["bb1"]);
    const [listed] = await storage.list("site/basebackup");
    assert.equal(listed?.md5, sha256(payload));
    await assert.rejects(storage.storeFileFromDisk("site/basebackup/bb3", path.join(dir, "nope"), {}), /ENOENT/);
  });

  it("an interrupted stream upload leaves no object and no temp file", async () => {
    async function* failing(): AsyncGenerator<Buffer> {
      yield Buffer.alloc(1024 * 1024, 1);
      yield Buffer.alloc(1024 * 1024, 2);
      throw new Error("connection lost");
    }
    await assert.rejects(
      storage.storeFileObject("interrupted/obj", Readable.from(failing()), { a: "1" }),
      /connection lost/,
    );
    await assert.rejects(storage.getMetadataForKey("interrupted/obj"), StorageNotFoundError);
    assert.deepEqual(await storage.list("interrupted"), []);
    assert.deepEqual(await tree(path.join(dir, "pfx", "interrupted")), []);

    // Replacing an existing object with a failing stream keeps the old one intact.
    await storage.storeFileFromMemory("interrupted/kept", Buffer.from("old"), { v: "1" });
    await assert.rejects(
      storage.storeFileObject("interrupted/kept", Readable.from(failing()), { v: "2" }),
      /connection lost/,
    );
    assert.deepEqual(await storage.getContentsToMemory("interrupted/kept"), {
      data: Buffer.from("old"),
      metadata: { v: "1" },
    });
    assert.deepEqual(await tree(path.join(dir, "pfx", "interrupted")), ["kept", "kept.metadata"]);
  });

  it("lists many keys sorted, non-recursively by default, skipping unpublished and temp entries", async () => {
    const names = Array.from(
      { length: 300 },
      (_, i) => `00000001000000000000${(299 - i).toString(16).toUpperCase().padStart(4, "0")}`,
    );
    for (const name of names) await storage.storeFileFromMemory(`many/xlog/${name}`, Buffer.from(name), { n: name });
    await storage.storeFileFromMemory("many/xlog/sub/nested", Buffer.from("n"), {});
    const xlogDir = path.join(dir, "pfx", "many", "xlog");
    // Entries upstream also ignores: data without sidecar, temp files, hidden files, stray sidecars.
    await writeFile(path.join(xlogDir, "unpublished"), "x");
    await writeFile(path.join(xlogDir, ".concurrent_upload_abc"), "x");
    await writeFile(path.join(xlogDir, "foo.metadata_tmp"), "{}");
    await writeFile(path.join(xlogDir, "orphan.metadata"), "{}");

    const listed = await storage.list("many/xlog");
    assert.equal(listed.length, 300);
    assert.deepEqual(
      listed.map((o) => o.name),
      names.map((n) => `many/xlog/${n}`).sort(),
    );
    assert.equal(listed[0]?.metadata.n, names.at(-1));
    assert.ok(listed.every((o) => o.lastModified instanceof Date && o.size === 24));
    assert.deepEqual(await storage.list("many/xlog/"), listed, "a trailing slash is implied");

    const deep = await storage.list("many", { recursive: true });
    assert.equal(deep.length, 301);
    assert.ok(deep.some((o) => o.name === "many/xlog/sub/nested"));
    assert.deepEqual(await storage.list("many"), [], "non-recursive listing ignores sub-directories");
    assert.deepEqual(await storage.list("does/not/exist"), []);
    assert.deepEqual(await storage.list("many/xlog/sub/nested"), [], "listing a key is not listing a directory");
    await assert.rejects(storage.getMetadataForKey("many/xlog/unpublished"), StorageNotFoundError);
    await assert.rejects(storage.getContentsToMemory("many/xlog/unpublished"), StorageNotFoundError);
  });

  it("reports missing objects as StorageNotFoundError", async () => {
    const missing = "nothing/here";
    await assert.rejects(storage.getMetadataForKey(missing), StorageNotFoundError);
    await assert.rejects(storage.getContentsToMemory(missing), StorageNotFoundError);
    await assert.rejects(storage.getReadStream(missing), StorageNotFoundError);
    await assert.rejects(
      storage.deleteKey(missing),
      (err: unknown) => err instanceof StorageNotFoundError && err.key === missing,
    );
    await assert.rejects(storage.copyFile(missing, "nothing/copy"), StorageNotFoundError);
    await assert.rejects(
      storage.getMetadataForKey("site/xlog/000000010000000000000001/below-a-file"),
      StorageNotFoundError,
    );
    await storage.deleteTree("nothing"); // no error
  });

  it("rejects keys that would escape the store or collide with sidecars", async () => {
    const outside = path.join(dir, "outside");
    await writeFile(outside, "secret");
    await writeFile(`${outside}.metadata`, "{}");
    const bad = ["../outside", "a/../../outside", "/etc/passwd", "a/./b", "..", "a/\0b"];
    for (const key of bad) {
      for (const op of [
        () => storage.getMetadataForKey(key),
        () => storage.getContentsToMemory(key),
        () => storage.storeFileFromMemory(key, Buffer.from("x"), {}),
        () => storage.deleteKey(key),
        () => storage.deleteTree(key),
        () => storage.list(key),
        () => storage.copyFile("site/xlog/000000010000000000000001", key),
      ]) {
        await assert.rejects(
          op(),
          (err: unknown) => err instanceof StorageError && !(err instanceof StorageNotFoundError),
          key,
        );
      }
    }
    for (const key of ["a/b.metadata", "a/.hidden", "a/x.metadata_tmp1", "a/.concurrent_upload_x"]) {
      await assert.rejects(storage.storeFileFromMemory(key, Buffer.from("x"), {}), /reserved/, key);
    }
    assert.equal(await readFile(outside, "utf8"), "secret");
  });

  it("deletes keys (data and sidecar) and trees", async () => {
    await storage.storeFileFromMemory("del/a/1", Buffer.from("1"), {});
    await storage.storeFileFromMemory("del/a/2", Buffer.from("2"), {});
    await storage.storeFileFromMemory("del/b/1", Buffer.from("3"), {});
    await storage.deleteKey("del/a/1");
    assert.deepEqual(await tree(path.join(dir, "pfx", "del")), ["a/2", "a/2.metadata", "b/1", "b/1.metadata"]);
    await assert.rejects(storage.deleteKey("del/a/1"), StorageNotFoundError);
    await assert.rejects(storage.deleteKey("del/a"), StorageNotFoundError, "a directory is not a key");
    await storage.deleteTree("del/a");
    assert.deepEqual(await tree(path.join(dir, "pfx", "del")), ["b/1", "b/1.metadata"]);
    await storage.deleteTree("del/b/1"); // a key, not a tree: left alone
    assert.deepEqual(
      (await storage.list("del/b")).map((o) => o.name),
      ["del/b/1"],
    );
    // "" is everything below the backend prefix; the prefix directory itself stays.
    const scoped = new LocalStorage({ directory: path.join(dir, "pfx", "del"), prefix: "scoped" });
    await scoped.storeFileFromMemory("x/y", Buffer.from("y"), {});
    await scoped.deleteTree("");
    assert.deepEqual(await readdir(path.join(dir, "pfx", "del", "scoped")), []);
    assert.deepEqual(
      (await storage.list("del/b")).map((o) => o.name),
      ["del/b/1"],
    );
  });

  it("copies objects with the same or new metadata", async () => {
    await storage.storeFileFromMemory("copy/src", Buffer.from("payload"), { a: "1", b: "2" });
    await storage.copyFile("copy/src", "copy/dst-same");
    assert.deepEqual(await storage.getContentsToMemory("copy/dst-same"), {
      data: Buffer.from("payload"),
      metadata: { a: "1", b: "2" },
    });
    await storage.copyFile("copy/src", "copy/other/dst-new", { c: "3" });
    assert.deepEqual(await storage.getMetadataForKey("copy/other/dst-new"), { c: "3" });
    const [copied] = await storage.list("copy/other");
    assert.equal(copied?.md5, sha256("payload"), "the content hash carries over");
    assert.deepEqual(await tree(path.join(dir, "pfx", "copy")), [
      "dst-same",
      "dst-same.metadata",
      "other/dst-new",
      "other/dst-new.metadata",
      "src",
      "src.metadata",
    ]);
  });
});

describe("storage/local reading a store written by upstream pghoard", () => {
  const setDir = path.join(sharedDir, "fixtures", "pghoard-made", "snappy-plain-basic");
  const skip =
    !hasShared || !existsSync(setDir) ? "shared fixtures (../shared/fixtures/pghoard-made) not present" : false;

  interface GroundTruthObject {
    key: string;
    stored_size: number;
    stored_sha256: string;
    metadata: Record<string, string>;
    kind: string;
  }

  it("lists xlog and basebackup objects with upstream's metadata", { skip }, async () => {
    const truth = JSON.parse(await readFile(path.join(setDir, "ground-truth.json"), "utf8")) as {
      objects: GroundTruthObject[];
    };
    const storage = await createStorage({ storage_type: "local", directory: path.join(setDir, "store") });
    const listed = [
      ...(await storage.list("snappy-plain-basic/xlog")),
      ...(await storage.list("snappy-plain-basic/basebackup")),
    ];
    assert.deepEqual(listed.map((o) => o.name).sort(), truth.objects.map((o) => o.key).sort());
    for (const object of listed) {
      const expected = truth.objects.find((o) => o.key === object.name);
      assert.ok(expected, object.name);
      const { _hash, ...visible } = expected.metadata;
      assert.deepEqual(object.metadata, visible);
      assert.equal(object.md5, _hash);
      assert.equal(object.size, expected.stored_size);
    }
    const wal = listed.find((o) => o.name.endsWith("/000000010000000000000016"));
    assert.ok(wal);
    assert.equal(wal.metadata["compression-algorithm"], "snappy");
    assert.equal(wal.metadata["original-file-size"], "16777216");
    const { data, metadata } = await storage.getContentsToMemory(wal.name);
    assert.equal(sha256(data), truth.objects.find((o) => o.key === wal.name)?.stored_sha256);
    assert.equal(sha256(data), wal.md5);
    assert.deepEqual(metadata, wal.metadata);
    const basebackup = listed.find((o) => o.name.includes("/basebackup/"));
    assert.equal(basebackup?.metadata["start-wal-segment"], "000000010000000000000016");
    assert.deepEqual(await storage.list("snappy-plain-basic"), [], "the site directory holds only sub-directories");
  });
});

const conformanceDir = mkdtempSync(path.join(os.tmpdir(), "pghoard-local-conformance-"));
after(() => rmSync(conformanceDir, { recursive: true, force: true }));
runConformance("local", {
  makeBackend: async (prefix) => new LocalStorage({ storage_type: "local", directory: conformanceDir, prefix }),
  manyKeys: 250,
});
