/**
 * Worker thread that restores whole objects: storage read stream → decode stream (decrypt +
 * decompress, fileformat) → tar extractor / file writer, all inside this thread. Decompressed
 * bytes never cross a thread boundary, so per-object memory stays at the stream buffers and the
 * main thread only schedules and reports progress. Archive symlinks, directory attributes and
 * the held-back pg_control are reported back; the main thread applies them once every object
 * has been restored.
 */
import { parentPort } from "node:worker_threads";

import { createStorage, type ObjectStorageConfig } from "../storage/index.js";
import type { StorageBackend } from "../storage/types.js";
import { createDecodeStream } from "../fileformat/streams.js";
import { restoreObject, type ObjectJob } from "./object_job.js";
import { RestoreTarget } from "./target.js";

export interface WorkerJobMessage {
  type: "job";
  id: number;
  job: ObjectJob;
  storageConfig: ObjectStorageConfig;
  /** keyId → private key PEM (only the keys of the sites being restored). */
  keys: Record<string, string>;
  pgdata: string;
  tablespaces: Array<{ name: string; oid: number; path: string }>;
  /** `--delta`: compare with the existing files (see RestoreTarget). */
  delta: boolean;
}

export type WorkerReply =
  | { type: "progress"; id: number; bytes: number }
  | { type: "done"; id: number; deferred: ReturnType<RestoreTarget["exportDeferred"]> }
  | { type: "error"; id: number; error: { name: string; message: string; code?: string } };

const port = parentPort;
if (!port) throw new Error("object_worker.js must run in a worker thread");

const storages = new Map<string, Promise<StorageBackend>>();

function storageFor(config: ObjectStorageConfig): Promise<StorageBackend> {
  const key = JSON.stringify(config);
  let storage = storages.get(key);
  if (!storage) {
    storage = createStorage(config);
    storages.set(key, storage);
  }
  return storage;
}

/** Progress is reported in ≥ 1 MiB steps (and at the end) to keep messages cheap. */
const PROGRESS_STEP = 1024 * 1024;

async function runJob(message: WorkerJobMessage): Promise<void> {
  const target = new RestoreTarget(message.pgdata, message.tablespaces, { delta: message.delta });
  let unreported = 0;
  const onBytes = (bytes: number): void => {
    unreported += bytes;
    if (unreported >= PROGRESS_STEP) {
      port!.postMessage({ type: "progress", id: message.id, bytes: unreported } satisfies WorkerReply);
      unreported = 0;
    }
  };
  try {
    const storage = await storageFor(message.storageConfig);
    await restoreObject(message.job, {
      storage,
      target,
      createDecodeStream: (metadata) => createDecodeStream(metadata, (keyId) => message.keys[keyId]),
      onBytes,
    });
    if (unreported > 0)
      port!.postMessage({ type: "progress", id: message.id, bytes: unreported } satisfies WorkerReply);
    port!.postMessage({ type: "done", id: message.id, deferred: target.exportDeferred() } satisfies WorkerReply);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    port!.postMessage({
      type: "error",
      id: message.id,
      error: {
        name: e?.name ?? "Error",
        message: e?.message ?? String(err),
        code: typeof e?.code === "string" ? e.code : undefined,
      },
    } satisfies WorkerReply);
  }
}

port.on("message", (message: WorkerJobMessage) => {
  if (message.type === "job") void runJob(message);
});
