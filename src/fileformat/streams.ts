/** Main-thread streaming transforms and one-shot helpers (for small data and tests). */
import { Duplex } from "node:stream";
import { createDecoder, createEncoder, runCodec } from "./pipeline.js";
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

export function createDecodeStream(metadata: Metadata, keys: PrivateKeyLookup): Duplex {
  return new CodecDuplex(createDecoder(metadata, keys));
}

export async function encodeBuffer(data: Buffer, opts: EncodeOptions): Promise<Buffer> {
  return runCodec(createEncoder(opts), data);
}

export async function decodeBuffer(data: Buffer, metadata: Metadata, keys: PrivateKeyLookup): Promise<Buffer> {
  return runCodec(createDecoder(metadata, keys), data);
}
