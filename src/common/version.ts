/**
 * The package version, from the package.json above this module (dist/src/common → the repository
 * or the installed package root): the one place it is written is package.json itself.
 */
import { readFileSync } from "node:fs";
import path from "node:path";

let cached: string | undefined;

/** Read on first use only: pghoard_postgres_command runs once per WAL segment and rarely needs it. */
export function packageVersion(): string {
  if (cached !== undefined) return cached;
  let dir = import.meta.dirname;
  for (;;) {
    try {
      const pkg = JSON.parse(readFileSync(path.join(dir, "package.json"), "utf8")) as { version?: unknown };
      if (typeof pkg.version === "string" && pkg.version) return (cached = pkg.version);
    } catch {
      // no (readable) package.json here: keep walking up
    }
    const parent = path.dirname(dir);
    if (parent === dir) return (cached = "unknown");
    dir = parent;
  }
}
