/**
 * Worker thread that restores whole objects: storage read stream → decode stream (decrypt +
 * decompress, fileformat) → tar extractor / file writer, all inside this thread. Decompressed
 * bytes never cross a thread boundary, so per-object memory stays at the stream buffers and the
 * main thread only schedules and reports progress. Archive symlinks, directory attributes and
 * the held-back pg_control are reported back; the main thread applies them once every object
 * has been restored.
 */
import { parentPort, type MessagePort } from "node:worker_threads";

import { createStorage, type ObjectStorageConfig } from "../storage/index.js";
import type { StorageBackend } from "../storage/types.js";
import { createDecodeStream } from "../fileformat/streams.js";
import { StripedSnappyDecodeStream, serveSnappyDecodeStripes } from "../fileformat/striped_decode.js";
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
  /** A port to another object worker that decodes snappy runs for this job (striped_decode.ts). */
  stripes?: MessagePort;
}

/** Serve snappy runs for a job running in another object worker. */
export interface WorkerStripeHelperMessage {
  type: "stripeHelper";
  port: MessagePort;
}

export type WorkerReply =
  | { type: "progress"; id: number; bytes: number }
  /** `stripedRuns`: snappy runs of this object the helper worker decoded. */
  | { type: "done"; id: number; deferred: ReturnType<RestoreTarget["exportDeferred"]>; stripedRuns: number }
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
  let striped: StripedSnappyDecodeStream | undefined;
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
      // One object, one decode stream: the stripes port goes to the first (and only) one.
      createDecodeStream: (metadata) => {
        const stripes = message.stripes;
        message.stripes = undefined;
        const stream = createDecodeStream(metadata, (keyId) => message.keys[keyId], { stripes });
        if (stream instanceof StripedSnappyDecodeStream) striped = stream;
        return stream;
      },
      onBytes,
    });
    if (unreported > 0)
      port!.postMessage({ type: "progress", id: message.id, bytes: unreported } satisfies WorkerReply);
    port!.postMessage({
      type: "done",
      id: message.id,
      deferred: target.exportDeferred(),
      stripedRuns: striped?.helperRuns ?? 0,
    } satisfies WorkerReply);
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
  } finally {
    message.stripes?.close(); // not taken by a decode stream (a kept file, or an early failure)
  }
}

port.on("message", (message: WorkerJobMessage | WorkerStripeHelperMessage) => {
  if (message.type === "job") void runJob(message);
  else if (message.type === "stripeHelper") serveSnappyDecodeStripes(message.port);
});
