/** The version matrix (scenario.ts) on PostgreSQL 14. */
import { versionMatrix } from "./scenario.js";

versionMatrix(14);
