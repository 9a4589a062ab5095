/**
 * Worker thread of `pghoard_restore verify`: verifies whole objects (read, decrypt, decompress,
 * check) inside this thread, so decoded bytes never cross a thread boundary and the main thread
 * only schedules and reports.
 */
import { parentPort } from "node:worker_threads";

import { createStorage, type ObjectStorageConfig } from "../storage/index.js";
import type { StorageBackend } from "../storage/types.js";
import { verifyObject, type VerifyJob, type VerifyObjectResult } from "./verify_object.js";

export interface VerifyJobMessage {
  id: number;
  job: VerifyJob;
  storageConfig: ObjectStorageConfig;
  /** keyId → private key PEM (only the keys of the sites being verified). */
  keys: Record<string, string>;
}

export type VerifyWorkerReply =
  | { type: "progress"; id: number; bytes: number }
  | { type: "done"; id: number; result: VerifyObjectResult }
  | { type: "error"; id: number; error: { name: string; message: string } };

const port = parentPort;
if (!port) throw new Error("verify_worker.js must run in a worker thread");

const storages = new Map<string, Promise<StorageBackend>>();
const PROGRESS_STEP = 1024 * 1024;

async function run(message: VerifyJobMessage): Promise<void> {
  let unreported = 0;
  const flush = (): void => {
    if (unreported > 0)
      port!.postMessage({ type: "progress", id: message.id, bytes: unreported } satisfies VerifyWorkerReply);
    unreported = 0;
  };
  try {
    const configKey = JSON.stringify(message.storageConfig);
    if (!storages.has(configKey)) storages.set(configKey, createStorage(message.storageConfig));
    const result = await verifyObject(message.job, {
      storage: await storages.get(configKey)!,
      keys: (keyId) => message.keys[keyId],
      onBytes: (bytes) => {
        unreported += bytes;
        if (unreported >= PROGRESS_STEP) flush();
      },
    });
    flush();
    port!.postMessage({ type: "done", id: message.id, result } satisfies VerifyWorkerReply);
  } catch (err) {
    const e = err as Error;
    port!.postMessage({
      type: "error",
      id: message.id,
      error: { name: e?.name ?? "Error", message: e?.message ?? String(err) },
    } satisfies VerifyWorkerReply);
  }
}

port.on("message", (message: VerifyJobMessage) => void run(message));
