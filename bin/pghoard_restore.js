#!/usr/bin/env node
// Object workers read and write files through libuv's thread pool, shared by the whole process:
// give it room for several objects at once. Must be set before anything uses the pool.
process.env.UV_THREADPOOL_SIZE ??= "16";
const { main } = await import("../dist/src/commands/restore.js");

process.exitCode = await main(process.argv.slice(2));
