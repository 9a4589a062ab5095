/**
 * Striped snappy streams (one stream compressed on two workers, src/fileformat/striped.ts): the
 * stored bytes are exactly the single-threaded encoding, so every reader (upstream's included)
 * reads them; encrypted ones decode with the independent reference decoder.
 */
import assert from "node:assert/strict";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { once } from "node:events";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import {
  FileFormatPool,
  encodeBuffer,
  encodingMetadata,
  decodeBuffer,
  type EncodeOptions,
  type PoolEncodeStream,
} from "../../src/fileformat/index.js";
import { decodeIndependently, pageLikeData, parseSnappyFraming } from "./support.js";

const MiB = 1024 * 1024;
const zstdBinding = createRequire(import.meta.url)("zstd-napi/binding") as typeof import("zstd-napi/binding.js");

/** Bytes of `data` the first zstd frame takes (python-zstandard's decompressobj stops there). */
function firstFrameLength(data: Buffer): number {
  const dctx = new zstdBinding.DCtx();
  const dst = Buffer.allocUnsafe(4 * MiB);
  let offset = 0;
  for (;;) {
    const [ret, , consumed] = dctx.decompressStream(dst, data.subarray(offset, offset + MiB));
    offset += consumed;
    if (ret === 0) return offset;
    if (offset >= data.length && consumed === 0) return -1;
  }
}
const snappyOpts: EncodeOptions = { algorithm: "snappy", level: 0, encryptionKeyId: null, publicKeyPem: null };
const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
const encryptedOpts: EncodeOptions = {
  ...snappyOpts,
  encryptionKeyId: "k1",
  publicKeyPem: publicKey.export({ type: "spki", format: "pem" }).toString(),
};
const privatePem = privateKey.export({ type: "pkcs8", format: "pem" }).toString();

let pool: FileFormatPool;
before(() => {
  pool = new FileFormatPool(2);
});
after(async () => {
  await pool.close();
});

/** Writes `writes` with backpressure; returns the stored bytes and the stream's result. */
async function encodeStriped(
  writes: Buffer[],
  opts: EncodeOptions,
  transferInput = false,
): Promise<{ stored: Buffer; helperRanges: number; originalSize: number; storedSize: number }> {
  const stream: PoolEncodeStream = pool.createEncodeStream(opts, { striped: true, transferInput });
  const out: Buffer[] = [];
  stream.on("data", (chunk: Buffer) => out.push(chunk));
  for (const buf of writes) {
    if (!stream.write(buf)) await once(stream, "drain");
  }
  stream.end();
  await once(stream, "end");
  const result = await stream.result();
  return {
    stored: Buffer.concat(out),
    helperRanges: result.helperRanges ?? 0,
    originalSize: result.originalSize,
    storedSize: result.storedSize,
  };
}

/** `plain` cut into pieces of the given sizes, cycled (odd sizes move the 64 KiB block boundaries). */
function cut(plain: Buffer, sizes: number[]): Buffer[] {
  const pieces: Buffer[] = [];
  for (let offset = 0, i = 0; offset < plain.length; i++) {
    const size = Math.min(sizes[i % sizes.length], plain.length - offset);
    pieces.push(plain.subarray(offset, offset + size));
    offset += size;
  }
  return pieces;
}

describe("striped snappy encode stream", () => {
  it("writes exactly the single-threaded bytes, whatever the write sizes", async () => {
    // compressible pages with incompressible stretches (uncompressed chunks) in between
    const plain = Buffer.concat([pageLikeData(9 * MiB, 5), randomBytes(700_000), pageLikeData(6 * MiB + 4321, 6)]);
    const expected = await encodeBuffer(plain, snappyOpts);
    let stored: Buffer = Buffer.alloc(0);
    for (const sizes of [[MiB], [MiB, 777, 300_000, 65_536 * 3 + 5], [5 * MiB + 3], [65_536]]) {
      const result = await encodeStriped(cut(plain, sizes), snappyOpts);
      const { helperRanges, originalSize, storedSize } = result;
      stored = result.stored;
      assert.ok(stored.equals(expected), `writes of ${sizes.join("/")} bytes: the stored bytes differ`);
      assert.equal(originalSize, plain.length);
      assert.equal(storedSize, expected.length);
      assert.ok(helperRanges > 0, `writes of ${sizes.join("/")} bytes: the second worker encoded nothing`);
    }
    // the framing itself (strict reference parser): one identifier, both kinds of data chunk
    const info = { identifiers: 0, compressedChunks: 0, uncompressedChunks: 0 };
    assert.ok(parseSnappyFraming(stored, info).equals(plain));
    assert.equal(info.identifiers, 1);
    assert.ok(info.compressedChunks > 0 && info.uncompressedChunks > 0);
  });

  it("small and empty inputs give the single-threaded bytes too", async () => {
    for (const plain of [
      Buffer.alloc(0),
      Buffer.from("hello, world"),
      pageLikeData(65_536, 2),
      pageLikeData(200_000, 3),
    ]) {
      const { stored } = await encodeStriped(plain.length > 0 ? cut(plain, [1000]) : [], snappyOpts);
      assert.ok(stored.equals(await encodeBuffer(plain, snappyOpts)), `${plain.length} bytes`);
    }
  });

  it("encrypted, with whole 1 MiB buffers moved to the worker, decodes byte-exact", async () => {
    const plain = pageLikeData(12 * MiB + 999, 9);
    const writes = cut(plain, [MiB, MiB, 4096]).map((piece) => {
      const owned = Buffer.allocUnsafeSlow(piece.length); // transferable, as the tar writer's buffers
      piece.copy(owned);
      return owned;
    });
    const { stored, helperRanges } = await encodeStriped(writes, encryptedOpts, true);
    assert.ok(helperRanges > 0);
    assert.ok(decodeIndependently(stored, "snappy", privatePem).equals(plain));
    const decoded = await decodeBuffer(stored, encodingMetadata(encryptedOpts), () => privatePem);
    assert.ok(decoded.equals(plain));
  });

  it("with outputPath the worker writes the stored bytes to the file and sends none", async () => {
    const plain = pageLikeData(6 * MiB + 77, 11);
    const dir = await mkdtemp(path.join(os.tmpdir(), "ff-striped-"));
    try {
      const file = path.join(dir, "chunk");
      const stream = pool.createEncodeStream(snappyOpts, { striped: true, outputPath: file });
      let sent = 0;
      stream.on("data", (chunk: Buffer) => (sent += chunk.length));
      for (const piece of cut(plain, [MiB, 999])) {
        if (!stream.write(piece)) await once(stream, "drain");
      }
      stream.end();
      await once(stream, "end");
      const result = await stream.result();
      assert.equal(sent, 0);
      const stored = await readFile(file);
      assert.equal(result.storedSize, stored.length);
      assert.ok(stored.equals(await encodeBuffer(plain, snappyOpts)));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("a destroyed striped stream fails its result and leaves the pool working", async () => {
    const stream = pool.createEncodeStream(snappyOpts, { striped: true });
    const errored = once(stream, "error");
    stream.write(pageLikeData(4 * MiB, 1));
    stream.destroy(new Error("client went away"));
    await assert.rejects(stream.result(), /client went away/);
    await errored;
    const plain = pageLikeData(3 * MiB, 4);
    const { stored, helperRanges } = await encodeStriped([plain], snappyOpts);
    assert.ok(helperRanges > 0);
    assert.ok(stored.equals(await encodeBuffer(plain, snappyOpts)));
  });

  it("zstd streams are not striped: one frame, the single-threaded bytes", async () => {
    const plain = pageLikeData(6 * MiB, 8);
    const zstdOpts: EncodeOptions = { ...snappyOpts, algorithm: "zstd" };
    const striped = await encodeStriped(cut(plain, [MiB]), zstdOpts);
    assert.equal(striped.helperRanges, 0);
    assert.equal(firstFrameLength(striped.stored), striped.stored.length, "more than one zstd frame");
    assert.ok(striped.stored.equals(await encodeBuffer(plain, zstdOpts)));
  });

  it("plaintext-hashed snappy streams are not striped (one worker, as before)", async () => {
    const plain = pageLikeData(3 * MiB, 8);
    // a plaintext hash needs every byte on one thread
    const hashed = await encodeStriped([plain], { ...snappyOpts, hashAlgorithm: "sha256" } as EncodeOptions);
    assert.equal(hashed.helperRanges, 0);
    assert.ok(hashed.stored.equals(await encodeBuffer(plain, snappyOpts)));
  });
});
