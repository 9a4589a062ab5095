/**
 * Times a command the way PostgreSQL starts archive_command / restore_command: the C library's
 * `system()`, i.e. `/bin/sh -c "<command>"` from a small process (glibc starts it with
 * posix_spawn). Node's own spawn forks a process with a large heap; on this kind of VM that alone
 * adds 5–8 ms to every call (`/bin/true`: 9–11 ms from Node, 2–5 ms through `system()`), more than
 * the per-call targets. So a small C program (bench/system_timer.c, compiled here with `cc`) runs
 * and times each command, and every side of a comparison is measured through it alike.
 */
import { execFileSync, spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

export interface Timed {
  ms: number;
  code: number | null;
  out: string;
}

/** POSIX shell word, single-quoted. */
const quote = (word: string): string => `'${word.replace(/'/g, `'\\''`)}'`;

export class LeanSpawner {
  private readonly child: ChildProcessWithoutNullStreams;
  private readonly dir = mkdtempSync(path.join(os.tmpdir(), "bench-spawn-"));
  private readonly outFile = path.join(this.dir, "out");
  private buffered = "";
  private waiting: ((line: string) => void)[] = [];
  private queue: Promise<unknown> = Promise.resolve();

  constructor() {
    // The source sits in bench/ next to this file's dist/bench/ directory.
    const source = fileURLToPath(new URL("../../bench/system_timer.c", import.meta.url));
    const timer = path.join(this.dir, "system_timer");
    try {
      execFileSync("cc", ["-O2", "-o", timer, source], { stdio: "pipe" });
    } catch (err) {
      throw new Error(`compiling ${source} needs a C compiler (cc): ${String(err)}`);
    }
    this.child = spawn(timer, [], { stdio: ["pipe", "pipe", "pipe"] });
    this.child.stdout.on("data", (d: Buffer) => {
      this.buffered += d.toString();
      let nl: number;
      while ((nl = this.buffered.indexOf("\n")) >= 0) {
        const line = this.buffered.slice(0, nl);
        this.buffered = this.buffered.slice(nl + 1);
        this.waiting.shift()?.(line);
      }
    });
    this.child.stderr.on("data", (d: Buffer) => process.stderr.write(d));
  }

  /** Runs one command (calls are serialized, as PostgreSQL makes them). */
  run(cmd: string, args: string[], cwd = process.cwd()): Promise<Timed> {
    const line = `${cwd}\t${[cmd, ...args].map(quote).join(" ")} >${quote(this.outFile)} 2>&1`;
    if (/\n/.test(line) || cwd.includes("\t")) throw new Error("lean spawn: no newlines in arguments");
    const result = this.queue.then(
      () =>
        new Promise<Timed>((resolve) => {
          this.waiting.push((answer) => {
            const [ms, code] = answer.split(" ");
            resolve({ ms: Number(ms), code: Number(code), out: readFileSync(this.outFile, "utf8") });
          });
          this.child.stdin.write(`${line}\n`);
        }),
    );
    this.queue = result.catch(() => undefined);
    return result;
  }

  close(): void {
    this.child.stdin.end();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
