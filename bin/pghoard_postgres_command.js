#!/usr/bin/env node
// PostgreSQL runs this once per WAL segment: keep it to the one import below (node built-ins only behind it).
import { main } from "../dist/src/commands/postgres_command.js";

process.exitCode = await main(process.argv.slice(2));
