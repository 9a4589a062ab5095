/** The version matrix (scenario.ts) on PostgreSQL 16. */
import { versionMatrix } from "./scenario.js";

versionMatrix(16);
