import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { installedClientPath } from "../../src/common/install_paths.js";

// Compiled tests live in dist/test/helpers, sources in test/helpers: walk up to package.json.
function findRepoRoot(start: string): string {
  let dir = start;
  while (!existsSync(path.join(dir, "package.json"))) {
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`package.json not found above ${start}`);
    dir = parent;
  }
  return dir;
}

export const repoRoot = findRepoRoot(path.dirname(fileURLToPath(import.meta.url)));
/** `../shared` beside the checkout (CI has it there); tests needing it skip when absent. */
export const sharedDir = process.env.PGHOARD_SHARED_DIR ?? path.resolve(repoRoot, "..", "shared");
export const hasShared = existsSync(path.join(sharedDir, "fixtures"));
export const fixturesDir = path.join(repoRoot, "test", "fixtures");
/** The restore_command client the checkout installs (the native front where built, else bash). */
export const installedClientBin = installedClientPath();
