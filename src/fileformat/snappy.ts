/**
 * Snappy framing format (google/snappy framing_format.txt), as python-snappy's StreamCompressor
 * writes it. Own framing over raw block compression: measured faster than snappy's own framed
 * `Compressor` on heap data, and the reader needs leniency the library does not document
 * (repeated or missing stream identifiers). The block work goes to the libsnappy addon
 * (snappy_native.c) where it was built, else to the npm packages, with the same bytes.
 */
import { createRequire } from "node:module";
import { OutputPiece } from "./output_piece.js";
import { FileFormatError, asFileFormatError } from "./errors.js";
import {
  NATIVE_BAD_DATA,
  NATIVE_CRC_MISMATCH,
  NATIVE_TOO_LARGE,
  snappyNative,
  type SnappyNative,
} from "./snappy_native.js";
import type { Codec } from "./types.js";

// The npm packages load on first use: a thread that only decodes, with the native addon, never
// needs them, and loading them costs about 40 ms of a restore's start-up.
const requireCjs = createRequire(import.meta.url);
let npmSnappy: typeof import("snappy") | null = null;
let npmCrc32c: (typeof import("@node-rs/crc32"))["crc32c"] | null = null;
const snappyLib = (): typeof import("snappy") => (npmSnappy ??= requireCjs("snappy") as typeof import("snappy"));
const crc32c = (data: Uint8Array): number =>
  (npmCrc32c ??= (requireCjs("@node-rs/crc32") as typeof import("@node-rs/crc32")).crc32c)(data as Buffer);

const CHUNK_COMPRESSED = 0x00;
const CHUNK_UNCOMPRESSED = 0x01;
const CHUNK_PADDING = 0xfe;
const CHUNK_STREAM_IDENTIFIER = 0xff;
const MAX_BLOCK = 65536;
export const STREAM_IDENTIFIER = Buffer.from([0xff, 0x06, 0x00, 0x00, 0x73, 0x4e, 0x61, 0x50, 0x70, 0x59]);
const IDENTIFIER_BODY = STREAM_IDENTIFIER.subarray(4);

/** The framing format's checksum: CRC-32C, rotated and offset ("masked"). */
export function maskedCrc32c(data: Uint8Array): number {
  if (snappyNative !== null) return snappyNative.maskedCrc32c(data);
  return maskedCrc32cPortable(data);
}

export function maskedCrc32cPortable(data: Uint8Array): number {
  const crc = crc32c(data) >>> 0;
  return ((((crc >>> 15) | (crc << 17)) >>> 0) + 0xa282ead8) >>> 0;
}

interface EncodedBlock {
  type: number;
  crc: number;
  payload: Uint8Array;
}

/** One ≤64 KiB block as a data chunk (uncompressed when compression saves < 1/8, as upstream). */
function encodeBlock(block: Uint8Array): EncodedBlock {
  const crc = maskedCrc32c(block);
  // copyOutputData: the default external-buffer path is ~10x slower on 64 KiB blocks.
  const compressed = snappyLib().compressSync(block, { copyOutputData: true });
  if (compressed.length < block.length - (block.length >>> 3))
    return { type: CHUNK_COMPRESSED, crc, payload: compressed };
  return { type: CHUNK_UNCOMPRESSED, crc, payload: block };
}

/** Lays out chunks (and the identifier, when first) in one buffer: a single copy per payload. */
function layOut(blocks: EncodedBlock[], withIdentifier: boolean): Buffer {
  let size = withIdentifier ? STREAM_IDENTIFIER.length : 0;
  for (const block of blocks) size += 8 + block.payload.length;
  const out = Buffer.allocUnsafe(size);
  let pos = 0;
  if (withIdentifier) pos += STREAM_IDENTIFIER.copy(out, 0);
  for (const { type, crc, payload } of blocks) {
    const length = payload.length + 4;
    out[pos] = type;
    out[pos + 1] = length & 0xff;
    out[pos + 2] = (length >>> 8) & 0xff;
    out[pos + 3] = (length >>> 16) & 0xff;
    out.writeUInt32LE(crc, pos + 4);
    out.set(payload, pos + 8);
    pos += 8 + payload.length;
  }
  return out;
}

/** Native encoding's output is framed here first, then copied out at its exact size. */
let nativeScratch: Buffer | null = null;
/** Input framed per native call: bounds the scratch buffer (about 1.2 MiB). */
const NATIVE_ENCODE_INPUT = 16 * MAX_BLOCK;

/** frame() with the addon: one buffer of the exact size per NATIVE_ENCODE_INPUT of input. */
function* encodeNative(native: SnappyNative, parts: Uint8Array[], withIdentifier: boolean): Iterable<Buffer> {
  let identifier = withIdentifier;
  for (const part of parts) {
    for (let start = 0; start < part.length; start += NATIVE_ENCODE_INPUT) {
      const end = Math.min(start + NATIVE_ENCODE_INPUT, part.length);
      const bound = STREAM_IDENTIFIER.length + native.encodeBound(end - start);
      if (nativeScratch === null || nativeScratch.length < bound) nativeScratch = Buffer.allocUnsafeSlow(bound);
      const at = identifier ? STREAM_IDENTIFIER.copy(nativeScratch, 0) : 0;
      identifier = false;
      const written = native.encodeChunks(part, start, end, nativeScratch, at);
      if (written < 0) throw new FileFormatError(`Snappy data could not be encoded (native code ${written})`);
      yield Buffer.from(nativeScratch.subarray(0, at + written));
    }
  }
}

/**
 * Frames `parts`, each cut into 64 KiB blocks from its own start (all but the last a multiple of
 * 64 KiB long), after the stream identifier when `withIdentifier`: with the addon where given,
 * else with the npm packages, the same bytes either way. Everything is copied out: the parts may
 * be reused once this returns.
 */
function frame(parts: Uint8Array[], withIdentifier: boolean, native: SnappyNative | null): Buffer[] {
  if (native !== null) return [...encodeNative(native, parts, withIdentifier)];
  const blocks: EncodedBlock[] = [];
  for (const part of parts) {
    for (let at = 0; at < part.length; at += MAX_BLOCK) {
      blocks.push(encodeBlock(part.subarray(at, Math.min(at + MAX_BLOCK, part.length))));
    }
  }
  return [layOut(blocks, withIdentifier)];
}

/**
 * Data chunks of `data` cut into 64 KiB blocks from its start (no identifier). For a range that
 * starts on a 64 KiB boundary of the stream, this is exactly what SnappyFrameEncoder writes for
 * it, so ranges encoded apart (on several threads) and laid end to end give the same bytes.
 */
export function encodeBlocks(data: Uint8Array, native: SnappyNative | null = snappyNative): Buffer {
  const pieces = frame([data], false, native);
  return pieces.length === 1 ? pieces[0]! : Buffer.concat(pieces);
}

export const SNAPPY_BLOCK = MAX_BLOCK;

export class SnappyFrameEncoder implements Codec {
  private started = false;
  /** Partial block carried over between updates (always copied: callers' chunks are not ours to keep). */
  private pending: Buffer = Buffer.allocUnsafe(MAX_BLOCK);
  private pendingLength = 0;

  /** `native`: the addon (default, where built) or null for the npm packages; the bytes are the same. */
  constructor(private readonly native: SnappyNative | null = snappyNative) {}

  *update(chunk: Buffer): Iterable<Buffer> {
    const parts: Uint8Array[] = [];
    let offset = 0;
    if (this.pendingLength > 0) {
      const take = Math.min(MAX_BLOCK - this.pendingLength, chunk.length);
      chunk.copy(this.pending, this.pendingLength, 0, take);
      this.pendingLength += take;
      offset = take;
      if (this.pendingLength < MAX_BLOCK) return;
      parts.push(this.pending);
      this.pendingLength = 0;
    }
    const whole = offset + Math.floor((chunk.length - offset) / MAX_BLOCK) * MAX_BLOCK;
    if (whole > offset) parts.push(chunk.subarray(offset, whole));
    // Encoded (and copied out) before `pending` takes the rest of the chunk.
    const out = parts.length > 0 ? this.encode(parts) : [];
    if (whole < chunk.length) {
      chunk.copy(this.pending, 0, whole);
      this.pendingLength = chunk.length - whole;
    }
    yield* out;
  }

  *final(): Iterable<Buffer> {
    if (this.pendingLength > 0) {
      const block = this.pending.subarray(0, this.pendingLength);
      this.pendingLength = 0;
      yield* this.encode([block]);
    }
  }

  /** The identifier is written lazily, so empty input gives zero bytes (like upstream + encryption). */
  private encode(parts: Uint8Array[]): Buffer[] {
    const first = !this.started;
    this.started = true;
    return frame(parts, first, this.native);
  }
}

/**
 * Decoded output is handed on in pieces of this size (output_piece.ts), not one 64 KiB block at a
 * time: for 64 KiB pieces the trips downstream cost more CPU than the one copy into a piece here.
 */
const OUTPUT_PIECE = 1024 * 1024;

export class SnappyFrameDecoder implements Codec {
  /** `native`: the addon (default, where built) or null for the npm packages (tests compare both). */
  constructor(private readonly native: SnappyNative | null = snappyNative) {}

  /** Decoded blocks not yet handed on (see OUTPUT_PIECE). */
  private readonly out = new OutputPiece(OUTPUT_PIECE);
  /** Bytes of an incomplete chunk (header and body) carried between updates. */
  private carry: Buffer | null = null;
  private carryLength = 0;
  private readonly header = Buffer.alloc(4);
  private headerLength = 0;

  /** Output is handed on in full pieces; the last one at final(). */
  *update(chunk: Buffer): Iterable<Buffer> {
    yield* this.decodeInput(chunk);
  }

  /** Collects a decoded block; returns a full piece to hand on, if one is complete. */
  private collect(data: Buffer): Buffer | null {
    const full = data.length > this.out.room() ? this.out.take() : null;
    data.copy(this.out.current(), this.out.length);
    this.out.length += data.length;
    return full;
  }

  /** Decodes a data chunk's body `buf[start, end)` straight into the output piece (see snappy_native.c). */
  private *decodeNative(
    native: SnappyNative,
    buf: Buffer,
    start: number,
    end: number,
    expectedCrc: number,
    compressed: boolean,
  ): Iterable<Buffer> {
    // A whole block must fit: hand on the piece first when it might not.
    const full = MAX_BLOCK > this.out.room() ? this.out.take() : null;
    const decoded = native.decodeChunk(buf, start, end, this.out.current(), this.out.length, expectedCrc, compressed);
    if (decoded < 0) throw nativeError(decoded);
    this.out.length += decoded;
    // The earlier piece goes first; this block's bytes wait in the new one.
    if (full) yield full;
  }

  private *decodeInput(chunk: Buffer): Iterable<Buffer> {
    let offset = 0;
    if (this.headerLength > 0 || this.carry !== null) {
      if (this.carry === null) {
        const take = Math.min(4 - this.headerLength, chunk.length);
        chunk.copy(this.header, this.headerLength, 0, take);
        this.headerLength += take;
        offset = take;
        if (this.headerLength < 4) return;
        this.carry = Buffer.allocUnsafe(4 + bodyLength(this.header, 0));
        this.header.copy(this.carry, 0);
        this.carryLength = 4;
      }
      const carry = this.carry;
      const take = Math.min(carry.length - this.carryLength, chunk.length - offset);
      chunk.copy(carry, this.carryLength, offset, offset + take);
      this.carryLength += take;
      offset += take;
      if (this.carryLength < carry.length) return;
      this.carry = null;
      this.headerLength = 0;
      yield* this.decodeChunk(carry, 0, carry.length);
    }
    while (chunk.length - offset >= 4) {
      const end = offset + 4 + bodyLength(chunk, offset);
      if (end > chunk.length) break;
      yield* this.decodeChunk(chunk, offset, end);
      offset = end;
    }
    if (offset < chunk.length) {
      const rest = chunk.length - offset;
      if (rest < 4) {
        chunk.copy(this.header, 0, offset);
        this.headerLength = rest;
      } else {
        this.carry = Buffer.allocUnsafe(4 + bodyLength(chunk, offset));
        chunk.copy(this.carry, 0, offset);
        this.carryLength = rest;
        this.headerLength = 4;
      }
    }
  }

  *final(): Iterable<Buffer> {
    if (this.headerLength > 0 || this.carry !== null) {
      throw new FileFormatError("Snappy stream is truncated in the middle of a chunk");
    }
    const rest = this.out.take();
    if (rest) yield rest;
  }

  private *decodeChunk(buf: Buffer, start: number, end: number): Iterable<Buffer> {
    const type = buf[start];
    const body = buf.subarray(start + 4, end);
    if (type === CHUNK_COMPRESSED || type === CHUNK_UNCOMPRESSED) {
      if (body.length < 4) throw new FileFormatError("Snappy data chunk is too short");
      const expectedCrc = body.readUInt32LE(0);
      if (this.native !== null) {
        yield* this.decodeNative(this.native, buf, start + 8, end, expectedCrc, type === CHUNK_COMPRESSED);
        return;
      }
      let data: Buffer;
      if (type === CHUNK_COMPRESSED) {
        try {
          data = snappyLib().uncompressSync(body.subarray(4), { asBuffer: true, copyOutputData: true }) as Buffer;
        } catch (err) {
          throw asFileFormatError(err, "Invalid snappy data");
        }
      } else {
        data = body.subarray(4);
      }
      if (data.length > MAX_BLOCK) throw new FileFormatError("Snappy chunk holds more than 65536 bytes");
      if (maskedCrc32c(data) !== expectedCrc) throw new FileFormatError("Snappy chunk CRC-32C mismatch");
      if (data.length > 0) {
        const full = this.collect(data);
        if (full) yield full;
      }
    } else if (type === CHUNK_STREAM_IDENTIFIER) {
      // Concatenated streams repeat the identifier anywhere; a missing one is tolerated too (cramjam).
      if (!body.equals(IDENTIFIER_BODY)) throw new FileFormatError("Invalid snappy stream identifier");
    } else if (type >= 0x02 && type <= 0x7f) {
      throw new FileFormatError(`Unsupported unskippable snappy chunk type 0x${type.toString(16)}`);
    }
    // 0x80..0xfd reserved skippable and CHUNK_PADDING: ignored.
    void CHUNK_PADDING;
  }
}

function nativeError(code: number): FileFormatError {
  if (code === NATIVE_BAD_DATA) return new FileFormatError("Invalid snappy data");
  if (code === NATIVE_TOO_LARGE) return new FileFormatError("Snappy chunk holds more than 65536 bytes");
  if (code === NATIVE_CRC_MISMATCH) return new FileFormatError("Snappy chunk CRC-32C mismatch");
  return new FileFormatError(`Snappy chunk could not be decoded (native code ${code})`);
}

function bodyLength(buf: Buffer, offset: number): number {
  return buf[offset + 1] | (buf[offset + 2] << 8) | (buf[offset + 3] << 16);
}
