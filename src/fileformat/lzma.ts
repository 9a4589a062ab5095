/** xz container (CRC64, LZMA2 preset = level), as Python's lzma.open(..., preset=level) writes it. */
import { createRequire } from "node:module";
import { FileFormatError } from "./errors.js";
import type { Codec } from "./types.js";

/** The parts of lzma-native's native Stream used here (the package ships no types). */
interface NativeLzmaStream {
  bufferHandler: (
    buf: Buffer | null | undefined,
    processedChunks: number | undefined,
    err: Error | null | undefined,
  ) => void;
  code(chunk: Buffer | null, async: boolean): void;
  mtEncoder_(options: { preset: number; filters: null; check: number; threads: number }): void;
  autoDecoder_(memlimit: number | null, flags: number): void;
  resetUnderlying(): void;
}
interface LzmaNative {
  Stream: new () => NativeLzmaStream;
  CHECK_CRC64: number;
  CONCATENATED: number;
}

// Loaded on first use: only xz sites pay for the native module's start-up.
const require = createRequire(import.meta.url);
let loaded: LzmaNative | undefined;
function native(): LzmaNative {
  loaded ??= require("lzma-native") as LzmaNative;
  return loaded;
}

/** Decoder input slice: xz of zeros expands ~7000x, so feed small pieces to bound each output batch. */
const DECODE_SLICE = 16 * 1024;

/**
 * Runs lzma-native's native stream synchronously (we are on a worker thread already). The native
 * code calls bufferHandler synchronously for every output buffer, then once with `null` at
 * stream end.
 */
class SyncLzma {
  private outputs: Buffer[] = [];
  private error: Error | null = null;
  private ended = false;

  constructor(private readonly stream: NativeLzmaStream) {
    stream.bufferHandler = (buf, _processed, err) => {
      if (err) this.error = err;
      else if (buf === null) this.ended = true;
      else if (buf && buf.length > 0) this.outputs.push(buf);
    };
  }

  code(chunk: Buffer | null): Buffer[] {
    this.stream.code(chunk, false);
    if (this.error) {
      const err = this.error;
      this.stream.resetUnderlying();
      throw new FileFormatError(`Invalid xz data: ${err.message}`, { cause: err });
    }
    const out = this.outputs;
    this.outputs = [];
    if (chunk === null) this.stream.resetUnderlying();
    return out;
  }

  get streamEnded(): boolean {
    return this.ended;
  }
}

export class LzmaEncoder implements Codec {
  private readonly lz: SyncLzma;

  constructor(level: number) {
    if (!Number.isInteger(level) || level < 0 || level > 9) throw new FileFormatError(`invalid lzma preset ${level}`);
    const stream = new (native().Stream)();
    // threads:1 selects the MT encoder, the only path that honours preset 0 (easyEncoder turns 0 into 6).
    stream.mtEncoder_({ preset: level, filters: null, check: native().CHECK_CRC64, threads: 1 });
    this.lz = new SyncLzma(stream);
  }

  *update(chunk: Buffer): Iterable<Buffer> {
    if (chunk.length > 0) yield* this.lz.code(chunk);
  }

  *final(): Iterable<Buffer> {
    yield* this.lz.code(null);
  }
}

export class LzmaDecoder implements Codec {
  private readonly lz: SyncLzma;
  private sawInput = false;

  constructor() {
    const stream = new (native().Stream)();
    // CONCATENATED: liblzma itself reads concatenated xz streams and stream padding.
    stream.autoDecoder_(null, native().CONCATENATED);
    this.lz = new SyncLzma(stream);
  }

  *update(chunk: Buffer): Iterable<Buffer> {
    if (chunk.length > 0) this.sawInput = true;
    for (let offset = 0; offset < chunk.length; offset += DECODE_SLICE) {
      yield* this.lz.code(chunk.subarray(offset, offset + DECODE_SLICE));
    }
  }

  *final(): Iterable<Buffer> {
    // A zero-length object decodes to nothing, like the other algorithms.
    if (!this.sawInput) return;
    const out = this.lz.code(null);
    if (!this.lz.streamEnded) throw new FileFormatError("xz stream is truncated");
    yield* out;
  }
}
