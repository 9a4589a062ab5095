/**
 * Downloads, decodes and extracts the objects of one restore in parallel. Each object is one
 * stream: storage read stream → byte counter (progress) → decode stream (worker thread:
 * decrypt + decompress) → tar extractor or file writer, so memory stays bounded by the stream
 * buffers of `concurrency` objects. A corrupt object stops the whole restore with an error
 * naming it; transient storage errors and stalls are retried.
 */
import { Readable, type Duplex } from "node:stream";
import { pipeline } from "node:stream/promises";

import type { Metadata } from "../storage/types.js";
import { RestoreError, describeError } from "./errors.js";
import { restoreObject, type ObjectJob } from "./object_job.js";
import type { RestoreItem } from "./plan.js";
import { createTarExtractor, tarRulesForFormat } from "./tar_extract.js";
import type { RestoreTarget } from "./target.js";
import type { ObjectWorkers } from "./workers.js";

export interface ProgressSnapshot {
  downloaded: number;
  total: number;
  /** 0..1 */
  fraction: number;
}

/** Stored bytes read so far, per item, so a retried item does not count twice. */
export class ProgressTracker {
  readonly total: number;
  private readonly perItem: number[];
  private downloaded = 0;
  lastChange = Date.now();

  constructor(items: ReadonlyArray<{ size: number }>) {
    this.perItem = items.map(() => 0);
    this.total = items.reduce((n, item) => n + item.size, 0);
  }

  add(index: number, bytes: number): void {
    this.perItem[index] += bytes;
    this.downloaded += bytes;
    this.lastChange = Date.now();
  }

  reset(index: number): void {
    this.downloaded -= this.perItem[index];
    this.perItem[index] = 0;
  }

  /** Progress counts at most the planned size per item (stored sizes in metadata can be stale). */
  complete(index: number, plannedSize: number): void {
    this.downloaded += plannedSize - this.perItem[index];
    this.perItem[index] = plannedSize;
    this.lastChange = Date.now();
  }

  snapshot(): ProgressSnapshot {
    const downloaded = Math.min(this.downloaded, this.total);
    return { downloaded, total: this.total, fraction: this.total > 0 ? downloaded / this.total : 0 };
  }
}

export interface FetchOptions {
  target: RestoreTarget;
  items: RestoreItem[];
  /** `restore_process_count`: objects processed at the same time. */
  concurrency: number;
  /** In-process decode stream for an object's metadata (used when an item is not run by `workers`). */
  createDecodeStream: (metadata: Metadata, label: string) => Duplex;
  /** Object workers: items with a `storageConfig` are restored entirely in a worker thread. */
  workers?: ObjectWorkers;
  progress: ProgressTracker;
  /** No byte progress for this long aborts the round and retries it (upstream: 120 s, doubling to 480 s). */
  stallTimeoutMs?: number;
  /** Attempts per object for transient errors (storage/network errors, stalls). */
  maxAttempts?: number;
  signal?: AbortSignal;
}

class StallError extends Error {
  constructor(seconds: number) {
    super(`Download stalled for ${seconds} seconds`);
    this.name = "StallError";
  }
}

const TRANSIENT_CODES = new Set([
  "ECONNRESET",
  "ECONNREFUSED",
  "ETIMEDOUT",
  "EPIPE",
  "EAI_AGAIN",
  "ENOTFOUND",
  "UND_ERR_SOCKET",
]);

function isTransient(err: unknown): boolean {
  if (err instanceof StallError) return true;
  if (!(err instanceof Error)) return false;
  if (err.name === "StorageNotFoundError") return false;
  if (err.name === "StorageError") return true;
  const code = (err as NodeJS.ErrnoException).code;
  return typeof code === "string" && TRANSIENT_CODES.has(code);
}

export function itemLabel(item: RestoreItem): string {
  switch (item.kind) {
    case "tar-object":
    case "file-object":
      return item.key;
    case "tar-memory":
      return `${item.label} (control tar)`;
    case "file-memory":
      return `embedded file '${item.relativePath}'`;
  }
}

/** Error for a failed object: always names the object, says "corrupt" for integrity failures. */
function objectError(item: RestoreItem, err: unknown): RestoreError {
  const label = itemLabel(item);
  if (err instanceof RestoreError && err.message.includes(label)) return err;
  const name = err instanceof Error ? err.name : "";
  if (name === "IntegrityError" || name === "FileFormatError") {
    return new RestoreError(`Object '${label}' is corrupt or was tampered with: ${(err as Error).message}`, {
      cause: err,
    });
  }
  if (name === "StorageNotFoundError") {
    return new RestoreError(`Object '${label}' is missing from the object store`, { cause: err });
  }
  const detail = err instanceof RestoreError ? err.message : describeError(err);
  return new RestoreError(`Object '${label}': ${detail}`, { cause: err });
}

async function processItem(item: RestoreItem, index: number, opts: FetchOptions, signal: AbortSignal): Promise<void> {
  const { target, progress } = opts;
  const label = itemLabel(item);
  const onBytes = (bytes: number): void => progress.add(index, bytes);
  switch (item.kind) {
    case "tar-object":
    case "file-object": {
      const job: ObjectJob =
        item.kind === "tar-object"
          ? { kind: item.kind, key: item.key }
          : {
              kind: item.kind,
              key: item.key,
              relativePath: item.relativePath,
              hexdigest: item.hexdigest,
              fileSize: item.fileSize,
            };
      if (opts.workers && item.storageConfig) {
        await opts.workers.run({ job, storageConfig: item.storageConfig, onBytes, signal });
      } else {
        await restoreObject(job, {
          storage: item.storage,
          target,
          createDecodeStream: (metadata) => opts.createDecodeStream(metadata, label),
          onBytes,
          signal,
        });
      }
      return;
    }
    case "tar-memory": {
      const { sink } = createTarExtractor(target, tarRulesForFormat(item.format), label);
      await pipeline(Readable.from([item.data]), sink, { signal });
      return;
    }
    case "file-memory": {
      const destination = target.resolve(item.relativePath, label);
      await target.writeBuffer(destination, item.data);
      return;
    }
  }
}

/** Runs every item; resolves when all succeeded, rejects with a RestoreError naming the failed object. */
export async function fetchAll(opts: FetchOptions): Promise<void> {
  const maxAttempts = opts.maxAttempts ?? 3;
  let stallTimeoutMs = opts.stallTimeoutMs ?? 120_000;
  const attempts = opts.items.map(() => 0);
  const done = opts.items.map(() => false);
  const maxRounds = Math.max(6, Math.floor(opts.progress.total / (10 * 1024 ** 3)));
  let errors: RestoreError[] = [];

  for (let round = 0; round < maxRounds; round += 1) {
    // Largest first: a big object started last would leave the other workers idle at the end.
    const pending = opts.items
      .map((_, i) => i)
      .filter((i) => !done[i])
      .sort((a, b) => opts.items[b].size - opts.items[a].size);
    if (pending.length === 0) break;
    const controller = new AbortController();
    const onOuterAbort = (): void => controller.abort(opts.signal?.reason);
    opts.signal?.addEventListener("abort", onOuterAbort, { once: true });
    let fatal: RestoreError | undefined;
    let stalled = false;
    opts.progress.lastChange = Date.now();
    const watchdog = setInterval(
      () => {
        const idle = Date.now() - opts.progress.lastChange;
        if (idle > stallTimeoutMs) {
          stalled = true;
          controller.abort(new StallError(Math.round(idle / 1000)));
        }
      },
      Math.min(1000, stallTimeoutMs),
    );
    let next = 0;
    const worker = async (): Promise<void> => {
      while (!controller.signal.aborted && next < pending.length) {
        const index = pending[next++];
        const item = opts.items[index];
        for (;;) {
          attempts[index] += 1;
          opts.progress.reset(index);
          try {
            await processItem(item, index, opts, controller.signal);
            opts.progress.complete(index, item.size);
            done[index] = true;
            break;
          } catch (err) {
            if (controller.signal.aborted) {
              if (!stalled && !fatal) fatal = objectError(item, opts.signal?.reason ?? err);
              return;
            }
            if (isTransient(err) && attempts[index] < maxAttempts) continue;
            fatal ??= objectError(item, err);
            controller.abort(fatal);
            return;
          }
        }
      }
    };
    try {
      const workerCount = Math.max(1, Math.min(opts.concurrency, pending.length));
      await Promise.all(Array.from({ length: workerCount }, () => worker()));
    } finally {
      clearInterval(watchdog);
      opts.signal?.removeEventListener("abort", onOuterAbort);
    }
    if (fatal) {
      errors = [fatal];
      break;
    }
    if (stalled) {
      stallTimeoutMs = Math.min(stallTimeoutMs * 2, 480_000);
      continue;
    }
  }
  const remaining = done.filter((d) => !d).length;
  if (errors.length === 0 && remaining > 0) {
    errors = [new RestoreError(`Download stalled despite retries, ${remaining} objects not restored`)];
  }
  if (errors.length > 0) {
    throw new RestoreError(`Backup download/extraction failed with ${errors.length} errors: ${errors[0].message}`, {
      cause: errors[0],
    });
  }
}
