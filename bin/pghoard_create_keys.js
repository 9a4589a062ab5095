#!/usr/bin/env node
"use strict";
import("../dist/src/commands/create_keys.js").then(async ({ main }) => {
  process.exitCode = await main(process.argv.slice(2));
});
