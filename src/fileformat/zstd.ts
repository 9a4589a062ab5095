/** zstd frames as python-zstandard's compressobj() writes them (no content size, no checksum). */
import { createRequire } from "node:module";
import { FileFormatError, asFileFormatError } from "./errors.js";
import { OutputPiece } from "./output_piece.js";
import type { Codec } from "./types.js";

// The raw binding gives synchronous, incremental compressStream2/decompressStream, which the
// lazy Codec interface needs; zstd-napi's own Transforms push everything eagerly.
// Loaded on first use: a process that never touches zstd (a snappy site's restore_command in the
// direct mode, say) does not pay for the native module.
const require = createRequire(import.meta.url);
type Binding = typeof import("zstd-napi/binding.js");
let loaded: Binding | undefined;
function native(): Binding {
  loaded ??= require("zstd-napi/binding") as Binding;
  return loaded;
}

const DEFAULT_LEVEL = 3;
const cOutSize = (): number => native().cStreamOutSize();
const dOutSize = (): number => native().dStreamOutSize();
/** Decompressor output piece; bounded so that a highly compressed input cannot balloon memory. */
const dPiece = (): number => Math.max(dOutSize(), 1024 * 1024);

export function zstdLevel(level: number): number {
  if (!Number.isInteger(level)) throw new FileFormatError(`invalid zstd level ${level}`);
  if (level === 0) return DEFAULT_LEVEL; // upstream: level 0 means "zstd default"
  const bounds = native().cParamGetBounds(native().CParameter.compressionLevel);
  if (level < bounds.lowerBound || level > bounds.upperBound) throw new FileFormatError(`invalid zstd level ${level}`);
  return level;
}

export class ZstdEncoder implements Codec {
  private readonly cctx = new (native().CCtx)();
  /** Reused while results are copied out of it (the common case: output is much smaller). */
  private scratch: Buffer | null = null;

  constructor(level: number, threads = 0) {
    this.cctx.setParameter(native().CParameter.compressionLevel, zstdLevel(level));
    this.cctx.setParameter(native().CParameter.contentSizeFlag, 0);
    this.cctx.setParameter(native().CParameter.checksumFlag, 0);
    if (threads > 0) this.cctx.setParameter(native().CParameter.nbWorkers, threads);
  }

  *update(chunk: Buffer): Iterable<Buffer> {
    yield* this.run(chunk, native().EndDirective.continue);
  }

  *final(): Iterable<Buffer> {
    yield* this.run(Buffer.alloc(0), native().EndDirective.end);
  }

  private *run(input: Buffer, directive: number): Iterable<Buffer> {
    let src = input;
    for (;;) {
      // Sized so one call usually takes a whole 1 MiB input; the result is trimmed below.
      const size = Math.max(cOutSize(), src.length);
      const dst = this.scratch !== null && this.scratch.length >= size ? this.scratch : Buffer.allocUnsafe(size);
      this.scratch = dst;
      const [remaining, produced, consumed] = this.cctx.compressStream2(dst, src, directive);
      src = src.subarray(consumed);
      if (produced > 0) {
        if (produced < dst.length >>> 1) {
          yield Buffer.from(dst.subarray(0, produced));
        } else {
          this.scratch = null; // handed to the caller
          yield dst.subarray(0, produced);
        }
      }
      if (src.length === 0 && (directive === native().EndDirective.continue || remaining === 0)) return;
    }
  }
}

export class ZstdDecoder implements Codec {
  private readonly dctx = new (native().DCtx)();
  private inFrame = false;
  /** Small inputs (64 KiB decrypted pieces) fill one piece across calls (output_piece.ts). */
  private readonly out = new OutputPiece(dPiece());

  *update(chunk: Buffer): Iterable<Buffer> {
    let src = chunk;
    while (src.length > 0) {
      let ret: number, produced: number, consumed: number;
      try {
        [ret, produced, consumed] = this.dctx.decompressStream(this.out.current().subarray(this.out.length), src);
      } catch (err) {
        throw asFileFormatError(err, "Invalid zstd data");
      }
      src = src.subarray(consumed);
      // ret === 0: a frame just ended; the next call starts the next concatenated frame.
      this.inFrame = ret !== 0;
      this.out.length += produced;
      if (this.out.room() > 0) continue;
      yield this.out.take()!;
      if (src.length === 0 && ret !== 0) {
        // Output was full inside a frame: the decoder may hold more output for this input.
        for (;;) {
          const [ret2, produced2] = this.dctx.decompressStream(this.out.current(), src);
          this.inFrame = ret2 !== 0;
          this.out.length = produced2;
          if (this.out.room() > 0 || ret2 === 0) break;
          yield this.out.take()!;
        }
      }
    }
  }

  *final(): Iterable<Buffer> {
    if (this.inFrame) throw new FileFormatError("zstd stream is truncated in the middle of a frame");
    const rest = this.out.take();
    if (rest) yield rest;
  }
}
