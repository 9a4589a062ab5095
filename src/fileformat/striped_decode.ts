/**
 * Snappy decoding of one stream on two threads: the counterpart of striped.ts for restores. A
 * basebackup chunk is often one large file, so the restore worker decoding it ran one core flat
 * out while the other idled once its smaller chunk was done. Snappy data chunks are independent,
 * so the leader (the thread reading the object) decrypts, cuts the compressed stream into runs
 * of whole framing chunks, hands runs to a helper thread over a MessagePort while the helper has
 * room, decodes the others itself and hands on the output in stream order. Each run is checked
 * exactly as SnappyFrameDecoder checks it (CRC-32C, lengths, chunk types), by that decoder.
 *
 * A run is posted as a copy (a few hundred KiB of compressed bytes), so the leader still holds
 * it: if the helper goes away (its own object was aborted and its thread replaced), the runs it
 * owed are decoded here and the restore goes on.
 */
import { Duplex } from "node:stream";
import type { MessagePort } from "node:worker_threads";
import { FileFormatError, IntegrityError } from "./errors.js";
import { SnappyFrameDecoder } from "./snappy.js";
import { HELPER_IN_FLIGHT, StripeLeader, replyToLeader, type StripePiece } from "./stripe_leader.js";
import type { Codec } from "./types.js";

/** Leader → helper: one run of whole framing chunks. */
interface ToDecodeHelper {
  seq: number;
  run: Uint8Array;
}

/** Data chunks per run: 16 × 64 KiB = at most 1 MiB of plaintext, one output piece. */
const RUN_DATA_CHUNKS = 16;
/** A framing chunk's length field is 3 bytes. */
const CHUNK_HEADER = 4;
const CHUNK_COMPRESSED = 0x00;
const CHUNK_UNCOMPRESSED = 0x01;

/** Decodes one run of whole framing chunks into one buffer, with SnappyFrameDecoder's checks. */
function decodeRun(run: Uint8Array): Buffer {
  const decoder = new SnappyFrameDecoder();
  const input = Buffer.from(run.buffer, run.byteOffset, run.byteLength);
  const pieces: Buffer[] = [...decoder.update(input), ...decoder.final()];
  return pieces.length === 1 ? pieces[0]! : Buffer.concat(pieces);
}

interface Piece extends StripePiece {
  /** The run while the helper owes it (decoded here should the helper go away). */
  run: Uint8Array | null;
}

/** The leader's side: compressed (decrypted) bytes in, plaintext pieces out in stream order. */
export class StripedSnappyDecoder extends StripeLeader<Piece> {
  /** Whole chunks of the run being collected (views into input, copied when the run closes). */
  private runParts: Uint8Array[] = [];
  private runBytes = 0;
  private runDataChunks = 0;
  /** An incomplete chunk carried into the next input. */
  private carry: Buffer | null = null;
  private carryLength = 0;
  private readonly header = Buffer.alloc(CHUNK_HEADER);
  private headerLength = 0;
  private helperGone = false;
  /** Runs the helper decoded (for tests and logs). */
  helperRuns = 0;

  /** Takes compressed bytes (not kept after the call); returns the plaintext now ready, in order. */
  update(chunk: Buffer): Buffer[] {
    this.poll();
    this.check();
    let offset = 0;
    if (this.headerLength > 0 || this.carry !== null) {
      if (this.carry === null) {
        const take = Math.min(CHUNK_HEADER - this.headerLength, chunk.length);
        chunk.copy(this.header, this.headerLength, 0, take);
        this.headerLength += take;
        offset = take;
        if (this.headerLength < CHUNK_HEADER) return this.ready();
        this.carry = Buffer.allocUnsafe(CHUNK_HEADER + bodyLength(this.header, 0));
        this.header.copy(this.carry, 0);
        this.carryLength = CHUNK_HEADER;
      }
      const carry = this.carry;
      const take = Math.min(carry.length - this.carryLength, chunk.length - offset);
      chunk.copy(carry, this.carryLength, offset, offset + take);
      this.carryLength += take;
      offset += take;
      if (this.carryLength < carry.length) return this.ready();
      this.carry = null;
      this.headerLength = 0;
      this.addChunk(carry);
    }
    while (chunk.length - offset >= CHUNK_HEADER) {
      const end = offset + CHUNK_HEADER + bodyLength(chunk, offset);
      if (end > chunk.length) break;
      this.addChunk(chunk.subarray(offset, end));
      offset = end;
    }
    if (offset < chunk.length) {
      const rest = chunk.length - offset;
      if (rest < CHUNK_HEADER) {
        chunk.copy(this.header, 0, offset);
        this.headerLength = rest;
      } else {
        this.carry = Buffer.allocUnsafe(CHUNK_HEADER + bodyLength(chunk, offset));
        chunk.copy(this.carry, 0, offset);
        this.carryLength = rest;
        this.headerLength = CHUNK_HEADER;
      }
    }
    // The input may be reused by the caller: runs still collecting keep a copy.
    this.runParts = this.runParts.map((part) =>
      part.buffer === chunk.buffer ? Uint8Array.prototype.slice.call(part) : part,
    );
    return this.ready();
  }

  /** The end of the compressed stream: the last run goes out; then drain with waitForHelper(). */
  end(): void {
    this.check();
    if (this.headerLength > 0 || this.carry !== null) {
      throw new FileFormatError("Snappy stream is truncated in the middle of a chunk");
    }
    this.closeRun();
  }

  /** Plaintext ready in stream order. */
  ready(): Buffer[] {
    return this.takeFilled();
  }

  private addChunk(chunk: Uint8Array): void {
    const type = chunk[0]!;
    this.runParts.push(chunk);
    this.runBytes += chunk.length;
    if (type === CHUNK_COMPRESSED || type === CHUNK_UNCOMPRESSED) {
      this.runDataChunks += 1;
      if (this.runDataChunks >= RUN_DATA_CHUNKS) this.closeRun();
    }
  }

  private closeRun(): void {
    if (this.runParts.length === 0) return;
    const run = new Uint8Array(this.runBytes);
    let offset = 0;
    for (const part of this.runParts) {
      run.set(part, offset);
      offset += part.length;
    }
    this.runParts = [];
    this.runBytes = 0;
    this.runDataChunks = 0;
    if (!this.helperGone && !this.closed && this.awaiting.size < HELPER_IN_FLIGHT) this.handOut(run);
    else this.decodeHere(run);
  }

  private decodeHere(run: Uint8Array): void {
    const piece: Piece = { out: null, run: null };
    this.fill(piece, run);
    this.pushFilled(piece);
  }

  private fill(piece: Piece, run: Uint8Array): void {
    try {
      piece.out = decodeRun(run);
    } catch (err) {
      this.failure ??= err instanceof Error ? err : new FileFormatError(String(err));
      piece.out = Buffer.alloc(0);
    }
  }

  private handOut(run: Uint8Array): void {
    const seq = this.pushAwaiting({ out: null, run });
    this.helperRuns += 1;
    // Copied, not transferred: kept for decoding here should the helper go away.
    this.port.postMessage({ seq, run } satisfies ToDecodeHelper);
  }

  protected override received(piece: Piece): void {
    piece.run = null;
  }

  /** The helper's thread went away (its own object was aborted): decode what it owed here. */
  protected override helperClosed(): void {
    this.helperGone = true;
    if (!this.closed) {
      for (const piece of this.awaiting.values()) if (piece.run !== null) this.fill(piece, piece.run);
    }
    this.awaiting.clear();
  }
}

function bodyLength(buf: Uint8Array, offset: number): number {
  return buf[offset + 1]! | (buf[offset + 2]! << 8) | (buf[offset + 3]! << 16);
}

/**
 * The helper's side, in another thread: decodes the runs it is sent until the port closes.
 * Returns the number of runs decoded so far through `stats` (for tests).
 */
export function serveSnappyDecodeStripes(port: MessagePort, stats?: { runs: number }): void {
  port.on("message", (message: ToDecodeHelper) =>
    replyToLeader(port, message.seq, () => {
      const decoded = decodeRun(message.run);
      if (stats) stats.runs += 1;
      return decoded;
    }),
  );
  port.on("close", () => port.removeAllListeners());
}

/**
 * A decode stream (decrypt, then striped snappy) with the semantics of the plain one: output is
 * plaintext before the HMAC at the end is checked, and an integrity failure wins over a
 * decompression error that tampering caused.
 */
export class StripedSnappyDecodeStream extends Duplex {
  private readonly striped: StripedSnappyDecoder;
  private decodeError: unknown = null;
  private wantRead: (() => void) | null = null;

  constructor(
    private readonly decryptor: Codec | null,
    port: MessagePort,
  ) {
    super({ readableHighWaterMark: 1024 * 1024, writableHighWaterMark: 1024 * 1024 });
    this.striped = new StripedSnappyDecoder(port);
  }

  /** Runs the helper decoded. */
  get helperRuns(): number {
    return this.striped.helperRuns;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.consume(this.decryptor ? this.decryptor.update(chunk) : [chunk]).then(() => callback(), callback);
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.finish().then(() => {
      this.push(null);
      callback();
    }, callback);
  }

  override _read(): void {
    const wake = this.wantRead;
    this.wantRead = null;
    wake?.();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.striped.close();
    this.wantRead?.();
    callback(error);
  }

  private async consume(compressed: Iterable<Buffer>): Promise<void> {
    for (const piece of compressed) {
      if (this.decodeError !== null) continue; // keep decrypting: the HMAC verdict comes first
      try {
        await this.pushAll(this.striped.update(piece));
        while (this.striped.backlogged) {
          await this.striped.waitForHelper();
          await this.pushAll(this.striped.ready());
        }
      } catch (err) {
        // Without encryption there is no verdict to wait for.
        if (err instanceof IntegrityError || this.decryptor === null) throw err;
        this.decodeError = err;
      }
    }
  }

  private async finish(): Promise<void> {
    if (this.decryptor) await this.consume(this.decryptor.final());
    if (this.decodeError !== null) throw this.decodeError;
    this.striped.end();
    for (;;) {
      await this.pushAll(this.striped.ready());
      if (!this.striped.pending) break;
      await this.striped.waitForHelper();
    }
    this.striped.close();
  }

  private async pushAll(pieces: Buffer[]): Promise<void> {
    for (const piece of pieces) {
      if (this.destroyed) return;
      if (!this.push(piece)) await new Promise<void>((resolve) => (this.wantRead = resolve));
    }
  }
}
