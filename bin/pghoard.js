#!/usr/bin/env node
import { main } from "../dist/src/commands/pghoard.js";

process.exit(await main(process.argv.slice(2)));
