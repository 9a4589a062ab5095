#!/usr/bin/env node
import { main } from "../dist/src/commands/create_keys.js";

process.exitCode = await main(process.argv.slice(2));
