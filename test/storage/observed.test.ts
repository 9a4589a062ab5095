/**
 * `object_storage.statsd_info` and `object_storage.notifier` through createStorage, received by a
 * real UDP socket and a real HTTP server on 127.0.0.1.
 */
import assert from "node:assert/strict";
import { createSocket } from "node:dgram";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { createStorage } from "../../src/storage/index.js";
import { StorageError } from "../../src/storage/types.js";

let tmp = "";
before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "pghoard-observed-"));
});
after(async () => rm(tmp, { recursive: true, force: true }));

/** A UDP listener collecting datagrams as text. */
async function udpListener() {
  const socket = createSocket("udp4");
  const lines: string[] = [];
  socket.on("message", (msg) => lines.push(msg.toString("utf8")));
  await new Promise<void>((resolve) => socket.bind(0, "127.0.0.1", resolve));
  return {
    port: (socket.address() as AddressInfo).port,
    lines,
    async waitFor(count: number) {
      // Bounded: a missing datagram fails the test instead of hanging it.
      for (let i = 0; i < 500 && lines.length < count; i++) await new Promise((r) => setTimeout(r, 20));
    },
    close: () => new Promise<void>((resolve) => socket.close(() => resolve())),
  };
}

describe("object_storage.statsd_info", () => {
  it("sends rohmu_operation_count/size per operation (telegraf, tags and operation_map applied)", async () => {
    const udp = await udpListener();
    try {
      const store = await createStorage({
        storage_type: "local",
        directory: path.join(tmp, "statsd"),
        statsd_info: { port: udp.port, tags: { site: "s1" }, operation_map: { get_file: "download" } },
      });
      await store.storeFileFromMemory("a/x", Buffer.from("hello"), {});
      const file = path.join(tmp, "src.bin");
      await writeFile(file, Buffer.alloc(1000, 1));
      await store.storeFileFromDisk("a/y", file, {});
      await store.storeFileObject("a/z", Readable.from([Buffer.alloc(300), Buffer.alloc(33)]), {});
      await store.getContentsToMemory("a/x");
      await store.list("a");
      await store.deleteKey("a/y");
      await store.close();
      await udp.waitFor(10);
      assert.deepEqual(udp.lines, [
        "rohmu_operation_count,operation=store_file,site=s1:1|c",
        "rohmu_operation_size,operation=store_file,site=s1:5|c",
        "rohmu_operation_count,operation=store_file,site=s1:1|c",
        "rohmu_operation_size,operation=store_file,site=s1:1000|c",
        "rohmu_operation_count,operation=store_file,site=s1:1|c",
        "rohmu_operation_size,operation=store_file,site=s1:333|c",
        "rohmu_operation_count,operation=download,site=s1:1|c",
        "rohmu_operation_size,operation=download,site=s1:5|c",
        "rohmu_operation_count,operation=iter_key,site=s1:1|c",
        "rohmu_operation_count,operation=delete_key,site=s1:1|c",
      ]);
    } finally {
      await udp.close();
    }
  });

  it("datadog message_format puts tags after the type", async () => {
    const udp = await udpListener();
    try {
      const store = await createStorage({
        storage_type: "local",
        directory: path.join(tmp, "statsd-dd"),
        statsd_info: { port: udp.port, message_format: "datadog", tags: { env: "test" } },
      });
      await store.storeFileFromMemory("k", Buffer.from("ab"), {});
      await store.close();
      await udp.waitFor(2);
      assert.deepEqual(udp.lines, [
        "rohmu_operation_count:1|c|#env:test,operation:store_file",
        "rohmu_operation_size:2|c|#env:test,operation:store_file",
      ]);
    } finally {
      await udp.close();
    }
  });

  it("refuses a bad message_format, naming the key", async () => {
    await assert.rejects(
      createStorage({ storage_type: "local", directory: tmp, statsd_info: { message_format: "graphite" } }),
      (err) => err instanceof StorageError && /statsd_info\.message_format/.test(err.message),
    );
  });
});

describe("object_storage.notifier", () => {
  it("POSTs one JSON event per object created, copied and deleted, in order", async () => {
    const events: Record<string, unknown>[] = [];
    let failFirst = true;
    const server = createServer((req: IncomingMessage, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        // One transient failure: the event is retried, not lost.
        if (failFirst) {
          failFirst = false;
          res.writeHead(503).end();
          return;
        }
        events.push({ path: req.url, method: req.method, ...JSON.parse(Buffer.concat(chunks).toString("utf8")) });
        res.writeHead(200).end();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/events`;
      const store = await createStorage({
        storage_type: "local",
        directory: path.join(tmp, "notify"),
        prefix: "pfx",
        notifier: { notifier_type: "http", url },
      });
      await store.storeFileFromMemory("site/xlog/A", Buffer.from("12345"), { "compression-algorithm": "snappy" });
      await store.copyFile("site/xlog/A", "site/xlog/B", { x: "1" });
      await store.deleteKey("site/xlog/A");
      await store.deleteTree("site/xlog");
      await store.close(); // waits for the queue
      assert.equal(events.length, 4);
      const [created, copied, deleted, tree] = events as Record<string, unknown>[];
      assert.equal(created!.path, "/events");
      assert.equal(created!.method, "POST");
      assert.equal(created!.op, "UPLOAD");
      assert.equal(created!.key, "site/xlog/A");
      assert.equal(created!.size, 5);
      assert.deepEqual(created!.metadata, { "compression-algorithm": "snappy" });
      // Python's isoformat() leaves the fraction out when it is zero, as ours does; a clock read
      // to the millisecond hits that once in a thousand.
      assert.match(String(created!.last_modified), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00$/);
      assert.deepEqual(
        [copied!.op, copied!.key, copied!.size, copied!.metadata],
        ["UPLOAD", "site/xlog/B", null, { x: "1" }],
      );
      assert.deepEqual(deleted, { path: "/events", method: "POST", op: "DELETE", key: "site/xlog/A" });
      assert.deepEqual(tree, { path: "/events", method: "POST", op: "DELETE_TREE", key: "site/xlog" });
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  it("refuses an unknown notifier_type, naming the key", async () => {
    await assert.rejects(
      createStorage({ storage_type: "local", directory: tmp, notifier: { notifier_type: "kafka" } }),
      (err) => err instanceof StorageError && /notifier\.notifier_type/.test(err.message),
    );
  });
});
