import assert from "node:assert/strict";
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { Readable } from "node:stream";
import { after, describe, it } from "node:test";
import { StorageError } from "../../src/storage/types.js";
import { createStorage } from "../../src/storage/index.js";
import { runConformance } from "./conformance.js";
import { startServer, type TestServer } from "./servers.js";

const server = await startServer("sshd");
const running: TestServer | null = "env" in server ? server : null;
after(async () => running?.stop());

runConformance("sftp (OpenSSH 9.2 internal-sftp)", {
  skip: "skip" in server ? server.skip : false,
  makeBackend: (prefix) =>
    createStorage({
      storage_type: "sftp",
      server: running!.env.SFTP_HOST!,
      port: Number(running!.env.SFTP_PORT!),
      username: running!.env.SFTP_USER!,
      private_key: running!.env.SFTP_PRIVATE_KEY!,
      // relative to the login directory (SFTP_ROOT)
      prefix: `backups/${prefix}`,
    }),
  // 600 directory entries with the sidecars: several READDIR replies (OpenSSH sends 100 per reply)
  manyKeys: 300,
  // no segments on SFTP; still exercises long streamed uploads and interrupted ones
  largeObjectSize: 6 * 1024 * 1024 + 12345,
});

describe("sftp files on the server", { skip: "skip" in server ? server.skip : false }, () => {
  it("publishes data then sidecar by rename and leaves no temp files after a failed upload", async () => {
    const store = await createStorage({
      storage_type: "sftp",
      server: running!.env.SFTP_HOST!,
      port: Number(running!.env.SFTP_PORT!),
      username: running!.env.SFTP_USER!,
      private_key: running!.env.SFTP_PRIVATE_KEY!,
      prefix: "files",
    });
    await store.storeFileFromMemory("site/xlog/000000010000000000000001", Buffer.from("wal"), {
      "compression-algorithm": "snappy",
    });
    const failing = Readable.from(
      (async function* () {
        yield Buffer.alloc(3 * 1024 * 1024);
        throw new Error("source failed on purpose");
      })(),
    );
    await assert.rejects(store.storeFileObject("site/xlog/000000010000000000000002", failing, {}), StorageError);
    const root = path.join(running!.env.SFTP_ROOT!, "files");
    const files = (await readdir(root, { recursive: true })).map(String).sort();
    assert.deepEqual(files, [
      "site",
      "site/xlog",
      "site/xlog/000000010000000000000001",
      "site/xlog/000000010000000000000001.metadata",
    ]);
    // the sidecar is byte-for-byte what rohmu's json.dump writes
    assert.equal(
      await readFile(path.join(root, "site/xlog/000000010000000000000001.metadata"), "utf8"),
      '{"compression-algorithm": "snappy"}',
    );
    await store.deleteTree("");
    await store.close();
  });
});
