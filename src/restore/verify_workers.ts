/**
 * Main-thread side of the verify workers: `size` threads, each verifying up to two objects at a
 * time (one downloading while the other decodes); jobs queue when all are busy.
 */
import { Worker } from "node:worker_threads";

import type { ObjectStorageConfig } from "../storage/index.js";
import type { VerifyJob, VerifyObjectResult } from "./verify_object.js";
import type { VerifyJobMessage, VerifyWorkerReply } from "./verify_worker.js";

const WORKER_URL = new URL("./verify_worker.js", import.meta.url);

interface Pending {
  resolve: (result: VerifyObjectResult) => void;
  reject: (err: Error) => void;
  onBytes: (bytes: number) => void;
}

export class VerifyWorkers {
  private readonly workers: Worker[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private next = 0;

  constructor(
    size: number,
    private readonly keys: Record<string, string>,
  ) {
    for (let i = 0; i < Math.max(1, size); i += 1) {
      const worker = new Worker(WORKER_URL);
      worker.on("message", (reply: VerifyWorkerReply) => this.onReply(reply));
      const fail = (err: Error): void => {
        for (const p of this.pending.values()) p.reject(err);
        this.pending.clear();
      };
      worker.on("error", fail);
      worker.on("exit", (code) => {
        if (code !== 0) fail(new Error(`verify worker exited with code ${code}`));
      });
      this.workers.push(worker);
    }
  }

  private onReply(reply: VerifyWorkerReply): void {
    const p = this.pending.get(reply.id);
    if (!p) return;
    if (reply.type === "progress") return p.onBytes(reply.bytes);
    this.pending.delete(reply.id);
    if (reply.type === "done") p.resolve(reply.result);
    else {
      const err = new Error(reply.error.message);
      err.name = reply.error.name;
      p.reject(err);
    }
  }

  /** Runs one job on the next worker (round robin; callers bound how many run at once). */
  run(
    job: VerifyJob,
    storageConfig: ObjectStorageConfig,
    onBytes: (bytes: number) => void,
  ): Promise<VerifyObjectResult> {
    const id = this.nextId++;
    const worker = this.workers[this.next++ % this.workers.length];
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, onBytes });
      worker.postMessage({ id, job, storageConfig, keys: this.keys } satisfies VerifyJobMessage);
    });
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.splice(0).map((w) => w.terminate()));
  }
}
