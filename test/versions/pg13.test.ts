/** The version matrix (scenario.ts) on PostgreSQL 13. */
import { versionMatrix } from "./scenario.js";

versionMatrix(13);
