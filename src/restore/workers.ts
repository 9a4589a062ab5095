/**
 * Main-thread side of the object workers: a fixed set of worker threads, one object at a time
 * each. A worker whose object is aborted (stall, another object failed, Ctrl-C) is terminated
 * and replaced, so nothing keeps writing after the restore gave up.
 */
import type { Worker } from "node:worker_threads";

import type { ObjectStorageConfig } from "../storage/index.js";
import type { ObjectJob } from "./object_job.js";
import type { WorkerJobMessage, WorkerReply } from "./object_worker.js";
import type { RestoreTarget } from "./target.js";
import { spawnObjectWorker, takePrestartedWorker } from "./worker_prestart.js";

export interface WorkerRunOptions {
  job: ObjectJob;
  storageConfig: ObjectStorageConfig;
  onBytes: (bytes: number) => void;
  signal: AbortSignal;
}

interface Slot {
  worker: Worker;
  busy: boolean;
}

/** Rebuilds an error sent by a worker, keeping its class name for classification. */
function reviveError(wire: { name: string; message: string; code?: string }): Error {
  const err = new Error(wire.message) as NodeJS.ErrnoException;
  err.name = wire.name;
  if (wire.code) err.code = wire.code;
  return err;
}

export class ObjectWorkers {
  private readonly slots: Slot[] = [];
  private readonly waiting: Array<(slot: Slot) => void> = [];
  private readonly terminating = new Set<Promise<number>>();
  private nextId = 1;

  constructor(
    private readonly size: number,
    private readonly target: RestoreTarget,
    private readonly keys: Record<string, string>,
  ) {}

  private spawn(): Slot {
    // One started at process start-up (pghoard_restore) is already loaded, or nearly.
    const worker = takePrestartedWorker() ?? spawnObjectWorker();
    const slot: Slot = { worker, busy: false };
    this.slots.push(slot);
    return slot;
  }

  private acquire(): Promise<Slot> {
    const idle = this.slots.find((s) => !s.busy);
    if (idle) {
      idle.busy = true;
      return Promise.resolve(idle);
    }
    if (this.slots.length < this.size) {
      const slot = this.spawn();
      slot.busy = true;
      return Promise.resolve(slot);
    }
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  private release(slot: Slot): void {
    const next = this.waiting.shift();
    if (next) next(slot);
    else slot.busy = false;
  }

  private replace(slot: Slot): void {
    const done = slot.worker.terminate();
    this.terminating.add(done);
    void done.finally(() => this.terminating.delete(done));
    const index = this.slots.indexOf(slot);
    if (index >= 0) this.slots.splice(index, 1);
    const next = this.waiting.shift();
    if (next) {
      const fresh = this.spawn();
      fresh.busy = true;
      next(fresh);
    }
  }

  async run(opts: WorkerRunOptions): Promise<void> {
    const slot = await this.acquire();
    const id = this.nextId++;
    const { worker } = slot;
    let settled = false;
    try {
      await new Promise<void>((resolve, reject) => {
        const finish = (err?: Error): void => {
          if (settled) return;
          settled = true;
          worker.off("message", onMessage);
          worker.off("error", onError);
          worker.off("exit", onExit);
          opts.signal.removeEventListener("abort", onAbort);
          if (err) reject(err);
          else resolve();
        };
        const onMessage = (reply: WorkerReply): void => {
          if (reply.id !== id) return;
          if (reply.type === "progress") opts.onBytes(reply.bytes);
          else if (reply.type === "done") {
            try {
              this.target.adoptDeferred(reply.deferred);
              finish();
            } catch (err) {
              finish(err as Error);
            }
          } else finish(reviveError(reply.error));
        };
        const onError = (err: Error): void => finish(err);
        const onExit = (code: number): void => finish(new Error(`restore worker exited with code ${code}`));
        const onAbort = (): void => {
          const reason = opts.signal.reason as unknown;
          finish(reason instanceof Error ? reason : new Error("aborted"));
        };
        if (opts.signal.aborted) return onAbort();
        opts.signal.addEventListener("abort", onAbort, { once: true });
        worker.on("message", onMessage);
        worker.on("error", onError);
        worker.on("exit", onExit);
        const message: WorkerJobMessage = {
          type: "job",
          id,
          job: opts.job,
          storageConfig: opts.storageConfig,
          keys: this.keys,
          pgdata: this.target.pgdata,
          tablespaces: this.target.tablespaces,
          delta: this.target.delta,
        };
        worker.postMessage(message);
      });
      this.release(slot);
    } catch (err) {
      // The worker may still be writing (aborted) or be in an unknown state (error): replace it.
      this.replace(slot);
      throw err;
    }
  }

  /** Stops every worker; resolves once none can write anymore. */
  async close(): Promise<void> {
    const slots = this.slots.splice(0);
    await Promise.all([...slots.map((s) => s.worker.terminate()), ...this.terminating]);
  }
}
