/**
 * pghoard_restore with its stdout a pipe whose reader is gone (`… | head -1`, `… | true`): output
 * errors (EPIPE) neither abort nor corrupt the restore; it completes and exits 0.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { describe, it } from "node:test";
import { promisify } from "node:util";
import { hasShared, repoRoot } from "../helpers/paths.js";
import { makeTempDir } from "../helpers/pgcluster.js";
import {
  directoryManifest,
  pghoardMadeDir,
  sortManifest,
  writeFixtureConfig,
  type ManifestEntry,
} from "../restore/helpers.js";

const SET = "snappy-plain-basic";
const skip = hasShared && existsSync(path.join(pghoardMadeDir, SET)) ? false : "shared fixtures absent";
const restoreBin = path.join(repoRoot, "bin", "pghoard_restore.js");

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, "'\\''")}'`;
}

/** Runs `pghoard_restore <args> | <reader>` in bash; resolves with pghoard_restore's own exit status and stderr. */
async function restoreIntoPipe(args: string[], reader: string): Promise<{ code: number; stderr: string }> {
  const command = [process.execPath, restoreBin, ...args].map(shellQuote).join(" ");
  const script = `${command} 2>"$ERRFILE" | ${reader}; exit \${PIPESTATUS[0]}`;
  const work = await makeTempDir("restore-pipe-err");
  const errFile = path.join(work, "stderr");
  try {
    await promisify(execFile)("bash", ["-c", script], { env: { ...process.env, ERRFILE: errFile } });
    return { code: 0, stderr: await readFile(errFile, "utf8") };
  } catch (err) {
    const e = err as { code?: number };
    if (typeof e.code !== "number") throw err;
    return { code: e.code, stderr: await readFile(errFile, "utf8").catch(() => "") };
  }
}

describe("pghoard_restore with a closed stdout", { skip, timeout: 300_000 }, () => {
  for (const reader of ["head -1", "true"]) {
    it(`get-basebackup | ${reader}: the restore completes, exit 0`, async () => {
      const work = await makeTempDir("restore-pipe");
      const config = await writeFixtureConfig(SET, work);
      const target = path.join(work, "pgdata");
      const result = await restoreIntoPipe(
        ["get-basebackup", "--config", config, "--target-dir", target, "--recovery-target-action", "promote"],
        reader,
      );
      assert.equal(result.code, 0, result.stderr);
      assert.doesNotMatch(result.stderr, /EPIPE|Error/);
      const expected = JSON.parse(
        await readFile(path.join(pghoardMadeDir, SET, "restored-manifest-restore1.json"), "utf8"),
      ) as ManifestEntry[];
      const withoutAutoConf = (entries: ManifestEntry[]): ManifestEntry[] =>
        sortManifest(entries).filter((e) => e.path !== "postgresql.auto.conf");
      assert.deepEqual(withoutAutoConf(await directoryManifest(target)), withoutAutoConf(expected));
      assert.match(await readFile(path.join(target, "postgresql.auto.conf"), "utf8"), /restore_command = /);
    });
  }
});
