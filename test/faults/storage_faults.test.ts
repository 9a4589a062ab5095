/**
 * Network faults between pghoard and each real object store (Swift's S3 API, Swift, Azurite,
 * OpenSSH sftp): test/helpers/fault_proxy.ts resets connections, stalls, dribbles bytes and cuts
 * replies short while the three kinds of transfer the daemon does run through the backend: a WAL
 * upload from memory (archive), a streamed multi-part upload (basebackup) and a download to a
 * file (restore). Each attempt must succeed or fail with an error; an object or file is never
 * stored short or corrupt, and no temp object or file is left behind.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { after, describe, it } from "node:test";
import {
  CreateMultipartUploadCommand,
  ListMultipartUploadsCommand,
  S3Client,
  UploadPartCommand,
} from "@aws-sdk/client-s3";
import { createStorage } from "../../src/storage/index.js";
import { StorageNotFoundError, type StorageBackend } from "../../src/storage/types.js";
import { FaultProxy, type Fault } from "../helpers/fault_proxy.js";
import { startServer, type TestServer } from "../storage/servers.js";

const ROUNDS = Number(process.env.PGHOARD_FAULT_ROUNDS ?? 4);
const ATTEMPTS = 8;

type Backend = "s3" | "swift" | "azure" | "sftp";

/** The faults drawn in turn by new connections: every kind, at varying offsets. */
function plan(connection: number): Fault {
  const at = [0, 100, 700, 4096, 70_000][connection % 5]!;
  switch (connection % 6) {
    case 0:
      return { kind: "reset", afterBytes: at };
    case 1:
      return { kind: "truncate", afterBytes: at + 50 };
    case 2:
      return { kind: "stall", afterBytes: at, ms: 1500 };
    case 3:
      return { kind: "slow", chunk: 8192, delayMs: 1 };
    case 4:
      return { kind: "reset", afterBytes: at * 37 + 1000 };
    default:
      return { kind: "none" };
  }
}

interface Setup {
  /** Through the proxy. */
  faulty: StorageBackend;
  /** Straight to the server: the judge. */
  clean: StorageBackend;
  proxy: FaultProxy;
  multipart: number;
  prefix: string;
}

function s3Client(server: TestServer): S3Client {
  return new S3Client({
    endpoint: server.env.S3_ENDPOINT,
    region: server.env.S3_REGION,
    forcePathStyle: true,
    credentials: { accessKeyId: server.env.S3_ACCESS_KEY!, secretAccessKey: server.env.S3_SECRET_KEY! },
  });
}

/** Multipart uploads started and never completed or aborted (each holds its parts' storage). */
async function incompleteMultipartUploads(server: TestServer, prefix: string): Promise<string[]> {
  const s3 = s3Client(server);
  try {
    const res = await s3.send(new ListMultipartUploadsCommand({ Bucket: "pghoard-faults", Prefix: prefix }));
    return (res.Uploads ?? []).map((u) => `${u.Key} ${u.UploadId}`);
  } finally {
    s3.destroy();
  }
}

async function open(kind: Backend, server: TestServer, prefix: string): Promise<Setup> {
  const env = server.env;
  const targetPort = (): number => {
    if (kind === "s3") return Number(new URL(env.S3_ENDPOINT!).port);
    if (kind === "swift") return Number(new URL(env.SWIFT_AUTH_URL!).port);
    if (kind === "azure") return Number(env.AZURE_BLOB_PORT);
    return Number(env.SFTP_PORT);
  };
  const proxy = await new FaultProxy({ host: "127.0.0.1", port: targetPort() }, plan).start();
  const config = (port: number): Record<string, unknown> => {
    switch (kind) {
      case "s3":
        return {
          storage_type: "s3",
          region: env.S3_REGION,
          bucket_name: "pghoard-faults",
          aws_access_key_id: env.S3_ACCESS_KEY,
          aws_secret_access_key: env.S3_SECRET_KEY,
          host: "127.0.0.1",
          port,
          is_secure: false,
          prefix,
          segment_size: 5 * 1024 * 1024,
          read_timeout: 10,
        };
      case "swift": {
        const auth = new URL(env.SWIFT_AUTH_URL!);
        auth.port = String(port);
        return {
          storage_type: "swift",
          user: env.SWIFT_USER,
          key: env.SWIFT_KEY,
          auth_url: auth.toString(),
          auth_version: "1.0",
          container_name: "pghoard-faults",
          prefix,
          segment_size: 1024 * 1024,
        };
      }
      case "azure":
        return {
          storage_type: "azure",
          account_name: env.AZURE_ACCOUNT_NAME,
          account_key: env.AZURE_ACCOUNT_KEY,
          bucket_name: "pghoard-faults",
          host: "127.0.0.1",
          port,
          is_secure: false,
          prefix,
          block_size: 1024 * 1024,
        };
      case "sftp":
        return {
          storage_type: "sftp",
          server: "127.0.0.1",
          port,
          username: env.SFTP_USER,
          private_key: env.SFTP_PRIVATE_KEY,
          prefix: `backups/${prefix}`,
        };
    }
  };
  const clean = await createStorage(config(targetPort()) as never);
  const faulty = await createStorage(config(proxy.port) as never);
  return { faulty, clean, proxy, prefix, multipart: kind === "s3" ? 11 * 1024 * 1024 + 123 : 3 * 1024 * 1024 + 123 };
}

/** An object is either absent or exactly `data`: never short, never corrupt. */
async function assertAbsentOrExact(store: StorageBackend, key: string, data: Buffer): Promise<boolean> {
  try {
    const got = await store.getContentsToMemory(key);
    assert.equal(got.data.length, data.length, `${key}: stored ${got.data.length} bytes of ${data.length}`);
    assert.ok(got.data.equals(data), `${key}: stored bytes differ`);
    return true;
  } catch (err) {
    if (err instanceof StorageNotFoundError) return false;
    throw err;
  }
}

/** Runs `op` until it succeeds (each failure must be an Error, checked by `check`); returns the failures. */
async function untilSuccess(
  proxy: FaultProxy,
  what: string,
  op: () => Promise<void>,
  check: () => Promise<void>,
): Promise<number> {
  for (let attempt = 1; ; attempt++) {
    proxy.dropAll(); // a new connection draws a new fault
    try {
      await op();
      await check();
      return attempt - 1;
    } catch (err) {
      if (err instanceof assert.AssertionError) throw err;
      assert.ok(err instanceof Error, `${what}: failed with a non-Error ${String(err)}`);
      await check();
      assert.ok(attempt < ATTEMPTS, `${what}: still failing after ${ATTEMPTS} attempts: ${err.message}`);
    }
  }
}

const figures: string[] = [];
after(() => console.log(`# faults injected: ${figures.join("; ")}`));

const servers: Record<string, Promise<TestServer | { skip: string }>> = {};
function server(kind: "swift" | "azurite" | "sshd"): Promise<TestServer | { skip: string }> {
  servers[kind] ??= startServer(kind);
  return servers[kind];
}
after(async () => {
  for (const s of Object.values(servers)) {
    const started = await s;
    if ("env" in started) await started.stop();
  }
});

describe("network faults between pghoard and the object stores", { concurrency: 4, timeout: 600_000 }, () => {
  const serverOf: Record<Backend, "swift" | "azurite" | "sshd"> = {
    s3: "swift",
    swift: "swift",
    azure: "azurite",
    sftp: "sshd",
  };
  for (const kind of ["s3", "swift", "azure", "sftp"] as Backend[]) {
    it(`${kind}: archive, basebackup upload and restore download succeed or fail cleanly`, async (t) => {
      const started = await server(serverOf[kind]);
      if ("skip" in started) return t.skip(started.skip);
      const setup = await open(kind, started, `faults-${kind}-${Date.now()}`);
      const { faulty, clean, proxy } = setup;
      const dir = await mkdtemp(path.join(os.tmpdir(), "pghoard-faults-"));
      t.after(async () => {
        await proxy.stop();
        await faulty.close();
        await clean.deleteTree("").catch(() => undefined);
        await clean.close();
        await rm(dir, { recursive: true, force: true });
      });
      let failures = 0;
      const expected = new Map<string, Buffer>();
      for (let round = 0; round < ROUNDS; round++) {
        // archive: a compressed WAL segment from memory
        const wal = randomBytes(300 * 1024 + round);
        const walKey = `site/xlog/00000001000000000000000${round}`;
        failures += await untilSuccess(
          proxy,
          `upload ${walKey}`,
          () => faulty.storeFileFromMemory(walKey, wal, { "compression-algorithm": "snappy" }),
          async () => void (await assertAbsentOrExact(clean, walKey, wal)),
        );
        assert.ok(await assertAbsentOrExact(clean, walKey, wal), `${walKey} stored after success`);
        expected.set(walKey, wal);

        // basebackup: a streamed chunk larger than one part/segment/block
        const chunk = randomBytes(setup.multipart);
        const chunkKey = `site/basebackup_chunk/backup${round}/chunk.pghoard`;
        failures += await untilSuccess(
          proxy,
          `upload ${chunkKey}`,
          () => faulty.storeFileObject(chunkKey, Readable.from(splitInto(chunk, 256 * 1024)), {}),
          async () => void (await assertAbsentOrExact(clean, chunkKey, chunk)),
        );
        assert.ok(await assertAbsentOrExact(clean, chunkKey, chunk), `${chunkKey} stored after success`);
        expected.set(chunkKey, chunk);

        // restore: download to a file
        const target = path.join(dir, `restored-${round}`);
        failures += await untilSuccess(
          proxy,
          `download ${chunkKey}`,
          async () => void (await faulty.getContentsToFile(chunkKey, target)),
          async () => {
            const names = await readdir(dir);
            for (const name of names)
              assert.ok(/^restored-\d+$/.test(name), `temp file ${name} left in the restore directory`);
            if (names.includes(`restored-${round}`)) {
              const got = await readFile(target);
              assert.ok(got.equals(chunk), `${target}: downloaded ${got.length} bytes of ${chunk.length}, or differs`);
            }
          },
        );
        const got = await faulty.getContentsToMemory(walKey).catch(() => null);
        if (got) assert.ok(got.data.equals(wal), `${walKey}: a download returned wrong bytes`);
      }
      // Only the objects written, complete: no temp objects or segments of failed attempts.
      // Swift's large objects keep their segments beside the manifest (rohmu's layout): those of a
      // stored object are expected, any other would be a leftover of a failed attempt.
      const listed = (await clean.list("", { recursive: true }))
        .map((o) => o.name)
        .filter((name) => {
          const m = /^(.*)_segments\/([^/]+)\/[0-9a-f]{8}$/.exec(name);
          return !(kind === "swift" && m && expected.has(`${m[1]}/${m[2]}`));
        })
        .sort();
      assert.deepEqual(listed, [...expected.keys()].sort());
      if (kind === "s3") assert.deepEqual(await incompleteMultipartUploads(started, setup.prefix), []);
      for (const [key, data] of expected) assert.ok(await assertAbsentOrExact(clean, key, data));
      const { none, ...injected } = proxy.injected;
      const total = Object.values(injected).reduce((a, b) => a + b, 0);
      assert.ok(total >= ROUNDS * 3, `only ${total} faults injected: ${JSON.stringify(proxy.injected)}`);
      figures.push(
        `${kind} ${total} (${JSON.stringify(injected)}, ${failures} failed attempts, ${none} clean connections)`,
      );
    });
  }
});

describe("an upload interrupted by a crash", () => {
  it("s3: the start-up clean-up aborts multipart uploads started before the daemon, and only those", async (t) => {
    const started = await server("swift");
    if ("skip" in started) return t.skip(started.skip);
    const prefix = `crashed-${Date.now()}`;
    const setup = await open("s3", started, prefix);
    t.after(async () => {
      await setup.proxy.stop();
      await setup.faulty.close();
      await setup.clean.close();
    });
    // What a SIGKILLed basebackup upload leaves: an upload with a part and no completion.
    const s3 = s3Client(started);
    const key = `${prefix}/site/basebackup_chunk/b1/chunk.pghoard`;
    const { UploadId } = await s3.send(new CreateMultipartUploadCommand({ Bucket: "pghoard-faults", Key: key }));
    await s3.send(
      new UploadPartCommand({ Bucket: "pghoard-faults", Key: key, UploadId, PartNumber: 1, Body: randomBytes(1000) }),
    );
    s3.destroy();
    assert.equal((await incompleteMultipartUploads(started, prefix)).length, 1);
    // An upload newer than the daemon's start may be in progress: kept.
    assert.deepEqual(await setup.clean.removeInterruptedWrites?.("site", new Date(Date.now() - 3600_000)), []);
    assert.equal((await incompleteMultipartUploads(started, prefix)).length, 1);
    assert.deepEqual(await setup.clean.removeInterruptedWrites?.("site", new Date(Date.now() + 3600_000)), [
      "site/basebackup_chunk/b1/chunk.pghoard",
    ]);
    assert.deepEqual(await incompleteMultipartUploads(started, prefix), []);
  });
});

function* splitInto(data: Buffer, size: number): Generator<Buffer> {
  for (let off = 0; off < data.length; off += size) yield data.subarray(off, off + size);
}
