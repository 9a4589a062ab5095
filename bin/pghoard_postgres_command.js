#!/usr/bin/env node
"use strict";
// PostgreSQL runs this once per WAL segment: keep it to the one import below (node built-ins only behind it).
import("../dist/src/commands/postgres_command.js").then(async ({ main }) => {
  process.exitCode = await main(process.argv.slice(2));
});
