/**
 * Upload and download throughput of every storage backend against the test servers on 127.0.0.1,
 * with the local backend as reference:
 *
 *   node dist/bench/storage.js [--size MiB] [--small N] [--only local,s3,...]
 *
 * Per backend: one large object (default 256 MiB) uploaded from disk and downloaded to a file,
 * then N small objects (default 1000 × 8 KiB) uploaded and downloaded 16 at a time. Backends use
 * their production defaults (part/segment/block/chunk sizes). Google runs against the in-repo
 * fake (test/storage/fake_gcs_server.ts), so its figures measure the client, not GCS.
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { createStorage, type ObjectStorageConfig } from "../src/storage/index.js";
import { mapLimit } from "../src/storage/shared.js";
import type { StorageBackend } from "../src/storage/types.js";
import { FakeGcsServer } from "../test/storage/fake_gcs_server.js";
import { startServer, type ServerKind, type TestServer } from "../test/storage/servers.js";

const MiB = 1024 * 1024;

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1]! : fallback;
}

const largeSize = Number(arg("size", "256")) * MiB;
const smallCount = Number(arg("small", "1000"));
const smallSize = 8 * 1024;
const only = arg("only", "local,s3,swift,azure,google,sftp").split(",");

interface Setup {
  name: string;
  config: () => Promise<ObjectStorageConfig>;
  stop?: () => Promise<void>;
}

const work = mkdtempSync(path.join(os.tmpdir(), "bench-storage-"));
const servers = new Map<ServerKind, TestServer>();

async function server(kind: ServerKind): Promise<TestServer> {
  let s = servers.get(kind);
  if (!s) {
    const started = await startServer(kind);
    if ("skip" in started) throw new Error(started.skip);
    s = started;
    servers.set(kind, s);
  }
  return s;
}

const fake = new FakeGcsServer("bench-token");
const setups: Setup[] = [
  { name: "local", config: async () => ({ storage_type: "local", directory: path.join(work, "local") }) },
  {
    name: "s3",
    config: async () => {
      const env = (await server("swift")).env;
      const u = new URL(env.S3_ENDPOINT!);
      return {
        storage_type: "s3",
        region: env.S3_REGION,
        bucket_name: "bench",
        aws_access_key_id: env.S3_ACCESS_KEY,
        aws_secret_access_key: env.S3_SECRET_KEY,
        host: u.hostname,
        port: Number(u.port),
      };
    },
  },
  {
    name: "swift",
    config: async () => {
      const env = (await server("swift")).env;
      return {
        storage_type: "swift",
        user: env.SWIFT_USER,
        key: env.SWIFT_KEY,
        auth_url: env.SWIFT_AUTH_URL,
        auth_version: "1.0",
        container_name: "bench",
      };
    },
  },
  {
    name: "azure",
    config: async () => {
      const env = (await server("azurite")).env;
      return {
        storage_type: "azure",
        account_name: env.AZURE_ACCOUNT_NAME,
        account_key: env.AZURE_ACCOUNT_KEY,
        bucket_name: "bench",
        host: env.AZURE_BLOB_HOST,
        port: Number(env.AZURE_BLOB_PORT),
        is_secure: false,
      };
    },
  },
  {
    name: "google (fake)",
    config: async () => ({
      storage_type: "google",
      project_id: "bench",
      bucket_name: "bench",
      api_endpoint: fake.url || (await fake.start()),
      credentials: { type: "access_token", access_token: "bench-token" },
    }),
  },
  {
    name: "sftp",
    config: async () => {
      const env = (await server("sshd")).env;
      return {
        storage_type: "sftp",
        server: env.SFTP_HOST,
        port: Number(env.SFTP_PORT),
        username: env.SFTP_USER,
        private_key: env.SFTP_PRIVATE_KEY,
        prefix: "bench",
      };
    },
  },
];

function mbps(bytes: number, ms: number): string {
  return ((bytes / MiB / ms) * 1000).toFixed(1).padStart(7);
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t = performance.now();
  await fn();
  return performance.now() - t;
}

async function benchOne(store: StorageBackend, largeFile: string, small: Buffer[]): Promise<string[]> {
  const up = await timed(() =>
    store.storeFileFromDisk("bench/large", largeFile, { "original-file-size": String(largeSize) }),
  );
  const down = await timed(() => store.getContentsToFile("bench/large", path.join(work, "large.out")));
  rmSync(path.join(work, "large.out"), { force: true });
  await store.deleteKey("bench/large");
  const smallUp = await timed(() =>
    mapLimit(small, 16, (data, i) => store.storeFileFromMemory(`bench/small/${i}`, data, { i: String(i) })),
  );
  const smallDown = await timed(() => mapLimit(small, 16, (_, i) => store.getContentsToMemory(`bench/small/${i}`)));
  const list = await timed(() => store.list("bench/small"));
  await store.deleteTree("bench");
  const smallBytes = small.length * smallSize;
  return [
    mbps(largeSize, up),
    mbps(largeSize, down),
    `${((small.length / smallUp) * 1000).toFixed(0).padStart(6)} (${mbps(smallBytes, smallUp).trim()})`,
    `${((small.length / smallDown) * 1000).toFixed(0).padStart(6)} (${mbps(smallBytes, smallDown).trim()})`,
    `${(list / 1000).toFixed(2)} s`,
  ];
}

async function main(): Promise<void> {
  const largeFile = path.join(work, "large.bin");
  const block = randomBytes(MiB);
  const big = Buffer.alloc(largeSize);
  for (let off = 0; off < largeSize; off += MiB) block.copy(big, off);
  writeFileSync(largeFile, big);
  const small = Array.from({ length: smallCount }, () => randomBytes(smallSize));
  console.log(
    `storage bench: ${largeSize / MiB} MiB object from disk, ${smallCount} × ${smallSize / 1024} KiB objects, 16 at a time (${os.cpus().length} cores, load ${os.loadavg()[0]!.toFixed(1)})`,
  );
  console.log(
    [
      "backend".padEnd(14),
      "large up MB/s",
      "large down MB/s",
      "small up obj/s (MB/s)",
      "small down obj/s (MB/s)",
      `list ${smallCount}`,
    ].join(" | "),
  );
  try {
    for (const setup of setups) {
      if (!only.some((o) => setup.name.startsWith(o))) continue;
      let row: string[];
      try {
        const store = await createStorage(await setup.config());
        try {
          row = await benchOne(store, largeFile, small);
        } finally {
          await store.close();
        }
      } catch (err) {
        row = [`failed: ${(err as Error).message.slice(0, 120)}`];
      }
      console.log([setup.name.padEnd(14), ...row].join(" | "));
    }
  } finally {
    for (const s of servers.values()) await s.stop();
    await fake.stop();
    rmSync(work, { recursive: true, force: true });
  }
}

await main();
