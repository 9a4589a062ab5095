import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { describe, it } from "node:test";
import {
  FileFormatError,
  KeyNotFoundError,
  decodeBuffer,
  encodeBuffer,
  encodingMetadata,
  maskedCrc32c,
  nodeHashName,
} from "../../src/fileformat/index.js";
import { crc32cRef, maskRef, parseSnappyFraming } from "./support.js";

const noKeys = (): undefined => undefined;
const snappyMeta = { "compression-algorithm": "snappy" };

describe("spec test vectors", () => {
  it("CRC-32C check value and masking", () => {
    assert.equal(crc32cRef(Buffer.from("123456789")), 0xe3069283);
    assert.equal(maskRef(crc32cRef(Buffer.from("hello, world"))), 0xeac1be0b);
    assert.equal(maskedCrc32c(Buffer.from("hello, world")), 0xeac1be0b);
  });

  it("BLAKE2s of empty input (upstream EMPTY_FILE_HASH)", () => {
    assert.equal(
      createHash(nodeHashName("blake2s")).digest("hex"),
      "69217a3079908094e11121d042354a7c1f55b6482ca1a51e1b250dfd1ed0eef9",
    );
  });

  it("decodes `hello, world` as an uncompressed and as a compressed snappy chunk", async () => {
    const uncompressed = Buffer.from(
      "ff060000734e61507059" + "01100000" + "0bbec1ea" + "68656c6c6f2c20776f726c64",
      "hex",
    );
    const compressed = Buffer.from(
      "ff060000734e61507059" + "00120000" + "0bbec1ea" + "0c2c" + "68656c6c6f2c20776f726c64",
      "hex",
    );
    for (const stream of [uncompressed, compressed]) {
      assert.equal((await decodeBuffer(stream, snappyMeta, noKeys)).toString(), "hello, world");
    }
    const ours = await encodeBuffer(Buffer.from("hello, world"), {
      algorithm: "snappy",
      level: 0,
      encryptionKeyId: null,
      publicKeyPem: null,
    });
    assert.equal(ours.subarray(0, 10).toString("hex"), "ff060000734e61507059");
    assert.equal(parseSnappyFraming(ours).toString(), "hello, world");
  });

  it("snappy reader: repeated and missing identifiers, padding, skippable chunks; CRCs verified", async () => {
    const chunk = Buffer.from("01100000" + "0bbec1ea" + "68656c6c6f2c20776f726c64", "hex");
    const id = Buffer.from("ff060000734e61507059", "hex");
    const padding = Buffer.from("fe030000000000", "hex");
    const skippable = Buffer.from("80020000abcd", "hex");
    const twice = Buffer.concat([id, chunk, padding, id, skippable, chunk]);
    assert.equal((await decodeBuffer(twice, snappyMeta, noKeys)).toString(), "hello, worldhello, world");
    assert.equal((await decodeBuffer(chunk, snappyMeta, noKeys)).toString(), "hello, world");
    assert.equal((await decodeBuffer(Buffer.alloc(0), snappyMeta, noKeys)).length, 0);
    assert.equal((await decodeBuffer(id, snappyMeta, noKeys)).length, 0);
    const badCrc = Buffer.from(chunk);
    badCrc[5] ^= 1;
    await assert.rejects(decodeBuffer(Buffer.concat([id, badCrc]), snappyMeta, noKeys), /CRC/);
    const reserved = Buffer.from("02010000aa", "hex");
    await assert.rejects(decodeBuffer(Buffer.concat([id, reserved]), snappyMeta, noKeys), FileFormatError);
    await assert.rejects(decodeBuffer(Buffer.concat([id, chunk.subarray(0, 10)]), snappyMeta, noKeys), /truncated/);
  });

  it("maps python hashlib names", () => {
    assert.equal(nodeHashName("sha1"), "sha1");
    assert.equal(nodeHashName("sha256"), "sha256");
    assert.equal(nodeHashName("blake2s"), "blake2s256");
    assert.equal(nodeHashName("blake2b"), "blake2b512");
    assert.equal(nodeHashName("sha3_256"), "sha3-256");
    assert.equal(nodeHashName("md5"), "md5");
    assert.throws(() => nodeHashName("crc32"), FileFormatError);
  });

  it("metadata decides: keys, unknown algorithm, missing key", async () => {
    assert.deepEqual(encodingMetadata({ algorithm: "zstd", level: 0, encryptionKeyId: null, publicKeyPem: null }), {
      "compression-algorithm": "zstd",
    });
    assert.deepEqual(encodingMetadata({ algorithm: null, level: 0, encryptionKeyId: "k", publicKeyPem: "x" }), {
      "encryption-key-id": "k",
    });
    assert.equal((await decodeBuffer(Buffer.from("plain"), {}, noKeys)).toString(), "plain");
    assert.equal(
      (await decodeBuffer(Buffer.from("plain"), { "compression-algorithm": "" }, noKeys)).toString(),
      "plain",
    );
    await assert.rejects(
      decodeBuffer(Buffer.from("x"), { "compression-algorithm": "gzip" }, noKeys),
      /invalid compression algorithm/,
    );
    await assert.rejects(
      decodeBuffer(Buffer.from("x"), { "encryption-key-id": "nope" }, noKeys),
      (err: unknown) =>
        err instanceof KeyNotFoundError && err.message === "File is encrypted with key 'nope' but key not found",
    );
  });
});
