/**
 * pghoard's stored file format, byte-compatible with upstream rohmu (spec: ../shared/spec/file-format.md).
 *
 * - Write = compress then encrypt; read = decrypt then decompress, decided only by the metadata
 *   keys `compression-algorithm` and `encryption-key-id` (see `encodingMetadata`).
 * - Integrity: an encrypted object is authenticated only at its end (HMAC trailer). Decode
 *   STREAMS therefore emit plaintext before verification and fail with IntegrityError at the
 *   end: consumers must treat output as valid only once the stream finished without error.
 *   `FileFormatPool.decodeFile` does this for you (temp file, renamed only after verification).
 * - Errors: FileFormatError for anything wrong with the data or options; IntegrityError
 *   (message "Integrity check failed: ...") for bad magic, truncation, wrong key or HMAC mismatch;
 *   KeyNotFoundError ("File is encrypted with key '<id>' but key not found").
 * - CPU work: `FileFormatPool` runs it in worker threads (files by path; streams in ~1 MiB
 *   transferred batches with bounded buffering). The plain `createEncodeStream` /
 *   `createDecodeStream` / `encodeBuffer` / `decodeBuffer` run on the calling thread: small data only.
 */
export type {
  CompressionAlgorithm,
  EncodeOptions,
  PrivateKeyLookup,
  EncodeFileResult,
  Codec,
  Metadata,
} from "./types.js";
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
export { hashLocalFile, nodeHashName } from "./hash.js";
export { FileFormatPool, type PoolEncodeStream } from "./pool.js";
export { maskedCrc32c, STREAM_IDENTIFIER as SNAPPY_STREAM_IDENTIFIER } from "./snappy.js";
export { MAGIC as ENCRYPTION_MAGIC, loadPrivateKey, loadPublicKey } from "./crypto.js";
