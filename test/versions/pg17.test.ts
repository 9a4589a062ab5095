/** The version matrix (scenario.ts) on PostgreSQL 17. */
import { versionMatrix } from "./scenario.js";

versionMatrix(17);
