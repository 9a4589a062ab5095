/** Shared helpers of the drill tests: more archived WAL, a damaged WAL object. */
import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";

import type { Scenario } from "../basebackup/helpers.js";
import { listStoredNames, switchWal, waitArchived } from "../daemon/helpers.js";

/** Writes, then completes and archives `count` more segments; returns the newest archived one. */
export async function archiveMore(s: Scenario, count: number): Promise<string> {
  let last = "";
  for (let i = 0; i < count; i++) {
    const from = 100_000 * (i + 1);
    await s.cluster.query(`INSERT INTO marker SELECT i, 'after-${i}' FROM generate_series(${from}, ${from + 99}) i`);
    last = await switchWal(s.cluster);
  }
  await waitArchived(s.cluster, last);
  return last;
}

/**
 * Flips one byte in the middle of the stored WAL segment just before `newest` (one recovery needs
 * after the backup); returns its name and the function that puts the original bytes back.
 */
export async function corruptSegmentBefore(
  s: Scenario,
  newest: string,
): Promise<{ victim: string; repair(): Promise<void> }> {
  const names = await listStoredNames(s.env.storageDir, s.site, "xlog");
  const victim = names[names.indexOf(newest) - 1];
  const file = path.join(s.env.storageDir, s.site, "xlog", victim);
  const original = await readFile(file);
  const damaged = Buffer.from(original);
  damaged[Math.floor(damaged.length / 2)] ^= 0xff;
  await writeFile(file, damaged);
  return { victim, repair: () => writeFile(file, original) };
}
