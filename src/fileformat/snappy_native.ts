/**
 * The snappy framing's optional native half (snappy_native.c, built by
 * scripts/build_native.sh): null where it was not built or cannot be loaded (libsnappy missing),
 * and snappy.ts then uses the npm packages, with the same results.
 */
import { nativeAddon } from "../common/native_addon.js";

export interface SnappyNative {
  /**
   * Decodes the chunk body `src[start, end)` (after its CRC) into `dst` at `dstOffset` and checks
   * its masked CRC-32C there: the decoded length, or one of the NATIVE_* codes.
   */
  decodeChunk(
    src: Uint8Array,
    start: number,
    end: number,
    dst: Uint8Array,
    dstOffset: number,
    expectedMaskedCrc: number,
    compressed: boolean,
  ): number;
  /**
   * Frames `src[start, end)`, cut into 64 KiB blocks from `start`, as data chunks into `dst` at
   * `dstOffset` (room for `encodeBound(end - start)` bytes needed): the bytes written, or a
   * NATIVE_* code. Same bytes as the npm path.
   */
  encodeChunks(src: Uint8Array, start: number, end: number, dst: Uint8Array, dstOffset: number): number;
  /** The most bytes encodeChunks writes for `length` bytes of input. */
  encodeBound(length: number): number;
  maskedCrc32c(data: Uint8Array): number;
}

export const NATIVE_BAD_DATA = -1;
export const NATIVE_TOO_LARGE = -2;
export const NATIVE_CRC_MISMATCH = -3;
export const NATIVE_BAD_ARGUMENTS = -4;

/** The addon's codec half (src/common/native_addon.ts loads it). */
export const snappyNative: SnappyNative | null =
  typeof nativeAddon?.decodeChunk === "function" ? (nativeAddon as unknown as SnappyNative) : null;
