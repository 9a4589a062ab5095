/** Main-thread streaming transforms and one-shot helpers (for small data and tests). */
import { Duplex } from "node:stream";
import type { MessagePort } from "node:worker_threads";
import { createDecoder, createDecryptor, createEncoder, decodePlan, runCodec } from "./pipeline.js";
import { StripedSnappyDecodeStream } from "./striped_decode.js";
import type { Codec, EncodeOptions, Metadata, PrivateKeyLookup } from "./types.js";

interface Suspended {
  pieces: Iterator<Buffer>;
  callback: (error?: Error | null) => void;
  isFinal: boolean;
}

/**
 * A Duplex over a lazy Codec that stops pulling output when the readable side is full and
 * resumes in _read, so a small compressed input cannot expand into unbounded memory.
 */
export class CodecDuplex extends Duplex {
  private suspended: Suspended | null = null;

  constructor(private readonly codec: Codec) {
    super({ readableHighWaterMark: 1024 * 1024, writableHighWaterMark: 1024 * 1024 });
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.drive(() => this.codec.update(chunk), callback, false);
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.drive(() => this.codec.final(), callback, true);
  }

  override _read(): void {
    const suspended = this.suspended;
    if (suspended === null) return;
    this.suspended = null;
    this.continueWith(suspended);
  }

  private drive(produce: () => Iterable<Buffer>, callback: (error?: Error | null) => void, isFinal: boolean): void {
    let pieces: Iterator<Buffer>;
    try {
      pieces = produce()[Symbol.iterator]();
    } catch (err) {
      callback(err as Error);
      return;
    }
    this.continueWith({ pieces, callback, isFinal });
  }

  private continueWith(state: Suspended): void {
    try {
      for (;;) {
        const next = state.pieces.next();
        if (next.done) break;
        if (next.value.length > 0 && !this.push(next.value)) {
          this.suspended = state;
          return;
        }
      }
    } catch (err) {
      state.callback(err as Error);
      return;
    }
    if (state.isFinal) this.push(null);
    state.callback();
  }
}

export function createEncodeStream(opts: EncodeOptions): Duplex {
  return new CodecDuplex(createEncoder(opts));
}

/** Objects decoding to less than this are not striped (see createDecodeStream). */
export const STRIPED_DECODE_MIN_SIZE = 8 * 1024 * 1024;

/**
 * `stripes`: a port to a helper thread serving serveSnappyDecodeStripes(); a snappy object is then
 * decoded on both threads (striped_decode.ts). The port is closed when the object is not snappy
 * or is small.
 */
export function createDecodeStream(
  metadata: Metadata,
  keys: PrivateKeyLookup,
  opts: { stripes?: MessagePort } = {},
): Duplex {
  if (opts.stripes) {
    const plan = decodePlan(metadata);
    // A small object is done before a round trip to another thread pays off.
    const size = Number(metadata["original-file-size"] || Infinity);
    if (plan.algorithm === "snappy" && size >= STRIPED_DECODE_MIN_SIZE) {
      return new StripedSnappyDecodeStream(createDecryptor(plan, keys), opts.stripes);
    }
    opts.stripes.close();
  }
  return new CodecDuplex(createDecoder(metadata, keys));
}

export async function encodeBuffer(data: Buffer, opts: EncodeOptions): Promise<Buffer> {
  return runCodec(createEncoder(opts), data);
}

export async function decodeBuffer(data: Buffer, metadata: Metadata, keys: PrivateKeyLookup): Promise<Buffer> {
  return runCodec(createDecoder(metadata, keys), data);
}
