#!/usr/bin/env node
import { main } from "../dist/src/commands/restore.js";

process.exitCode = await main(process.argv.slice(2));
