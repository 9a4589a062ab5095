/** Builds the codec chains: write = compress then encrypt; read = decrypt then decompress (metadata only). */
import { Decryptor, Encryptor, loadPrivateKey, loadPublicKey } from "./crypto.js";
import { FileFormatError, IntegrityError, KeyNotFoundError } from "./errors.js";
import { LzmaDecoder, LzmaEncoder } from "./lzma.js";
import { SnappyFrameDecoder, SnappyFrameEncoder } from "./snappy.js";
import {
  COMPRESSION_ALGORITHMS,
  type Codec,
  type CompressionAlgorithm,
  type EncodeOptions,
  type Metadata,
  type PrivateKeyLookup,
} from "./types.js";
import { ZstdDecoder, ZstdEncoder } from "./zstd.js";

export const COMPRESSION_ALGORITHM_KEY = "compression-algorithm";
export const ENCRYPTION_KEY_ID_KEY = "encryption-key-id";

/** Metadata keys describing the encoding (absent keys omitted). */
export function encodingMetadata(opts: EncodeOptions): Metadata {
  const metadata: Metadata = {};
  if (opts.algorithm) metadata[COMPRESSION_ALGORITHM_KEY] = opts.algorithm;
  if (opts.encryptionKeyId) metadata[ENCRYPTION_KEY_ID_KEY] = opts.encryptionKeyId;
  return metadata;
}

export interface DecodePlan {
  algorithm: CompressionAlgorithm | null;
  encryptionKeyId: string | null;
}

/** What the metadata says to do; throws on an unknown algorithm. */
export function decodePlan(metadata: Metadata): DecodePlan {
  const algorithm = metadata[COMPRESSION_ALGORITHM_KEY] || null;
  if (algorithm !== null && !(COMPRESSION_ALGORITHMS as readonly string[]).includes(algorithm)) {
    throw new FileFormatError(`invalid compression algorithm '${algorithm}'`);
  }
  return {
    algorithm: algorithm as CompressionAlgorithm | null,
    encryptionKeyId: metadata[ENCRYPTION_KEY_ID_KEY] || null,
  };
}

function compressor(algorithm: CompressionAlgorithm, level: number, zstdThreads: number): Codec {
  switch (algorithm) {
    case "snappy":
      return new SnappyFrameEncoder();
    case "zstd":
      return new ZstdEncoder(level, zstdThreads);
    case "lzma":
      return new LzmaEncoder(level);
  }
}

function decompressor(algorithm: CompressionAlgorithm): Codec {
  switch (algorithm) {
    case "snappy":
      return new SnappyFrameDecoder();
    case "zstd":
      return new ZstdDecoder();
    case "lzma":
      return new LzmaDecoder();
  }
}

class Identity implements Codec {
  *update(chunk: Buffer): Iterable<Buffer> {
    if (chunk.length > 0) yield chunk;
  }
  *final(): Iterable<Buffer> {}
}

class Chain implements Codec {
  constructor(
    private readonly first: Codec,
    private readonly second: Codec,
  ) {}
  *update(chunk: Buffer): Iterable<Buffer> {
    for (const piece of this.first.update(chunk)) yield* this.second.update(piece);
  }
  *final(): Iterable<Buffer> {
    for (const piece of this.first.final()) yield* this.second.update(piece);
    yield* this.second.final();
  }
}

/**
 * Decrypt → decompress. Decompressing unauthenticated bytes of a tampered file fails before the
 * HMAC can be checked; the rest is then only authenticated, so the caller gets the IntegrityError
 * (the real cause) rather than a misleading codec error.
 */
class DecryptThenDecompress implements Codec {
  private decompressError: unknown = null;

  constructor(
    private readonly decryptor: Codec,
    private readonly decompressor: Codec,
  ) {}

  *update(chunk: Buffer): Iterable<Buffer> {
    for (const piece of this.decryptor.update(chunk)) {
      if (this.decompressError === null) yield* this.guard(() => this.decompressor.update(piece));
    }
  }

  *final(): Iterable<Buffer> {
    for (const piece of this.decryptor.final()) {
      if (this.decompressError === null) yield* this.guard(() => this.decompressor.update(piece));
    }
    if (this.decompressError !== null) throw this.decompressError;
    yield* this.decompressor.final();
  }

  private *guard(run: () => Iterable<Buffer>): Iterable<Buffer> {
    try {
      yield* run();
    } catch (err) {
      if (err instanceof IntegrityError) throw err;
      this.decompressError = err;
    }
  }
}

export function validateEncodeOptions(opts: EncodeOptions): void {
  if (opts.algorithm !== null && !(COMPRESSION_ALGORITHMS as readonly string[]).includes(opts.algorithm)) {
    throw new FileFormatError(`invalid compression algorithm '${String(opts.algorithm)}'`);
  }
  if (opts.encryptionKeyId && !opts.publicKeyPem) {
    throw new FileFormatError(`encryption key '${opts.encryptionKeyId}' has no public key`);
  }
}

export function createEncoder(opts: EncodeOptions): Codec {
  validateEncodeOptions(opts);
  const compress = opts.algorithm ? compressor(opts.algorithm, opts.level, opts.zstdThreads ?? 0) : null;
  const encrypt = opts.encryptionKeyId ? new Encryptor(loadPublicKey(opts.publicKeyPem!)) : null;
  if (compress && encrypt) return new Chain(compress, encrypt);
  return compress ?? encrypt ?? new Identity();
}

export function createDecoder(metadata: Metadata, keys: PrivateKeyLookup): Codec {
  const plan = decodePlan(metadata);
  let decrypt: Codec | null = null;
  if (plan.encryptionKeyId !== null) {
    const pem = keys(plan.encryptionKeyId);
    if (!pem) throw new KeyNotFoundError(plan.encryptionKeyId);
    decrypt = new Decryptor(loadPrivateKey(pem));
  }
  const decompress = plan.algorithm ? decompressor(plan.algorithm) : null;
  if (decrypt && decompress) return new DecryptThenDecompress(decrypt, decompress);
  return decrypt ?? decompress ?? new Identity();
}

/** Runs a codec over a whole buffer (main thread; for small data). */
export function runCodec(codec: Codec, data: Buffer): Buffer {
  const out: Buffer[] = [];
  for (const piece of codec.update(data)) out.push(piece);
  for (const piece of codec.final()) out.push(piece);
  return Buffer.concat(out);
}
