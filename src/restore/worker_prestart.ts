/**
 * Object worker threads started before the restore command has loaded: a worker's own start-up
 * (a Node environment, the codecs, the tar extractor) then runs on the other core while the main
 * thread loads the CLI, the configuration and the backup list, instead of after them. Only
 * `node:worker_threads` is imported here, so the `pghoard_restore` entry can load this first.
 */
import { Worker } from "node:worker_threads";

export const OBJECT_WORKER_URL = new URL("./object_worker.js", import.meta.url);

const started: Worker[] = [];

/** A new object worker; unref'd, so an idle one never keeps the process alive. */
export function spawnObjectWorker(): Worker {
  const worker = new Worker(OBJECT_WORKER_URL);
  worker.unref();
  return worker;
}

/** Starts `count` object workers now, to be taken by the restore (see takePrestartedWorker). */
export function prestartObjectWorkers(count = 1): void {
  for (let i = 0; i < count; i++) {
    const worker = spawnObjectWorker();
    // One that fails to start is dropped; the restore then spawns its own and sees that error.
    worker.once("error", () => {
      const index = started.indexOf(worker);
      if (index >= 0) started.splice(index, 1);
    });
    started.push(worker);
  }
}

/** A worker started by prestartObjectWorkers that nobody has taken yet. */
export function takePrestartedWorker(): Worker | undefined {
  return started.shift();
}
