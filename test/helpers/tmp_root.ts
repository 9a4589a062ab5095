/**
 * Loaded into every test file's process (`node --test --import`): points TMPDIR at a directory of
 * that process's own and removes it when the process exits. Clusters, stores, spools and restore
 * targets of a test file then go with it, whether or not a test cleaned up after itself, and so do
 * those of its children (daemons, PostgreSQL, the object-store servers), which inherit TMPDIR.
 * Without this a run left about 4 GB in /tmp, which a CI machine short of disk may not have.
 */
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";

const root = mkdtempSync(path.join(os.tmpdir(), "pghoard-tests-"));
// Like /tmp: PostgreSQL and the daemons run as `postgres` when the tests run as root.
chmodSync(root, 0o1777);
process.env.TMPDIR = root;
process.once("exit", () => {
  try {
    rmSync(root, { recursive: true, force: true, maxRetries: 3 });
  } catch (err) {
    process.stderr.write(`could not remove the test file's temp directory ${root}: ${String(err)}\n`);
  }
});
