/**
 * Round trips through the main-thread streams and the worker pool, for every algorithm with and
 * without encryption; every object we write is also decoded by the independent test decoder.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash, generateKeyPairSync, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Readable, Writable, type Duplex } from "node:stream";
import { pipeline } from "node:stream/promises";
import { after, before, describe, it } from "node:test";
import {
  FileFormatPool,
  createDecodeStream,
  createDecoder,
  createEncoder,
  createEncodeStream,
  decodeBuffer,
  encodeBuffer,
  encodingMetadata,
  type CompressionAlgorithm,
  type EncodeOptions,
} from "../../src/fileformat/index.js";
import { decodeIndependently, pageLikeData, parseSnappyFraming, xzCheckType } from "./support.js";

const MiB = 1024 * 1024;
const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 3072 });
const publicPem = publicKey.export({ type: "spki", format: "pem" }).toString();
const privatePem = privateKey.export({ type: "pkcs8", format: "pem" }).toString();

const SMALL_SIZES = [0, 1, 65535, 65536, 65537];
const BIG = 100 * MiB;
const algorithms: Array<CompressionAlgorithm | null> = ["snappy", "zstd", "lzma", null];

function options(algorithm: CompressionAlgorithm | null, encrypted: boolean): EncodeOptions {
  return {
    algorithm,
    level: 0,
    encryptionKeyId: encrypted ? "test-key" : null,
    publicKeyPem: encrypted ? publicPem : null,
  };
}

function splitInto(data: Buffer, step: number): Buffer[] {
  const pieces: Buffer[] = [];
  for (let offset = 0; offset < data.length; offset += step) pieces.push(data.subarray(offset, offset + step));
  return pieces;
}

async function through(stream: Duplex, pieces: Buffer[]): Promise<Buffer> {
  const out: Buffer[] = [];
  await pipeline(
    Readable.from(pieces),
    stream,
    new Writable({
      write(chunk: Buffer, _enc, cb) {
        out.push(chunk);
        cb();
      },
    }),
  );
  return Buffer.concat(out);
}

const sha1 = (data: Buffer): string => createHash("sha1").update(data).digest("hex");

let pool: FileFormatPool;
let scratch: string;
let big: Buffer;
let bigFile: string;
before(async () => {
  pool = new FileFormatPool(2);
  // tmpfs when available: the 100 MiB cases fsync several files, which is slow on a VM disk.
  scratch = await mkdtemp(path.join(existsSync("/dev/shm") ? "/dev/shm" : os.tmpdir(), "ff-roundtrip-"));
  big = pageLikeData(BIG, 7);
  bigFile = path.join(scratch, "big.plain");
  await writeFile(bigFile, big);
});
after(async () => {
  await pool.close();
  await rm(scratch, { recursive: true, force: true });
});

function checkIndependently(
  stored: Buffer,
  algorithm: CompressionAlgorithm | null,
  encrypted: boolean,
  plain: Buffer,
): void {
  const decoded = decodeIndependently(stored, algorithm, encrypted ? privatePem : null);
  assert.ok(decoded.equals(plain), "independent decoder disagrees");
  if (encrypted && plain.length > 0) {
    assert.equal(stored.subarray(0, 6).toString("latin1"), "pghoa1");
    assert.equal(stored.readUInt16BE(6), 384);
  }
  const compressed = encrypted ? null : stored;
  if (compressed && algorithm === "lzma") assert.equal(xzCheckType(compressed), 4, "xz check must be CRC64");
}

async function roundTripMain(plain: Buffer, algorithm: CompressionAlgorithm | null, encrypted: boolean): Promise<void> {
  const opts = options(algorithm, encrypted);
  const step = plain.length > MiB ? 64 * 1024 : 777;
  const stored = await through(createEncodeStream(opts), splitInto(plain, step));
  if (encrypted && plain.length === 0 && algorithm !== "zstd" && algorithm !== "lzma") assert.equal(stored.length, 0);
  checkIndependently(stored, algorithm, encrypted, plain);
  const decodeStep = stored.length > MiB ? 100_000 : 333;
  const decoded = await through(
    createDecodeStream(encodingMetadata(opts), () => privatePem),
    splitInto(stored, decodeStep),
  );
  assert.ok(decoded.equals(plain), "main-thread stream round trip");
  if (plain.length <= MiB)
    assert.ok(
      (await decodeBuffer(await encodeBuffer(plain, opts), encodingMetadata(opts), () => privatePem)).equals(plain),
    );
}

async function roundTripPool(
  plain: Buffer,
  plainFile: string,
  algorithm: CompressionAlgorithm | null,
  encrypted: boolean,
): Promise<void> {
  const opts = { ...options(algorithm, encrypted), hashAlgorithm: "sha1" };
  const metadata = encodingMetadata(opts);
  const tag = `${algorithm}-${encrypted}-${plain.length}`;
  const storedFile = path.join(scratch, `${tag}.stored`);
  const result = await pool.encodeFile(plainFile, storedFile, opts);
  const stored = await readFile(storedFile);
  assert.equal(result.originalSize, plain.length);
  assert.equal(result.storedSize, stored.length);
  assert.equal(result.hash, sha1(plain));
  checkIndependently(stored, algorithm, encrypted, plain);

  const decodedFile = path.join(scratch, `${tag}.decoded`);
  assert.deepEqual(await pool.decodeFile(storedFile, decodedFile, metadata, encrypted ? privatePem : null), {
    size: plain.length,
  });
  assert.ok((await readFile(decodedFile)).equals(plain), "pool decodeFile");
  await rm(decodedFile);

  const inMemory = await pool.encodeFileToBuffer(plainFile, opts);
  assert.equal(inMemory.data.length, inMemory.storedSize);
  assert.equal(inMemory.hash, sha1(plain));
  checkIndependently(inMemory.data, algorithm, encrypted, plain);

  const encodeStream = pool.createEncodeStream(opts);
  const streamed = await through(encodeStream, splitInto(plain, plain.length > MiB ? 200_000 : 1000));
  const streamResult = await encodeStream.result();
  assert.equal(streamResult.storedSize, streamed.length);
  assert.equal(streamResult.originalSize, plain.length);
  assert.equal(streamResult.hash, sha1(plain));
  checkIndependently(streamed, algorithm, encrypted, plain);
  const decoded = await through(
    pool.createDecodeStream(metadata, encrypted ? privatePem : null),
    splitInto(streamed, 65_000),
  );
  assert.ok(decoded.equals(plain), "pool stream round trip");
  await rm(storedFile);
}

for (const algorithm of algorithms) {
  for (const encrypted of [false, true]) {
    describe(`${algorithm ?? "no compression"}${encrypted ? " + encryption" : ""}`, () => {
      for (const size of SMALL_SIZES) {
        it(`${size} bytes`, async () => {
          const plain = pageLikeData(size, size + 1);
          const plainFile = path.join(scratch, `small-${algorithm}-${encrypted}-${size}`);
          await writeFile(plainFile, plain);
          await roundTripMain(plain, algorithm, encrypted);
          await roundTripPool(plain, plainFile, algorithm, encrypted);
        });
      }
      // xz at 100 MiB takes minutes with lzma-native's unoptimised prebuilt (~10-50 MB/s); 2 MiB
      // still spans several xz blocks (preset 0: 768 KiB blocks).
      const bigLabel = algorithm === "lzma" ? "2 MiB" : "100 MiB";
      it(bigLabel, async () => {
        if (algorithm === "lzma") {
          const plain = big.subarray(0, 2 * MiB);
          const plainFile = path.join(scratch, `lzma-2m-${encrypted}`);
          await writeFile(plainFile, plain);
          await roundTripMain(plain, algorithm, encrypted);
          await roundTripPool(plain, plainFile, algorithm, encrypted);
          return;
        }
        await roundTripMain(big, algorithm, encrypted);
        await roundTripPool(big, bigFile, algorithm, encrypted);
      });
    });
  }
}

describe("encoder parameters", () => {
  it("zstd level 0 is level 3; zstdThreads output is ordinary frames", async () => {
    const plain = big.subarray(0, 2 * MiB);
    const at0 = await encodeBuffer(plain, { ...options("zstd", false), level: 0 });
    const at3 = await encodeBuffer(plain, { ...options("zstd", false), level: 3 });
    assert.ok(at0.equals(at3));
    const plainFile = path.join(scratch, "zstd-threads");
    await writeFile(plainFile, big.subarray(0, 24 * MiB));
    const threaded = await pool.encodeFileToBuffer(plainFile, { ...options("zstd", true), zstdThreads: 2 });
    assert.ok(decodeIndependently(threaded.data, "zstd", privatePem).equals(big.subarray(0, 24 * MiB)));
  });

  it("lzma level 0 is xz preset 0 (LZMA2 dictionary 256 KiB), CRC64", async (t) => {
    const stored = await encodeBuffer(big.subarray(0, MiB), options("lzma", false));
    assert.equal(xzCheckType(stored), 4);
    const file = path.join(scratch, "preset0.xz");
    await writeFile(file, stored);
    const list = spawnSync("xz", ["--robot", "--list", "-vv", file]);
    if (list.status !== 0) {
      t.skip("xz CLI not available");
      return;
    }
    assert.match(list.stdout.toString(), /dict=256KiB/);
  });

  it("reads concatenated xz streams with padding and concatenated zstd frames", async () => {
    const a = Buffer.from("first part|");
    const b = Buffer.from("second part");
    const xz = Buffer.concat([
      await encodeBuffer(a, options("lzma", false)),
      Buffer.alloc(8),
      await encodeBuffer(b, options("lzma", false)),
    ]);
    assert.equal(
      (await decodeBuffer(xz, { "compression-algorithm": "lzma" }, () => undefined)).toString(),
      "first part|second part",
    );
    const zst = Buffer.concat([
      await encodeBuffer(a, options("zstd", false)),
      await encodeBuffer(b, options("zstd", false)),
    ]);
    assert.equal(
      (await decodeBuffer(zst, { "compression-algorithm": "zstd" }, () => undefined)).toString(),
      "first part|second part",
    );
    const sz = Buffer.concat([
      await encodeBuffer(a, options("snappy", false)),
      await encodeBuffer(b, options("snappy", false)),
    ]);
    assert.equal(parseSnappyFraming(sz).toString(), "first part|second part");
    assert.equal(
      (await decodeBuffer(sz, { "compression-algorithm": "snappy" }, () => undefined)).toString(),
      "first part|second part",
    );
  });

  it("accepts PKCS#1 RSA keys and interoperates with Python's lzma (when python3 is present)", async (t) => {
    const pair = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const pub1 = pair.publicKey.export({ type: "pkcs1", format: "pem" }).toString();
    const priv1 = pair.privateKey.export({ type: "pkcs1", format: "pem" }).toString();
    assert.match(pub1, /BEGIN RSA PUBLIC KEY/);
    const opts: EncodeOptions = { algorithm: "lzma", level: 0, encryptionKeyId: "k1", publicKeyPem: pub1 };
    const stored = await encodeBuffer(Buffer.from("pkcs1 data"), opts);
    assert.equal(stored.readUInt16BE(6), 256);
    assert.equal((await decodeBuffer(stored, encodingMetadata(opts), () => priv1)).toString(), "pkcs1 data");

    const plain = big.subarray(0, 300_000);
    const ours = await encodeBuffer(plain, options("lzma", false));
    const script =
      "import lzma,sys\nd=sys.stdin.buffer.read()\nsys.stdout.buffer.write(lzma.decompress(d) if sys.argv[1]=='d' else lzma.compress(d, preset=0))";
    const decodedByPython = spawnSync("python3", ["-c", script, "d"], { input: ours, maxBuffer: 64 * MiB });
    if (decodedByPython.status !== 0) {
      t.skip("python3 with lzma not available");
      return;
    }
    assert.ok(decodedByPython.stdout.equals(plain));
    const pythonXz = spawnSync("python3", ["-c", script, "c"], { input: plain, maxBuffer: 64 * MiB }).stdout;
    assert.ok((await decodeBuffer(pythonXz, { "compression-algorithm": "lzma" }, () => undefined)).equals(plain));
  });

  it("incompressible data written in odd pieces (snappy uncompressed chunks)", async () => {
    const random = randomBytes(300_000);
    const mixed = Buffer.concat([random, pageLikeData(200_000, 5), random.subarray(0, 70_000)]);
    for (const algorithm of algorithms) {
      for (const encrypted of [false, true]) {
        const opts = options(algorithm, encrypted);
        const stored = await through(createEncodeStream(opts), splitInto(mixed, 777));
        checkIndependently(stored, algorithm, encrypted, mixed);
        const decoded = await through(
          createDecodeStream(encodingMetadata(opts), () => privatePem),
          splitInto(stored, 4097),
        );
        assert.ok(decoded.equals(mixed));
      }
    }
    const info = { identifiers: 0, compressedChunks: 0, uncompressedChunks: 0 };
    parseSnappyFraming(await encodeBuffer(mixed, options("snappy", false)), info);
    assert.equal(info.identifiers, 1);
    assert.ok(info.uncompressedChunks > 0 && info.compressedChunks > 0);
  });

  it("snappy and zstd decoders hand on pieces of up to 1 MiB, not one 64 KiB block at a time", async () => {
    // Each piece costs a trip through the streams and the tar extractor downstream (restore CPU).
    const plain = Buffer.concat([pageLikeData(3 * MiB, 7), randomBytes(MiB)]);
    for (const algorithm of ["snappy", "zstd"] as const) {
      const opts = options(algorithm, true);
      const stored = await encodeBuffer(plain, opts);
      // Whole, and in the 64 KiB pieces a storage read stream gives: full pieces either way.
      for (const inputPiece of [stored.length, 64 * 1024]) {
        const pieces: Buffer[] = [];
        const decoder = createDecoder(encodingMetadata(opts), () => privatePem);
        for (let at = 0; at < stored.length; at += inputPiece)
          for (const piece of decoder.update(stored.subarray(at, at + inputPiece))) pieces.push(Buffer.from(piece));
        for (const piece of decoder.final()) pieces.push(Buffer.from(piece));
        assert.ok(Buffer.concat(pieces).equals(plain), algorithm);
        const what = `${algorithm}, input in ${inputPiece} bytes`;
        const smallest = Math.min(...pieces.slice(0, -1).map((p) => p.length));
        assert.ok(smallest >= MiB - 64 * 1024, `${what}: a decoded piece of ${smallest} bytes before the last`);
        const largest = Math.max(...pieces.map((p) => p.length));
        assert.ok(largest <= MiB, `${what}: largest decoded piece ${largest} bytes (bounded)`);
      }
    }
  });

  it("encrypts and decrypts in pieces of at most 64 KiB (fresh large outputs page-fault)", async () => {
    const opts = options(null, true);
    const plain = randomBytes(2 * MiB + 123);
    const encoder = createEncoder(opts);
    const stored: Buffer[] = [];
    for (const piece of encoder.update(plain)) stored.push(Buffer.from(piece));
    for (const piece of encoder.final()) stored.push(Buffer.from(piece));
    assert.ok(Math.max(...stored.map((p) => p.length)) <= 64 * 1024);
    const decoder = createDecoder(encodingMetadata(opts), () => privatePem);
    const decoded = [...decoder.update(Buffer.concat(stored)), ...decoder.final()];
    assert.ok(Buffer.concat(decoded).equals(plain));
    assert.ok(Math.max(...decoded.map((p) => p.length)) <= 64 * 1024);
  });

  it("refuses bad options", async () => {
    await assert.rejects(encodeBuffer(Buffer.from("x"), { ...options("lzma", false), level: 12 }), /preset/);
    await assert.rejects(
      encodeBuffer(Buffer.from("x"), { ...options(null, false), encryptionKeyId: "k" }),
      /public key/,
    );
    await assert.rejects(
      pool.encodeFile(bigFile, path.join(scratch, "x"), { ...options("snappy", false), hashAlgorithm: "nope" }),
      /hash/,
    );
    assert.throws(() => pool.createDecodeStream({ "encryption-key-id": "k" }, null), /key 'k' but key not found/);
    await assert.rejects(pool.decodeFile(path.join(scratch, "missing"), path.join(scratch, "out"), {}, null), {
      code: "ENOENT",
    });
    const leftovers = (await readdir(scratch)).filter((name) => name.includes(".tmp-"));
    assert.deepEqual(leftovers, []);
  });
});
