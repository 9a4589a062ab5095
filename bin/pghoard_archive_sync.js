#!/usr/bin/env node
"use strict";
import("../dist/src/commands/archive_sync.js").then(async ({ main }) => {
  process.exitCode = await main(process.argv.slice(2));
});
