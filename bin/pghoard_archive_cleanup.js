#!/usr/bin/env node
"use strict";
import("../dist/src/commands/archive_cleanup.js").then(async ({ main }) => {
  process.exitCode = await main(process.argv.slice(2));
});
