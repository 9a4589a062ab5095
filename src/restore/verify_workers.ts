/**
 * Main-thread side of the verify workers: `size` threads, jobs handed out round robin (callers
 * bound how many run at once). A worker that dies fails only its own jobs and is replaced.
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

interface Slot {
  worker: Worker;
  pending: Map<number, Pending>;
}

export class VerifyWorkers {
  private readonly slots: Slot[] = [];
  private nextId = 1;
  private next = 0;
  private closed = false;

  constructor(
    size: number,
    private readonly keys: Record<string, string>,
  ) {
    for (let i = 0; i < Math.max(1, size); i += 1) this.slots.push(this.spawn());
  }

  private spawn(): Slot {
    const slot: Slot = { worker: new Worker(WORKER_URL), pending: new Map() };
    slot.worker.on("message", (reply: VerifyWorkerReply) => this.onReply(slot, reply));
    const die = (err: Error): void => {
      for (const p of slot.pending.values()) p.reject(err);
      slot.pending.clear();
      const index = this.slots.indexOf(slot);
      if (index >= 0 && !this.closed) this.slots[index] = this.spawn();
    };
    slot.worker.on("error", die);
    slot.worker.on("exit", (code) => die(new Error(`verify worker exited with code ${code}`)));
    return slot;
  }

  private onReply(slot: Slot, reply: VerifyWorkerReply): void {
    const p = slot.pending.get(reply.id);
    if (!p) return;
    if (reply.type === "progress") return p.onBytes(reply.bytes);
    slot.pending.delete(reply.id);
    if (reply.type === "done") p.resolve(reply.result);
    else {
      const err = new Error(reply.error.message);
      err.name = reply.error.name;
      p.reject(err);
    }
  }

  run(
    job: VerifyJob,
    storageConfig: ObjectStorageConfig,
    onBytes: (bytes: number) => void,
  ): Promise<VerifyObjectResult> {
    const id = this.nextId++;
    const slot = this.slots[this.next++ % this.slots.length];
    return new Promise((resolve, reject) => {
      slot.pending.set(id, { resolve, reject, onBytes });
      slot.worker.postMessage({ id, job, storageConfig, keys: this.keys } satisfies VerifyJobMessage);
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.slots.splice(0).map((s) => s.worker.terminate()));
  }
}
