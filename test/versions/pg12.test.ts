/** The version matrix (scenario.ts) on PostgreSQL 12. */
import { versionMatrix } from "./scenario.js";

versionMatrix(12);
