/**
 * The local store's write from memory (every WAL segment the daemon archives) under strace: the
 * data and sidecar temp files are fsync'd before either is renamed, the data file is renamed
 * before the sidecar that publishes it, and the directory is fsync'd after the last rename —
 * three fsyncs, not four (no directory fsync between the two renames).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFile, rm } from "node:fs/promises";
import path from "node:path";
import { after, describe, it } from "node:test";
import { repoRoot } from "../helpers/paths.js";
import { makeTempDir } from "../helpers/pgcluster.js";

const haveStrace = spawnSync("strace", ["-f", "-o", "/dev/null", "true"]).status === 0;

interface Call {
  kind: "fsync" | "rename";
  path: string;
  to?: string;
}

/** fsync(fd</path>) (also split by another thread's line) and rename calls, in completion order. */
function parseTrace(text: string): Call[] {
  const calls: Call[] = [];
  const pending = new Map<string, string>();
  for (const line of text.split("\n")) {
    const pid = line.split(" ", 1)[0];
    let m = /^\d+\s+f(?:data)?sync\(\d+<(.+)>\)\s+= 0/.exec(line);
    if (m) {
      calls.push({ kind: "fsync", path: m[1] });
      continue;
    }
    m = /^\d+\s+f(?:data)?sync\(\d+<(.+)> <unfinished \.\.\.>/.exec(line);
    if (m) {
      pending.set(pid, m[1]);
      continue;
    }
    if (/<\.\.\. f(?:data)?sync resumed>\)\s+= 0/.test(line) && pending.has(pid)) {
      calls.push({ kind: "fsync", path: pending.get(pid)! });
      pending.delete(pid);
      continue;
    }
    m = /rename(?:at2?)?\((?:AT_FDCWD, )?"([^"]+)", (?:AT_FDCWD, )?"([^"]+)"/.exec(line);
    if (m) calls.push({ kind: "rename", path: m[1], to: m[2] });
  }
  return calls;
}

describe(
  "local storage: a write from memory is durable with three fsyncs",
  { skip: !haveStrace && "no strace" },
  () => {
    const dirs: string[] = [];
    after(async () => {
      for (const dir of dirs) await rm(dir, { recursive: true, force: true });
    });

    it("fsyncs both temp files, renames data then sidecar, then fsyncs the directory", async () => {
      const dir = await makeTempDir("pghoard-local-durable");
      dirs.push(dir);
      const store = path.join(dir, "store");
      const tracePath = path.join(dir, "trace");
      const module = path.join(repoRoot, "dist", "src", "storage", "local.js");
      const script =
        `const { LocalStorage } = await import(${JSON.stringify(module)});` +
        `const s = new LocalStorage({ directory: ${JSON.stringify(store)} });` +
        `await s.storeFileFromMemory("site/xlog/000000010000000000000001", Buffer.alloc(1 << 20, 7), { a: "b" });`;
      const run = spawnSync(
        "strace",
        [
          "-f",
          "-y",
          "-e",
          "trace=fsync,fdatasync,rename,renameat,renameat2",
          "-o",
          tracePath,
          process.execPath,
          "--input-type=module",
        ],
        { input: script, encoding: "utf8", timeout: 60_000 },
      );
      assert.equal(run.status, 0, run.stderr);
      const objectDir = path.join(store, "site", "xlog");
      const object = path.join(objectDir, "000000010000000000000001");
      const calls = parseTrace(await readFile(tracePath, "utf8")).filter((c) => c.path.startsWith(objectDir));
      const renames = calls.filter((c) => c.kind === "rename");
      assert.deepEqual(
        renames.map((c) => c.to),
        [object, `${object}.metadata`],
        "data renamed before its sidecar",
      );
      const fsyncs = calls.filter((c) => c.kind === "fsync");
      assert.equal(fsyncs.length, 3, `three fsyncs: ${JSON.stringify(calls)}`);
      const firstRename = calls.indexOf(renames[0]);
      for (const r of renames) {
        const synced = calls.findIndex((c) => c.kind === "fsync" && c.path === r.path);
        assert.ok(synced >= 0 && synced < firstRename, `${r.path} fsync'd before the first rename`);
      }
      const dirSync = calls.findIndex((c) => c.kind === "fsync" && c.path === objectDir);
      assert.ok(dirSync > calls.indexOf(renames[1]), "directory fsync'd after the last rename");
      assert.deepEqual(JSON.parse(await readFile(`${object}.metadata`, "utf8")).a, "b");
      assert.equal((await readFile(object)).length, 1 << 20);
    });
  },
);
