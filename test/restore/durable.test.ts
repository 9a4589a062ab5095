/**
 * A restore is durable before it is startable: the real `pghoard_restore get-basebackup` (object
 * workers, encrypted snappy chunks of a pghoard-made backup) runs under strace, and the order of
 * its system calls shows every restored file and directory fsync'd before `global/pg_control` is
 * renamed into place, and `global/` fsync'd after that rename.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { lstat, readdir, readFile, realpath, rm } from "node:fs/promises";
import path from "node:path";
import { after, describe, it } from "node:test";

import { repoRoot } from "../helpers/paths.js";
import { makeTempDir } from "../helpers/pgcluster.js";
import { pghoardMadeDir, writeFixtureConfig } from "./helpers.js";

const SET = "snappy-enc-localtar";
const haveStrace = spawnSync("strace", ["-f", "-o", "/dev/null", "true"]).status === 0;
const skip = !haveStrace
  ? "strace is not installed or may not trace here"
  : !existsSync(path.join(pghoardMadeDir, SET))
    ? `fixture set ${SET} is absent`
    : false;

interface Trace {
  /** Path → indexes of the trace lines where its fsyncs completed. */
  synced: Map<string, number[]>;
  renames: Array<{ from: string; to: string; line: number }>;
}

/** Parses `strace -f -y` output: fsync(fd</path>) calls (also split ones) and renames. */
function parseTrace(text: string): Trace {
  const synced = new Map<string, number[]>();
  const done = (file: string, index: number): void => void synced.set(file, [...(synced.get(file) ?? []), index]);
  const renames: Trace["renames"] = [];
  const pending = new Map<string, string>();
  text.split("\n").forEach((line, index) => {
    const pid = line.split(" ", 1)[0];
    let m = /^\d+\s+f(?:data)?sync\(\d+<(.+)>\)\s+= 0/.exec(line);
    if (m) return done(m[1], index);
    m = /^\d+\s+f(?:data)?sync\(\d+<(.+)> <unfinished \.\.\.>/.exec(line);
    if (m) return void pending.set(pid, m[1]);
    if (/<\.\.\. f(?:data)?sync resumed>\)\s+= 0/.test(line) && pending.has(pid)) {
      done(pending.get(pid)!, index);
      pending.delete(pid);
      return;
    }
    m = /rename(?:at2?)?\((?:AT_FDCWD, )?"([^"]+)", (?:AT_FDCWD, )?"([^"]+)"/.exec(line);
    if (m) renames.push({ from: m[1], to: m[2], line: index });
  });
  return { synced, renames };
}

async function walk(root: string, out: { files: string[]; dirs: string[] }): Promise<void> {
  out.dirs.push(root);
  for (const name of await readdir(root)) {
    const full = path.join(root, name);
    const st = await lstat(full);
    if (st.isDirectory()) await walk(full, out);
    else if (st.isFile()) out.files.push(full);
  }
}

/** The real `pghoard_restore get-basebackup` of SET under strace, tracing `trace` into `tracePath`. */
function straceRestore(trace: string, tracePath: string, config: string, target: string) {
  return spawnSync(
    "strace",
    [
      "-f",
      "-y",
      "-e",
      trace,
      "-o",
      tracePath,
      process.execPath,
      path.join(repoRoot, "bin", "pghoard_restore.js"),
      "get-basebackup",
      "--config",
      config,
      "--site",
      SET,
      "--target-dir",
      target,
    ],
    { encoding: "utf8", timeout: 150_000 },
  );
}

const workDirs: string[] = [];
after(async () => {
  for (const dir of workDirs) await rm(dir, { recursive: true, force: true });
});

describe("durable restore", { skip, timeout: 180_000 }, () => {
  it("fsyncs every restored file and directory before global/pg_control is put in place", async () => {
    const work = await makeTempDir("restore-durable");
    workDirs.push(work);
    const config = await writeFixtureConfig(SET, work, { restore_process_count: 2 });
    const target = path.join(await realpath(work), "pgdata");
    const tracePath = path.join(work, "strace.txt");
    const res = straceRestore("trace=fsync,fdatasync,rename,renameat,renameat2", tracePath, config, target);
    assert.equal(res.status, 0, `${res.stdout}\n${res.stderr}`);
    assert.match(res.stdout, /Basebackup restoration complete\./);

    const trace = parseTrace(await readFile(tracePath, "utf8"));
    const pgControl = path.join(target, "global", "pg_control");
    const publish = trace.renames.find((r) => r.to === pgControl);
    assert.ok(publish, "global/pg_control is renamed into place");
    // A file renamed into place (atomic writes) is durable when its source was fsync'd first.
    const durableBefore = (file: string, line: number): boolean => {
      if ((trace.synced.get(file) ?? []).some((at) => at < line)) return true;
      return trace.renames.some((r) => r.to === file && r.line < line && durableBefore(r.from, r.line));
    };
    const tree = { files: [] as string[], dirs: [] as string[] };
    await walk(target, tree);
    assert.ok(tree.files.length > 500, `a real data directory was restored (${tree.files.length} files)`);
    const notSynced = [
      ...tree.files.filter((f) => f !== pgControl && !durableBefore(f, publish.line)),
      ...tree.dirs.filter((d) => !durableBefore(d, publish.line)),
    ];
    assert.deepEqual(notSynced, [], "fsync'd before global/pg_control was put in place");
    assert.ok(durableBefore(publish.from, publish.line), "pg_control's data fsync'd before its rename");
    const globalSyncs = trace.synced.get(path.join(target, "global")) ?? [];
    assert.ok(
      globalSyncs.some((at) => at > publish.line),
      "global/ fsync'd after the rename",
    );
  });
});

/**
 * `strace -f -y` lines of one run: for each large file the span from its last data write to the
 * end of its fsync, and the files created, by line.
 */
function fsyncSpansAndCreates(text: string, minBytes: Map<string, number>) {
  const spans: Array<{ file: string; start: number; end: number }> = [];
  const creates: Array<{ file: string; line: number }> = [];
  const lastWrite = new Map<string, number>();
  const open = new Map<string, string>();
  const done = (file: string, end: number): void =>
    void spans.push({ file, start: lastWrite.get(file) ?? Number.POSITIVE_INFINITY, end });
  text.split("\n").forEach((line, index) => {
    const pid = line.split(" ", 1)[0];
    let m = /^\d+\s+(?:pwritev|pwrite64|writev|write)\(\d+<([^>]+)>/.exec(line);
    if (m) return void lastWrite.set(m[1], index);
    m = /^\d+\s+fsync\(\d+<(.+)>\)\s+= 0/.exec(line);
    if (m) return done(m[1], index);
    m = /^\d+\s+fsync\(\d+<(.+)> <unfinished \.\.\.>/.exec(line);
    if (m) return void open.set(pid, m[1]);
    if (/<\.\.\. fsync resumed>\)\s+= 0/.test(line) && open.has(pid)) {
      done(open.get(pid)!, index);
      open.delete(pid);
      return;
    }
    m =
      /openat\(AT_FDCWD<[^>]*>, "([^"]+)", [^)]*O_CREAT/.exec(line) ??
      /openat\(AT_FDCWD, "([^"]+)", [^)]*O_CREAT/.exec(line);
    if (m) creates.push({ file: m[1], line: index });
  });
  return { spans: spans.filter((s) => (minBytes.get(s.file) ?? 0) > 256 * 1024), creates };
}

describe("restore overlaps file flushes with extraction", { skip, timeout: 180_000 }, () => {
  it("creates the next files of a chunk before a large file written before them is fsync'd", async () => {
    const work = await makeTempDir("restore-overlap");
    workDirs.push(work);
    // One object at a time: any file created during a large file's fsync comes from the same chunk.
    const config = await writeFixtureConfig(SET, work, { restore_process_count: 1 });
    const target = path.join(await realpath(work), "pgdata");
    const tracePath = path.join(work, "strace.txt");
    const res = straceRestore("trace=fsync,openat,pwritev,pwrite64,writev,write", tracePath, config, target);
    assert.equal(res.status, 0, `${res.stdout}\n${res.stderr}`);
    const tree = { files: [] as string[], dirs: [] as string[] };
    await walk(target, tree);
    const sizes = new Map<string, number>();
    for (const file of tree.files) sizes.set(file, (await lstat(file)).size);
    const { spans, creates } = fsyncSpansAndCreates(await readFile(tracePath, "utf8"), sizes);
    assert.ok(spans.length >= 3, `the backup has large files (${spans.length} fsync'd)`);
    const overlapping = spans.filter((s) =>
      creates.some((c) => c.file !== s.file && c.line > s.start && c.line < s.end),
    );
    assert.ok(
      overlapping.length > 0,
      `some file was created between a large file's last write and the end of its fsync (${spans.length} large files, none)`,
    );
  });
});
