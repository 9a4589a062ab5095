/** The version matrix (scenario.ts) on PostgreSQL 18. */
import { versionMatrix } from "./scenario.js";

versionMatrix(18);
