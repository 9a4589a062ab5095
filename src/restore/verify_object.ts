/**
 * Verifying one stored object without writing anything: storage read stream → byte counter →
 * decode stream (HMAC, framing CRCs, decompression) → a checking sink: a tar walker (every member
 * header and length), a hasher (delta objects: the hexdigest is the key), the WAL segment checker
 * (page headers, record CRCs, `hash` metadata) or the timeline history parser. Sizes are compared
 * with the metadata and with what the control object recorded. Runs inside a verify worker thread.
 */
import { createHash } from "node:crypto";
import { Transform, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import tarStream from "tar-stream";

import { createDecodeStream, nodeHashName, type PrivateKeyLookup } from "../fileformat/index.js";
import type { Metadata, StorageBackend } from "../storage/types.js";
import { parseTimelineHistory, WalSegmentChecker, type SegmentCheckResult } from "../wal/index.js";

export type VerifyJob =
  /** A tar: single-object backup, data chunk or delta bundle. Sizes from the control object when known. */
  (
    | { kind: "tar"; key: string; storedSize?: number; plainSize?: number }
    /** A delta hash object: decodes to `fileSize` bytes whose blake2s256 is `hexdigest`. */
    | { kind: "delta-file"; key: string; hexdigest: string; fileSize: number; storedSize?: number }
    | { kind: "wal"; key: string; name: string }
    | { kind: "history"; key: string; name: string }
  ) & {
    /** The backend's checksum of the stored bytes from its listing (`StoredObject.md5`), if any. */
    storedDigest?: string;
  };

/**
 * The hash a backend checksum is: local storage keeps a SHA-256, the cloud stores an MD5 (an S3
 * multipart ETag, `<md5>-<parts>`, is not a hash of the bytes and is not checked).
 */
export function storedDigestAlgorithm(digest: string | undefined): "sha256" | "md5" | null {
  if (!digest) return null;
  if (/^[0-9a-f]{64}$/i.test(digest)) return "sha256";
  if (/^[0-9a-f]{32}$/i.test(digest)) return "md5";
  return null;
}

/** Throws ObjectCorruptError when `digest` (a backend checksum) does not match. */
export function checkStoredDigest(actualHex: string, digest: string): void {
  if (actualHex !== digest.toLowerCase())
    throw new ObjectCorruptError(`stored bytes hash to ${actualHex}, the object store recorded ${digest}`);
}

export interface VerifyObjectResult {
  storedBytes: number;
  plainBytes: number;
  /** WAL segments: what the checker found (timestamps as strings: they cross a thread boundary). */
  wal?: { records: number; switched: boolean; lastXactTimeUs: string | null; lastXactLsn: string | null };
}

/** A problem with the object's data (as opposed to a storage error). */
export class ObjectCorruptError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ObjectCorruptError";
  }
}

const MAX_HISTORY_BYTES = 1024 * 1024;

function tarWalker(): Writable {
  const extract = tarStream.extract();
  extract.on("entry", (_header, stream, next) => {
    // A member cut short fails the whole extract, which reports it; nothing to add here.
    stream.on("error", () => undefined);
    stream.on("end", () => next());
    stream.resume();
  });
  const sink = new Writable({
    highWaterMark: 1024 * 1024,
    write(chunk: Buffer, _encoding, callback) {
      if (extract.write(chunk)) callback();
      else extract.once("drain", () => callback());
    },
    final(callback) {
      extract.once("error", (err: Error) => callback(err));
      extract.once("finish", () => callback());
      extract.end(undefined as unknown as Buffer); // streamx end() takes an optional chunk
    },
    destroy(err, callback) {
      extract.destroy(err ?? undefined);
      callback(err);
    },
  });
  extract.on("error", (err: Error) => sink.destroy(new ObjectCorruptError(`invalid tar data: ${err.message}`)));
  return sink;
}

function checkSize(what: string, actual: number, expected: number | string | undefined): void {
  if (expected === undefined || expected === "") return;
  if (Number(expected) !== actual) throw new ObjectCorruptError(`${what} is ${actual} bytes, expected ${expected}`);
}

function collector(onChunk: (chunk: Buffer) => void): Writable {
  return new Writable({
    highWaterMark: 1024 * 1024,
    write(chunk: Buffer, _encoding, callback) {
      try {
        onChunk(chunk);
        callback();
      } catch (err) {
        callback(err as Error);
      }
    },
  });
}

export async function verifyObject(
  job: VerifyJob,
  ctx: { storage: StorageBackend; keys: PrivateKeyLookup; onBytes?: (n: number) => void; signal?: AbortSignal },
): Promise<VerifyObjectResult> {
  const { stream, metadata } = await ctx.storage.getReadStream(job.key);
  let storedBytes = 0;
  let plainBytes = 0;
  const digestAlgorithm = storedDigestAlgorithm(job.storedDigest);
  const storedHash = digestAlgorithm ? createHash(digestAlgorithm) : null;
  const counter = new Transform({
    highWaterMark: 1024 * 1024,
    transform(chunk: Buffer, _encoding, callback) {
      storedBytes += chunk.byteLength;
      storedHash?.update(chunk);
      ctx.onBytes?.(chunk.byteLength);
      callback(null, chunk);
    },
  });
  const plainCounter = new Transform({
    highWaterMark: 1024 * 1024,
    transform(chunk: Buffer, _encoding, callback) {
      plainBytes += chunk.byteLength;
      callback(null, chunk);
    },
  });
  let finishSink: () => Partial<VerifyObjectResult> = () => ({});
  let sink: Writable;
  switch (job.kind) {
    case "tar":
      sink = tarWalker();
      break;
    case "delta-file": {
      const hash = createHash("blake2s256");
      sink = collector((chunk) => hash.update(chunk));
      finishSink = () => {
        const hex = hash.digest("hex");
        if (hex !== job.hexdigest) throw new ObjectCorruptError(`content hashes to ${hex}, not to its name`);
        return {};
      };
      break;
    }
    case "wal":
      ({ sink, finishSink } = walSink(job.name, metadata));
      break;
    case "history": {
      const parts: Buffer[] = [];
      sink = collector((chunk) => {
        if (plainBytes > MAX_HISTORY_BYTES) throw new ObjectCorruptError("timeline history larger than 1 MiB");
        parts.push(Buffer.from(chunk));
      });
      finishSink = () => {
        try {
          parseTimelineHistory(Buffer.concat(parts));
        } catch (err) {
          throw new ObjectCorruptError((err as Error).message);
        }
        return {};
      };
      break;
    }
  }
  try {
    const decoder = createDecodeStream(metadata, ctx.keys);
    await pipeline(stream, counter, decoder, plainCounter, sink, ctx.signal ? { signal: ctx.signal } : {});
  } finally {
    stream.destroy();
  }
  if (storedHash) checkStoredDigest(storedHash.digest("hex"), job.storedDigest!);
  const extra = finishSink();
  checkSize("decoded content", plainBytes, metadata["original-file-size"]);
  if (job.kind === "tar") checkSize("decoded content", plainBytes, job.plainSize);
  if (job.kind === "delta-file") checkSize("decoded content", plainBytes, job.fileSize);
  if (job.kind === "tar" || job.kind === "delta-file") checkSize("stored object", storedBytes, job.storedSize);
  return { storedBytes, plainBytes, ...extra };
}

function walSink(name: string, metadata: Metadata): { sink: Writable; finishSink: () => Partial<VerifyObjectResult> } {
  const checker = new WalSegmentChecker(name);
  const algorithm = metadata["hash-algorithm"];
  const expected = metadata.hash;
  const hash = algorithm && expected ? createHash(nodeHashName(algorithm)) : null;
  const sink = collector((chunk) => {
    hash?.update(chunk);
    checker.update(chunk);
  });
  const finishSink = (): Partial<VerifyObjectResult> => {
    let result: SegmentCheckResult;
    try {
      result = checker.finish();
    } catch (err) {
      throw new ObjectCorruptError((err as Error).message);
    }
    if (hash) {
      const hex = hash.digest("hex");
      if (hex !== expected)
        throw new ObjectCorruptError(`${algorithm} ${hex} does not match its hash metadata ${expected}`);
    }
    return {
      wal: {
        records: result.records,
        switched: result.switched,
        lastXactTimeUs: result.lastXactTimeUs === null ? null : String(result.lastXactTimeUs),
        lastXactLsn: result.lastXactLsn === null ? null : String(result.lastXactLsn),
      },
    };
  };
  return { sink, finishSink };
}
