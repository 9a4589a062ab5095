/** pghoard's stored file format (rohmu compatible): compression, encryption, worker pool. */
export type { CompressionAlgorithm, EncodeOptions, PrivateKeyLookup, EncodeFileResult, Codec, Metadata } from "./types.js";
export { COMPRESSION_ALGORITHMS } from "./types.js";
export { FileFormatError, IntegrityError, KeyNotFoundError } from "./errors.js";
export {
  encodingMetadata,
  decodePlan,
  createEncoder,
  createDecoder,
  COMPRESSION_ALGORITHM_KEY,
  ENCRYPTION_KEY_ID_KEY,
  type DecodePlan,
} from "./pipeline.js";
export { createEncodeStream, createDecodeStream, encodeBuffer, decodeBuffer, CodecDuplex } from "./streams.js";
export { nodeHashName } from "./hash.js";
export { FileFormatPool, type PoolEncodeStream } from "./pool.js";
export { maskedCrc32c, STREAM_IDENTIFIER as SNAPPY_STREAM_IDENTIFIER } from "./snappy.js";
export { MAGIC as ENCRYPTION_MAGIC, loadPrivateKey, loadPublicKey } from "./crypto.js";
