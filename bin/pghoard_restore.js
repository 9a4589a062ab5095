#!/usr/bin/env node
"use strict";
// libuv fixes its thread pool size at first use, and an ES module entry is read through the pool
// before its body runs: so these wrappers are CommonJS (bin/package.json) and set it first.
// Object transfers, fsyncs and file reads share the pool; give it room for several at once.
process.env.UV_THREADPOOL_SIZE ??= "16";
// get-basebackup: its first object worker starts now, loading on the other core while this
// thread loads the command (CLI, configuration, backup list) instead of after it.
const prestart = process.argv.includes("get-basebackup")
  ? import("../dist/src/restore/worker_prestart.js").then(
      (m) => m.prestartObjectWorkers(1),
      () => undefined, // the restore then starts its own worker, and reports any error itself
    )
  : Promise.resolve();
prestart
  .then(() => import("../dist/src/commands/restore.js"))
  .then(async ({ main }) => {
    process.exitCode = await main(process.argv.slice(2));
  });
