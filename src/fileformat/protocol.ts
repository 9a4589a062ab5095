/** Messages between FileFormatPool (main thread) and its workers. Buffers travel as transferred ArrayBuffers. */
import type { MessagePort } from "node:worker_threads";
import type { WireError } from "./errors.js";
import type { EncodeFileResult, EncodeOptions, Metadata } from "./types.js";

export type EncodeTaskOptions = EncodeOptions & { hashAlgorithm?: string };

/** Input batches and output messages are about this size (copies into transferable buffers). */
export const TRANSFER_CHUNK = 1024 * 1024;

/**
 * `hashOffThread`: a large plaintext may be hashed in the worker's hasher thread, overlapping the
 * codec (lower latency when cores are idle); false hashes in the worker itself (less CPU in all:
 * no chunk round trips, read buffers stay reused), which the pool asks for when it is busy.
 */
export type TaskRequest =
  | { kind: "encodeFile"; src: string; dst: string; opts: EncodeTaskOptions; hashOffThread?: boolean }
  | { kind: "encodeFileToBuffer"; src: string; opts: EncodeTaskOptions; hashOffThread?: boolean }
  | { kind: "decodeFile"; src: string; dst: string; metadata: Metadata; privateKeyPem: string | null };

export type StreamSpec =
  /**
   * `outputPath`: the worker writes the stored bytes to this file (created or truncated) instead
   * of sending them to the main thread; the stream's readable side then ends without data.
   */
  | { mode: "encode"; opts: EncodeTaskOptions; outputPath?: string }
  | { mode: "decode"; metadata: Metadata; privateKeyPem: string | null };

export interface TaskResult extends Partial<EncodeFileResult> {
  size?: number;
  /** encodeFileToBuffer: stored bytes (exactly the whole ArrayBuffer) */
  data?: ArrayBuffer;
}

export type ToWorker =
  | { type: "task"; id: number; task: TaskRequest }
  /** `stripes`: snappy encode striped with the helper at the port's other end (striped.ts). */
  | { type: "open"; id: number; spec: StreamSpec; stripes?: MessagePort }
  /** Serve snappy ranges to a striped stream's leader on another worker. */
  | { type: "stripeHelper"; port: MessagePort }
  | { type: "data"; id: number; data: ArrayBuffer; length: number }
  | { type: "end"; id: number }
  | { type: "credit"; id: number; bytes: number }
  | { type: "abort"; id: number };

export type FromWorker =
  | { type: "taskDone"; id: number; result: TaskResult }
  | { type: "taskError"; id: number; error: WireError }
  | { type: "out"; id: number; data: ArrayBuffer; length: number }
  /** `spare`: the batch before the one just taken, consumed: a buffer for the main thread to reuse. */
  | { type: "ack"; id: number; spare?: ArrayBuffer }
  /** An input batch a stripe helper consumed, for reuse (see `ack`). */
  | { type: "spare"; data: ArrayBuffer }
  | { type: "done"; id: number; result: EncodeFileResult }
  | { type: "error"; id: number; error: WireError };

/** Pool worker → its hasher thread (chunk buffers are transferred). */
export type ToHasher =
  | { type: "start"; id: number; algorithm: string }
  | { type: "chunk"; id: number; data: ArrayBuffer; length: number }
  | { type: "digest"; id: number }
  | { type: "discard"; id: number };

/** Hasher thread → pool worker: spare chunk buffers back, digests, errors. */
export type FromHasher =
  | { type: "spare"; id: number; data: ArrayBuffer }
  | { type: "digest"; id: number; hex: string }
  | { type: "error"; id: number; error: WireError };

/** Striped snappy: leader → helper, a range of a transferred input batch (whole 64 KiB blocks). */
export interface ToStripeHelper {
  seq: number;
  data: ArrayBuffer;
  offset: number;
  length: number;
}

/** Helper → leader: the range's data chunks (no identifier), or why not. */
export interface FromStripeHelper {
  seq: number;
  data: ArrayBuffer;
  length: number;
  error?: WireError;
}
