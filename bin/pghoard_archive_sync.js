#!/usr/bin/env node
import { main } from "../dist/src/commands/archive_sync.js";

process.exitCode = await main(process.argv.slice(2));
