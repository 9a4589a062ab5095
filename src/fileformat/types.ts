import type { Metadata } from "../storage/types.js";

export type { Metadata };

export type CompressionAlgorithm = "snappy" | "zstd" | "lzma";

export const COMPRESSION_ALGORITHMS: readonly CompressionAlgorithm[] = ["snappy", "zstd", "lzma"];

export interface EncodeOptions {
  /** null = no compression */
  algorithm: CompressionAlgorithm | null;
  /** `compression.level` (0 = each algorithm's default, as upstream) */
  level: number;
  /** null = no encryption */
  encryptionKeyId: string | null;
  publicKeyPem: string | null;
  /** zstd worker threads (`basebackup_compression_threads`); 0/undefined = single-threaded */
  zstdThreads?: number;
}

/** Returns the private key PEM for a key id, or undefined when the key is unknown. */
export type PrivateKeyLookup = (keyId: string) => string | undefined;

export interface EncodeFileResult {
  /** plaintext bytes */
  originalSize: number;
  /** stored (compressed/encrypted) bytes */
  storedSize: number;
  /** hex digest of the PLAINTEXT, when a hashAlgorithm was given */
  hash?: string;
  /** striped snappy streams: input ranges a second worker compressed */
  helperRanges?: number;
}

/**
 * A synchronous chunk transformer. `update`/`final` are lazy: output pieces are produced as the
 * returned iterable is consumed, so a caller can stop pulling to bound memory (decompression can
 * expand a small input enormously). Yielded buffers belong to the caller and may alias the input
 * chunk (so a caller reusing its input buffer must copy them first); a codec never keeps a
 * reference to an input chunk once the iterable returned for it is drained.
 */
export interface Codec {
  update(chunk: Buffer): Iterable<Buffer>;
  final(): Iterable<Buffer>;
}
