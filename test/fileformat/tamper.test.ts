/** Tampered or truncated objects are refused, and no "successful" output is ever left behind. */
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Readable, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { after, before, describe, it } from "node:test";
import {
  FileFormatError,
  FileFormatPool,
  IntegrityError,
  createDecodeStream,
  decodeBuffer,
  encodeBuffer,
  encodingMetadata,
  type CompressionAlgorithm,
  type EncodeOptions,
} from "../../src/fileformat/index.js";
import { pageLikeData } from "./support.js";

const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 3072 });
const publicPem = publicKey.export({ type: "spki", format: "pem" }).toString();
const privatePem = privateKey.export({ type: "pkcs8", format: "pem" }).toString();
const other = generateKeyPairSync("rsa", { modulusLength: 3072 })
  .privateKey.export({ type: "pkcs8", format: "pem" })
  .toString();

let pool: FileFormatPool;
let scratch: string;
before(async () => {
  pool = new FileFormatPool(2);
  scratch = await mkdtemp(path.join(os.tmpdir(), "ff-tamper-"));
});
after(async () => {
  await pool.close();
  await rm(scratch, { recursive: true, force: true });
});

async function decodeViaStream(stored: Buffer, opts: EncodeOptions, key: string): Promise<void> {
  await pipeline(
    Readable.from([stored.subarray(0, 1000), stored.subarray(1000)]),
    createDecodeStream(encodingMetadata(opts), () => key),
    new Writable({
      write(_chunk, _enc, cb) {
        cb();
      },
    }),
  );
}

/** Every way of decoding must refuse `stored`, and decodeFile must leave nothing behind. */
async function assertRefused(
  stored: Buffer,
  opts: EncodeOptions,
  expected: typeof FileFormatError,
  key = privatePem,
): Promise<void> {
  const metadata = encodingMetadata(opts);
  const check = (err: unknown): boolean => {
    assert.ok(err instanceof expected, `expected ${expected.name}, got ${String(err)}`);
    if (expected === IntegrityError) assert.match((err as Error).message, /^Integrity check failed/);
    return true;
  };
  await assert.rejects(
    decodeBuffer(stored, metadata, () => key),
    check,
  );
  await assert.rejects(decodeViaStream(stored, opts, key), check);
  const src = path.join(scratch, "bad.stored");
  const dst = path.join(scratch, "restored");
  await writeFile(src, stored);
  await assert.rejects(pool.decodeFile(src, dst, metadata, opts.encryptionKeyId ? key : null), check);
  assert.equal(existsSync(dst), false, "decodeFile left an output file");
  assert.deepEqual(
    (await readdir(scratch)).filter((name) => name !== "bad.stored"),
    [],
    "temp file left behind",
  );
  await assert.rejects(
    pipeline(
      Readable.from([stored]),
      pool.createDecodeStream(metadata, opts.encryptionKeyId ? key : null),
      new Writable({ write: (_c, _e, cb) => cb() }),
    ),
    check,
  );
}

const algorithms: Array<CompressionAlgorithm | null> = ["snappy", "zstd", "lzma", null];
const plain = pageLikeData(300_000, 99);

for (const algorithm of algorithms) {
  describe(`encrypted, ${algorithm ?? "uncompressed"}`, () => {
    const opts: EncodeOptions = { algorithm, level: 0, encryptionKeyId: "k", publicKeyPem: publicPem };
    let stored: Buffer;
    before(async () => {
      stored = await encodeBuffer(plain, opts);
      assert.ok((await decodeBuffer(stored, encodingMetadata(opts), () => privatePem)).equals(plain));
    });

    const bodyStart = 8 + 384;
    const positions: Array<[string, () => number]> = [
      ["magic", () => 0],
      ["key length", () => 7],
      ["wrapped key", () => 8 + 100],
      ["first body byte", () => bodyStart],
      ["middle of body", () => bodyStart + Math.floor((stored.length - bodyStart - 32) / 2)],
      ["last body byte", () => stored.length - 33],
      ["trailer", () => stored.length - 1],
    ];
    for (const [label, where] of positions) {
      it(`flipped byte in ${label}`, async () => {
        const bad = Buffer.from(stored);
        bad[where()] ^= 0x40;
        await assertRefused(bad, opts, IntegrityError);
      });
    }
    const cuts: Array<[string, () => number]> = [
      ["inside the magic", () => 3],
      ["inside the wrapped key", () => 200],
      ["inside the body", () => bodyStart + 50],
      ["one trailer byte short", () => stored.length - 1],
      ["without the trailer", () => stored.length - 32],
    ];
    for (const [label, length] of cuts) {
      it(`truncated ${label}`, async () => {
        await assertRefused(stored.subarray(0, length()), opts, IntegrityError);
      });
    }
    it("appended garbage", async () => {
      await assertRefused(Buffer.concat([stored, Buffer.from("x")]), opts, IntegrityError);
    });
    it("the wrong private key", async () => {
      await assertRefused(stored, opts, IntegrityError, other);
    });
  });
}

describe("unencrypted damage is detected where the codec can", () => {
  for (const algorithm of ["snappy", "zstd", "lzma"] as const) {
    const opts: EncodeOptions = { algorithm, level: 0, encryptionKeyId: null, publicKeyPem: null };
    it(`${algorithm}: truncated in the middle`, async () => {
      const stored = await encodeBuffer(plain, opts);
      await assertRefused(stored.subarray(0, Math.floor(stored.length / 2) + 3), opts, FileFormatError);
    });
    it(`${algorithm}: flipped byte`, async () => {
      const stored = Buffer.from(await encodeBuffer(plain, opts));
      // snappy: inside the first chunk's CRC; zstd/xz: inside the frame/stream header magic
      stored[algorithm === "snappy" ? 12 : 1] ^= 0x01;
      await assertRefused(stored, opts, FileFormatError);
    });
  }
});
