/**
 * Striped snappy decoding (src/fileformat/striped_decode.ts): one stored object decoded on two
 * threads, the helper in a real worker thread. The plaintext is exactly the single-threaded
 * decoder's, a bad chunk is refused whichever thread decodes it, tampering is still reported as
 * an integrity failure, and a helper that goes away mid-stream costs nothing but speed.
 */
import assert from "node:assert/strict";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { once } from "node:events";
import { after, before, describe, it } from "node:test";
import { Readable, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { MessageChannel, Worker, type MessagePort } from "node:worker_threads";
import { pathToFileURL } from "node:url";
import path from "node:path";
import {
  FileFormatError,
  IntegrityError,
  createDecodeStream,
  decodeBuffer,
  encodeBuffer,
  encodingMetadata,
  type EncodeOptions,
} from "../../src/fileformat/index.js";
import { StripedSnappyDecodeStream } from "../../src/fileformat/striped_decode.js";
import { STRIPED_DECODE_MIN_SIZE } from "../../src/fileformat/streams.js";
import { pageLikeData } from "./support.js";

const MiB = 1024 * 1024;
const plainOpts: EncodeOptions = { algorithm: "snappy", level: 0, encryptionKeyId: null, publicKeyPem: null };
const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
const encryptedOpts: EncodeOptions = {
  ...plainOpts,
  encryptionKeyId: "k1",
  publicKeyPem: publicKey.export({ type: "spki", format: "pem" }).toString(),
};
const privatePem = privateKey.export({ type: "pkcs8", format: "pem" }).toString();
const keys = (id: string): string | undefined => (id === "k1" ? privatePem : undefined);

/** The helper: a real worker thread serving runs on the ports it is sent. */
const helperSource = `
  const { parentPort } = require("node:worker_threads");
  const stats = { runs: 0 };
  import(${JSON.stringify(pathToFileURL(path.resolve("dist/src/fileformat/striped_decode.js")).href)}).then((m) => {
    parentPort.on("message", (msg) => {
      if (msg.type === "serve") m.serveSnappyDecodeStripes(msg.port, stats);
      else if (msg.type === "stats") parentPort.postMessage(stats.runs);
      else if (msg.type === "exit") process.exit(0);
    });
    parentPort.postMessage("ready");
  });
`;

let helper: Worker;
before(async () => {
  helper = new Worker(helperSource, { eval: true });
  await new Promise((resolve) => helper.once("message", resolve));
});
after(async () => {
  await helper.terminate();
});

function helperPort(target: Worker = helper): MessagePort {
  const { port1, port2 } = new MessageChannel();
  target.postMessage({ type: "serve", port: port2 }, [port2]);
  return port1;
}

/** Plaintext (many 64 KiB chunks, compressible and not) and its stored form. */
const plain = Buffer.concat([pageLikeData(14 * MiB, 3), randomBytes(3 * MiB), pageLikeData(3 * MiB + 12345, 4)]);
let storedPlain: Buffer;
let storedEncrypted: Buffer;
before(async () => {
  storedPlain = await encodeBuffer(plain, plainOpts);
  storedEncrypted = await encodeBuffer(plain, encryptedOpts);
});

/** Decodes `stored` through a stream, fed in `piece`-sized writes; returns the plaintext. */
async function decodeStream(stream: NodeJS.ReadWriteStream, stored: Buffer, piece = 64 * 1024 + 7): Promise<Buffer> {
  const out: Buffer[] = [];
  async function* pieces(): AsyncGenerator<Buffer> {
    for (let offset = 0; offset < stored.length; offset += piece) yield stored.subarray(offset, offset + piece);
  }
  await pipeline(
    Readable.from(pieces()),
    stream,
    new Writable({
      // a slow reader now and then: the decoder must wait, not buffer without bound
      write(chunk: Buffer, _encoding, callback) {
        out.push(chunk);
        if (out.length % 7 === 0) setTimeout(callback, 1);
        else callback();
      },
    }),
  );
  return Buffer.concat(out);
}

/** Offsets of the framing chunks of a snappy stream. */
function chunkOffsets(stored: Buffer): number[] {
  const offsets: number[] = [];
  for (
    let pos = 0;
    pos < stored.length;
    pos += 4 + (stored[pos + 1]! | (stored[pos + 2]! << 8) | (stored[pos + 3]! << 16))
  )
    offsets.push(pos);
  return offsets;
}

async function helperRunsSoFar(): Promise<number> {
  helper.postMessage({ type: "stats" });
  return new Promise((resolve) => helper.once("message", resolve));
}

describe("striped snappy decoding", () => {
  it("decodes encrypted and plain objects to exactly the plaintext, the helper taking part", async () => {
    const before = await helperRunsSoFar();
    for (const [stored, opts] of [
      [storedEncrypted, encryptedOpts],
      [storedPlain, plainOpts],
    ] as const) {
      const metadata = encodingMetadata(opts);
      const stream = createDecodeStream(metadata, keys, { stripes: helperPort() });
      assert.ok(stream instanceof StripedSnappyDecodeStream, "a large snappy object is striped");
      const decoded = await decodeStream(stream, stored);
      assert.equal(decoded.length, plain.length);
      assert.ok(decoded.equals(plain), "plaintext identical");
      assert.ok(stream.helperRuns > 0, "the helper decoded some runs");
      // and the single-threaded decoder agrees
      assert.ok((await decodeBuffer(stored, metadata, keys)).equals(plain));
    }
    assert.ok((await helperRunsSoFar()) > before, "the helper thread counted them");
  });

  it("does not stripe small objects or other algorithms, and closes the port it does not use", async () => {
    const small = createDecodeStream({ ...encodingMetadata(plainOpts), "original-file-size": "1000" }, keys, {
      stripes: helperPort(),
    });
    assert.ok(!(small instanceof StripedSnappyDecodeStream));
    const port = helperPort();
    const closed = once(port, "close");
    const zstd = createDecodeStream(encodingMetadata({ ...plainOpts, algorithm: "zstd" }), keys, { stripes: port });
    assert.ok(!(zstd instanceof StripedSnappyDecodeStream));
    await closed; // the unused port is closed (else this test times out)
    assert.ok(STRIPED_DECODE_MIN_SIZE > 1000);
  });

  it("refuses a chunk with a bad CRC wherever it is decoded", async () => {
    const chunks = chunkOffsets(storedPlain);
    // one bad chunk early (likely the helper's), one late (likely the leader's): each on its own
    for (const which of [3, chunks.length - 40]) {
      const bad = Buffer.from(storedPlain);
      const at = chunks[which]! + 4; // the chunk's CRC field
      bad[at] = bad[at]! ^ 0xff;
      const stream = createDecodeStream(encodingMetadata(plainOpts), keys, { stripes: helperPort() });
      await assert.rejects(decodeStream(stream, bad), (err: Error) => {
        assert.ok(err instanceof FileFormatError, String(err));
        assert.match(err.message, /CRC-32C mismatch/);
        return true;
      });
    }
  });

  it("reports tampering with an encrypted object as an integrity failure, not as bad snappy data", async () => {
    const bad = Buffer.from(storedEncrypted);
    bad[bad.length >>> 1] = bad[bad.length >>> 1]! ^ 0x01;
    const stream = createDecodeStream(encodingMetadata(encryptedOpts), keys, { stripes: helperPort() });
    await assert.rejects(decodeStream(stream, bad), (err: Error) => {
      assert.ok(err instanceof IntegrityError, `${err.name}: ${err.message}`);
      return true;
    });
  });

  it("refuses a stream cut in the middle of a chunk", async () => {
    const stream = createDecodeStream(encodingMetadata(plainOpts), keys, { stripes: helperPort() });
    await assert.rejects(decodeStream(stream, storedPlain.subarray(0, storedPlain.length - 100)), /truncated/);
  });

  it("finishes the object itself when the helper thread goes away mid-stream", async () => {
    const doomed = new Worker(helperSource, { eval: true });
    await new Promise((resolve) => doomed.once("message", resolve));
    const stream = createDecodeStream(encodingMetadata(encryptedOpts), keys, {
      stripes: helperPort(doomed),
    }) as StripedSnappyDecodeStream;
    const out: Buffer[] = [];
    let killed = false;
    await pipeline(
      Readable.from(
        (async function* () {
          for (let offset = 0; offset < storedEncrypted.length; offset += 256 * 1024) {
            if (!killed && offset > storedEncrypted.length / 3) {
              killed = true;
              await doomed.terminate(); // as ObjectWorkers.replace() does to an aborted object's worker
            }
            yield storedEncrypted.subarray(offset, offset + 256 * 1024);
          }
        })(),
      ),
      stream,
      new Writable({
        write(chunk: Buffer, _encoding, callback) {
          out.push(chunk);
          callback();
        },
      }),
    );
    assert.ok(killed);
    assert.ok(stream.helperRuns > 0, "the helper had taken part before it went away");
    assert.ok(Buffer.concat(out).equals(plain), "plaintext identical");
  });
});
