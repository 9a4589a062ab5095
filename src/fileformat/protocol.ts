/** Messages between FileFormatPool (main thread) and its workers. Buffers travel as transferred ArrayBuffers. */
import type { WireError } from "./errors.js";
import type { EncodeFileResult, EncodeOptions, Metadata } from "./types.js";

export type EncodeTaskOptions = EncodeOptions & { hashAlgorithm?: string };

/** Input batches and output messages are about this size (copies into transferable buffers). */
export const TRANSFER_CHUNK = 1024 * 1024;

export type TaskRequest =
  | { kind: "encodeFile"; src: string; dst: string; opts: EncodeTaskOptions }
  | { kind: "encodeFileToBuffer"; src: string; opts: EncodeTaskOptions }
  | { kind: "decodeFile"; src: string; dst: string; metadata: Metadata; privateKeyPem: string | null };

export type StreamSpec =
  { mode: "encode"; opts: EncodeTaskOptions } | { mode: "decode"; metadata: Metadata; privateKeyPem: string | null };

export interface TaskResult extends Partial<EncodeFileResult> {
  size?: number;
  /** encodeFileToBuffer: stored bytes (exactly the whole ArrayBuffer) */
  data?: ArrayBuffer;
}

export type ToWorker =
  | { type: "task"; id: number; task: TaskRequest }
  | { type: "open"; id: number; spec: StreamSpec }
  | { type: "data"; id: number; data: ArrayBuffer; length: number }
  | { type: "end"; id: number }
  | { type: "credit"; id: number; bytes: number }
  | { type: "abort"; id: number };

export type FromWorker =
  | { type: "taskDone"; id: number; result: TaskResult }
  | { type: "taskError"; id: number; error: WireError }
  | { type: "out"; id: number; data: ArrayBuffer; length: number }
  | { type: "ack"; id: number }
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
