/** Worker pool behaviour: bounded buffering, aborts, many tasks at once, close. */
import assert from "node:assert/strict";
import { createHash, generateKeyPairSync, randomBytes } from "node:crypto";
import { once } from "node:events";
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { Readable, Writable, type Duplex } from "node:stream";
import { pipeline } from "node:stream/promises";
import { after, before, describe, it } from "node:test";
import {
  FileFormatError,
  FileFormatPool,
  createDecodeStream,
  encodeBuffer,
  encodingMetadata,
  type EncodeOptions,
} from "../../src/fileformat/index.js";
import { decodeIndependently, pageLikeData } from "./support.js";

const MiB = 1024 * 1024;
const zstdOpts: EncodeOptions = { algorithm: "zstd", level: 0, encryptionKeyId: null, publicKeyPem: null };

let pool: FileFormatPool;
let scratch: string;
before(async () => {
  pool = new FileFormatPool(2);
  scratch = await mkdtemp(path.join(os.tmpdir(), "ff-pool-"));
});
after(async () => {
  await pool.close();
  await rm(scratch, { recursive: true, force: true });
});

/** 512 MiB of zeros compress to a few KiB: a decode that is not flow-controlled would balloon. */
async function zeroBomb(): Promise<Buffer> {
  const zeros = Buffer.alloc(64 * MiB);
  const parts: Buffer[] = [];
  for (let i = 0; i < 8; i++) parts.push(await encodeBuffer(zeros, zstdOpts));
  return Buffer.concat(parts); // concatenated frames
}

async function assertBoundedWhilePaused(stream: Duplex, input: Buffer, limit: number): Promise<void> {
  stream.end(input);
  await sleep(700); // nobody reads: producers must stop
  assert.ok(stream.readableLength <= limit, `buffered ${stream.readableLength} bytes while paused`);
  let total = 0;
  await pipeline(
    stream,
    new Writable({
      write(chunk: Buffer, _enc, cb) {
        total += chunk.length;
        cb();
      },
    }),
  );
  assert.equal(total, 512 * MiB);
}

describe("flow control", () => {
  it("a paused worker decode stream buffers a bounded amount", async () => {
    const bomb = await zeroBomb();
    assert.ok(bomb.length < MiB);
    await assertBoundedWhilePaused(pool.createDecodeStream(encodingMetadata(zstdOpts), null), bomb, 8 * MiB);
  });

  it("a paused main-thread decode stream buffers a bounded amount", async () => {
    const bomb = await zeroBomb();
    await assertBoundedWhilePaused(
      createDecodeStream(encodingMetadata(zstdOpts), () => undefined),
      bomb,
      2 * MiB,
    );
  });

  it("a worker encode stream applies backpressure to its writer", async () => {
    const stream = pool.createEncodeStream({
      algorithm: "snappy",
      level: 0,
      encryptionKeyId: null,
      publicKeyPem: null,
    });
    const block = pageLikeData(MiB, 3);
    let accepted = 0;
    // Without a reader the writable side must report "full" after a few MiB.
    for (let i = 0; i < 200 && stream.write(block); i++) accepted++;
    assert.ok(accepted < 50, `accepted ${accepted} MiB without anyone reading`);
    stream.destroy();
    await once(stream, "close");
  });
});

describe("transferInput", () => {
  it("moves whole 1 MiB buffers to the worker, copies the rest, and the output is the input's encoding", async () => {
    const plain = pageLikeData(5 * MiB + 12_345, 7);
    const owned = (offset: number, length: number): Buffer => {
      const buf = Buffer.allocUnsafeSlow(length);
      plain.copy(buf, 0, offset, offset + length);
      return buf;
    };
    // whole ones, a partial one in between (a whole one may then meet a started batch), a view, a tail
    const writes = [owned(0, MiB), owned(MiB, 1000), owned(MiB + 1000, MiB), owned(2 * MiB + 1000, MiB)];
    const view = plain.subarray(3 * MiB + 1000, 4 * MiB + 1000);
    writes.push(view, owned(4 * MiB + 1000, plain.length - 4 * MiB - 1000));
    const stream = pool.createEncodeStream(zstdOpts, { transferInput: true });
    const out: Buffer[] = [];
    stream.on("data", (chunk: Buffer) => out.push(chunk));
    const sizes: number[] = [];
    for (const buf of writes) {
      if (!stream.write(buf)) await once(stream, "drain");
    }
    stream.end();
    await once(stream, "end");
    for (const buf of writes) sizes.push(buf.length);
    // the first whole buffer went out alone: moved (detached); partial buffers and views are copied
    assert.equal(sizes[0], 0);
    assert.equal(sizes[1], 1000);
    assert.equal(sizes[4], MiB, "a view into a larger buffer is copied, never detached");
    assert.ok(decodeIndependently(Buffer.concat(out), "zstd", null).equals(plain));
  });
});

describe("lifecycle", () => {
  it("an aborted stream does not disturb later work", async () => {
    const stream = pool.createEncodeStream({ ...zstdOpts, hashAlgorithm: "sha256" });
    const errored = once(stream, "error");
    stream.write(pageLikeData(3 * MiB, 1));
    stream.destroy(new Error("client went away"));
    await assert.rejects(stream.result(), /client went away/);
    await errored;
    const plain = pageLikeData(2 * MiB, 2);
    const file = path.join(scratch, "after-abort");
    await writeFile(file, plain);
    const { data } = await pool.encodeFileToBuffer(file, zstdOpts);
    assert.ok(decodeIndependently(data, "zstd", null).equals(plain));
  });

  it("runs many tasks at once (queued beyond the worker count)", async () => {
    const inputs = await Promise.all(
      Array.from({ length: 24 }, async (_, i) => {
        const plain = pageLikeData(100_000 + i * 1000, i + 10);
        const file = path.join(scratch, `many-${i}`);
        await writeFile(file, plain);
        return { plain, file };
      }),
    );
    const results = await Promise.all(
      inputs.map(({ file }) => pool.encodeFile(file, `${file}.zst`, { ...zstdOpts, hashAlgorithm: "sha1" })),
    );
    results.forEach((result, i) => assert.equal(result.originalSize, inputs[i].plain.length));
    const decoded = await Promise.all(
      inputs.map(({ file }) => pool.decodeFile(`${file}.zst`, `${file}.out`, encodingMetadata(zstdOpts), null)),
    );
    decoded.forEach(({ size }, i) => assert.equal(size, inputs[i].plain.length));
    assert.equal((await readdir(scratch)).filter((n) => n.includes(".tmp-")).length, 0);
  });

  it("a decode stream fed from a Readable reports errors through the pipeline", async () => {
    await assert.rejects(
      pipeline(
        Readable.from([Buffer.from("definitely not zstd")]),
        pool.createDecodeStream(encodingMetadata(zstdOpts), null),
        new Writable({ write: (_c, _e, cb) => cb() }),
      ),
      FileFormatError,
    );
  });

  it("close() rejects new work and tasks still queued", async () => {
    const local = new FileFormatPool(1);
    const plainFile = path.join(scratch, "close-input");
    await writeFile(plainFile, pageLikeData(4 * MiB, 4));
    const pending = Array.from({ length: 6 }, (_, i) =>
      local.encodeFile(plainFile, path.join(scratch, `closed-${i}`), zstdOpts),
    );
    const settling = Promise.allSettled(pending);
    await local.close();
    const settled = await settling;
    assert.ok(settled.some((s) => s.status === "rejected"));
    await assert.rejects(local.encodeFile(plainFile, path.join(scratch, "x"), zstdOpts), /closed/);
    // a task either completed or left nothing: never a temp file
    assert.equal((await readdir(scratch)).filter((n) => n.startsWith(".closed-")).length, 0);
  });
});

describe("encodeFileToBuffer (the archive path: one reused output buffer per worker, hash placement)", () => {
  it("stored bytes and plaintext hash are exact whether the pool hashes beside the codec or in the worker", async () => {
    const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const opts = {
      algorithm: "snappy" as const,
      level: 0,
      encryptionKeyId: "k1",
      publicKeyPem: publicKey.export({ type: "spki", format: "pem" }).toString(),
      hashAlgorithm: "sha1",
    };
    const privatePem = privateKey.export({ type: "pkcs8", format: "pem" }).toString();
    // Big (incompressible: the output outgrows a first 1 MiB scratch), then smaller ones: a
    // reused scratch must never leak bytes of an earlier, longer output.
    const plains = [randomBytes(5 * MiB), pageLikeData(3 * MiB, 7), randomBytes(MiB + 123), pageLikeData(300_000, 8)];
    const files = await Promise.all(
      plains.map(async (plain, i) => {
        const file = path.join(scratch, `to-buffer-${i}`);
        await writeFile(file, plain);
        return file;
      }),
    );
    // cores 64: never busy, large inputs hashed in the hasher thread; cores 1: hashed in the worker.
    for (const cores of [64, 1]) {
      const local = new FileFormatPool(1, { cores });
      try {
        for (const round of [0, 1]) {
          // round 1 runs them all at once (two per worker, the rest queued)
          const results =
            round === 0
              ? await files.reduce<Promise<Array<{ data: Buffer; hash?: string; storedSize: number }>>>(
                  async (acc, file) => [...(await acc), await local.encodeFileToBuffer(file, opts)],
                  Promise.resolve([]),
                )
              : await Promise.all(files.map((file) => local.encodeFileToBuffer(file, opts)));
          results.forEach((result, i) => {
            const what = `cores ${cores}, round ${round}, file ${i}`;
            assert.equal(result.data.length, result.storedSize, what);
            assert.equal(result.data.byteOffset, 0, what);
            assert.equal(result.data.buffer.byteLength, result.data.length, what);
            assert.ok(decodeIndependently(result.data, "snappy", privatePem).equals(plains[i]), what);
            assert.equal(result.hash, createHash("sha1").update(plains[i]).digest("hex"), what);
          });
        }
      } finally {
        await local.close();
      }
    }
  });
});
