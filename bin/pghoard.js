#!/usr/bin/env node
"use strict";
// libuv fixes its thread pool size at first use, and an ES module entry is read through the pool
// before its body runs: so these wrappers are CommonJS (bin/package.json) and set it first.
// Object transfers, fsyncs and file reads share the pool; give it room for several at once.
process.env.UV_THREADPOOL_SIZE ??= "16";
import("../dist/src/commands/pghoard.js").then(async ({ main }) => {
  process.exit(await main(process.argv.slice(2)));
});
