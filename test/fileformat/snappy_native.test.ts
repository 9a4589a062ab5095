import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { describe, it } from "node:test";
import snappy from "snappy";

import {
  SnappyFrameDecoder,
  SnappyFrameEncoder,
  encodeBlocks,
  maskedCrc32cPortable,
} from "../../src/fileformat/snappy.js";
import {
  NATIVE_BAD_ARGUMENTS,
  NATIVE_BAD_DATA,
  NATIVE_TOO_LARGE,
  snappyNative,
} from "../../src/fileformat/snappy_native.js";
import { FileFormatError, type Codec } from "../../src/fileformat/index.js";
import { crc32cRef, maskRef } from "./support.js";

/** Where a C compiler and libsnappy's header are (CI installs both), the addon must have been built. */
function canBuild(): boolean {
  try {
    execFileSync("sh", ["-c", "printf '#include <snappy-c.h>\\n' | ${CC:-cc} -E -x c - >/dev/null 2>&1"]);
    return existsSync(`${process.execPath}/../../include/node/node_api.h`);
  } catch {
    return false;
  }
}

/** Runs `input` through `codec` in pieces of `step` bytes; the output, concatenated. */
function run(codec: Codec, input: Buffer, step: number): Buffer {
  const parts: Buffer[] = [];
  for (let o = 0; o < input.length; o += step) {
    for (const p of codec.update(input.subarray(o, o + step))) parts.push(Buffer.from(p));
  }
  for (const p of codec.final()) parts.push(Buffer.from(p));
  return Buffer.concat(parts);
}

const encode = (data: Buffer, step: number, encoder = new SnappyFrameEncoder()): Buffer => run(encoder, data, step);
const decode = (stream: Buffer, step: number, decoder: SnappyFrameDecoder): Buffer => run(decoder, stream, step);

/** A frame holding one data chunk: type, 3-byte length, masked CRC of `plain`, then `body`. */
function frame(type: number, plain: Buffer, body: Buffer): Buffer {
  const header = Buffer.alloc(8);
  header[0] = type;
  header.writeUIntLE(body.length + 4, 1, 3);
  header.writeUInt32LE(maskRef(crc32cRef(plain)), 4);
  return Buffer.concat([Buffer.from("ff060000734e61507059", "hex"), header, body]);
}

describe(
  "snappy framing: native decoder",
  { skip: snappyNative === null && !canBuild() && "addon not built here" },
  () => {
    it("is built wherever it can be", () => {
      assert.ok(
        snappyNative,
        "a C compiler, libsnappy-dev and Node.js headers are here, but dist/native/snappy_native.node did not load",
      );
    });

    it("decodes exactly what the npm packages decode: compressed and uncompressed chunks, any input split", () => {
      const data = Buffer.concat([
        Buffer.alloc(300_000, 7),
        randomBytes(500_000), // stored as uncompressed chunks
        Buffer.from("pghoard ".repeat(400_000)),
        randomBytes(70_001),
      ]);
      const stream = encode(data, 100_000);
      for (const step of [1, 4093, 65_540, 77_777, stream.length]) {
        const native = decode(stream, step, new SnappyFrameDecoder(snappyNative));
        const portable = decode(stream, step, new SnappyFrameDecoder(null));
        assert.ok(native.equals(data), `native decode, input in pieces of ${step}`);
        assert.ok(portable.equals(data), `npm decode, input in pieces of ${step}`);
      }
    });

    it("encodes the same bytes as the npm packages, whatever the input split", () => {
      const data = Buffer.concat([
        Buffer.alloc(200_000, 3),
        randomBytes(300_000),
        Buffer.from("0123456789abcdef".repeat(150_000)),
        randomBytes(12_345),
      ]);
      for (const step of [1000, 65_536, 65_537, 1_048_576, 3_000_000, data.length]) {
        const native = encode(data, step, new SnappyFrameEncoder(snappyNative));
        const portable = encode(data, step, new SnappyFrameEncoder(null));
        assert.ok(native.equals(portable), `input in pieces of ${step}`);
        assert.ok(decode(native, native.length, new SnappyFrameDecoder(null)).equals(data));
      }
      assert.equal(encode(Buffer.alloc(0), 1, new SnappyFrameEncoder(snappyNative)).length, 0, "empty input: no bytes");
      const range = data.subarray(65_536 * 3, 65_536 * 40 + 7);
      assert.ok(encodeBlocks(range, snappyNative).equals(encodeBlocks(range, null)));
    });

    it("the same checksum as the npm package and the spec's reference", () => {
      for (const sample of [Buffer.alloc(0), Buffer.from("hello, world"), randomBytes(65_536), randomBytes(13)]) {
        const expected = maskRef(crc32cRef(sample));
        assert.equal(snappyNative!.maskedCrc32c(sample), expected);
        assert.equal(maskedCrc32cPortable(sample), expected);
      }
    });

    it("refuses what the npm path refuses, with the same errors", () => {
      const plain = Buffer.from("hello, world ".repeat(100));
      const good = snappy.compressSync(plain);
      const cases: Array<[string, Buffer, RegExp]> = [
        [
          "a flipped bit in the data",
          frame(0x00, plain, Buffer.from(good).fill(0x41, 10, 11)),
          /CRC-32C mismatch|Invalid snappy/,
        ],
        ["a wrong checksum", frame(0x00, Buffer.from("other"), good), /CRC-32C mismatch/],
        ["truncated snappy data", frame(0x00, plain, good.subarray(0, good.length - 3)), /Invalid snappy data/],
        [
          "a block over 64 KiB",
          frame(0x00, Buffer.alloc(70_000), snappy.compressSync(Buffer.alloc(70_000))),
          /more than 65536/,
        ],
        [
          "an uncompressed block over 64 KiB",
          frame(0x01, Buffer.alloc(65_537), Buffer.alloc(65_537)),
          /more than 65536/,
        ],
      ];
      for (const [what, stream, message] of cases) {
        for (const native of [snappyNative, null]) {
          assert.throws(
            () => decode(stream, stream.length, new SnappyFrameDecoder(native)),
            (err) => err instanceof FileFormatError && message.test(err.message),
            `${what} (${native ? "native" : "npm"})`,
          );
        }
      }
    });

    it("never reads or writes outside the arrays it is given", () => {
      const dst = Buffer.alloc(65_536);
      const src = Buffer.from(snappy.compressSync(Buffer.alloc(100, 1)));
      const crc = maskRef(crc32cRef(Buffer.alloc(100, 1)));
      assert.equal(snappyNative!.decodeChunk(src, 0, src.length + 1, dst, 0, crc, true), NATIVE_BAD_ARGUMENTS);
      assert.equal(snappyNative!.decodeChunk(src, 5, 4, dst, 0, crc, true), NATIVE_BAD_ARGUMENTS);
      assert.equal(snappyNative!.decodeChunk(src, 0, src.length, dst, dst.length + 1, crc, true), NATIVE_BAD_ARGUMENTS);
      // Not enough room left in dst: refused, not truncated.
      assert.equal(snappyNative!.decodeChunk(src, 0, src.length, dst, dst.length - 99, crc, true), NATIVE_TOO_LARGE);
      assert.equal(snappyNative!.decodeChunk(src, 0, src.length, dst, dst.length - 100, crc, true), 100);
      assert.equal(snappyNative!.decodeChunk(Buffer.from([0x80]), 0, 1, dst, 0, crc, true), NATIVE_BAD_DATA);
      const input = randomBytes(70_000);
      const bound = snappyNative!.encodeBound(input.length);
      assert.equal(
        snappyNative!.encodeChunks(input, 0, input.length + 1, Buffer.alloc(bound), 0),
        NATIVE_BAD_ARGUMENTS,
      );
      assert.equal(snappyNative!.encodeChunks(input, 0, input.length, Buffer.alloc(bound - 1), 0), NATIVE_TOO_LARGE);
      assert.equal(snappyNative!.encodeChunks(input, 0, input.length, Buffer.alloc(bound), 1), NATIVE_TOO_LARGE);
      assert.equal(snappyNative!.encodeChunks(input, 0, input.length, Buffer.alloc(bound), 0), input.length + 16);
    });
  },
);
