/**
 * The bash client (bin/pghoard_postgres_command) against the Node.js client
 * (bin/pghoard_postgres_command.js), case by case (cli.md §6), with a real daemon: same exit
 * code, same stdout and stderr, same file effects. The cases the bash client must answer itself
 * are run a second time with PGHOARD_NODE=/bin/false, so a hand-over to Node.js would fail them.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { findFreePort } from "../helpers/pgcluster.js";
import { repoRoot } from "../helpers/paths.js";
import {
  DaemonProcess,
  makeDaemonEnv,
  makeFakePgdata,
  postgresCommandBin,
  syntheticSegment,
  type DaemonEnv,
} from "../daemon/helpers.js";

const shellBin = path.join(repoRoot, "bin", "pghoard_postgres_command");
// The native front, where `npm run build` found a C compiler (scripts/build_native.sh).
const nativeBin = path.join(repoRoot, "dist", "native", "pghoard_postgres_command");
const haveNative = existsSync(nativeBin);
/** The native front's run with its own path named as the bash client's (messages name argv0). */
const asShell = (r: Run): Run => ({
  code: r.code,
  stdout: r.stdout.split(nativeBin).join(shellBin),
  stderr: r.stderr.split(nativeBin).join(shellBin),
});
const SITE = "shellcmd";
const SEG = "000000010000000000000005";
const HISTORY = "00000002.history";
const FAST_RETRY = { PGHOARD_POSTGRES_COMMAND_RETRY_INTERVAL: "0.05" };

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], cwd: string, env: Record<string, string>): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.once("error", reject);
    child.once("close", (code) => resolve({ code, stdout, stderr }));
  });
}

interface Case {
  name: string;
  args: () => string[];
  /** Answered by bash alone (no Node.js start-up). */
  shellOnly: boolean;
  /** Answered by the native front itself (a prefetched file it renames, as the Node.js client). */
  nativeItself?: boolean;
  code: number;
  /** Puts the files in place before each run (both clients see the same state). */
  setup?: () => Promise<void>;
  /** Checks the files after each run. */
  check?: () => Promise<void>;
  env?: Record<string, string>;
}

describe("pghoard_postgres_command: the bash client agrees with the Node.js client", () => {
  let env: DaemonEnv;
  let daemon: DaemonProcess;
  let pgdata: string;
  let downPort: string;
  const seg = syntheticSegment(SEG);
  const history = "1\t0/3000000\tno recovery target specified\n";

  before(async () => {
    pgdata = await makeFakePgdata();
    await writeFile(path.join(pgdata, "pg_wal", SEG), seg);
    await writeFile(path.join(pgdata, "pg_wal", HISTORY), history);
    env = await makeDaemonEnv(
      { [SITE]: { pgDataDirectory: pgdata } },
      { webserver_username: "u", webserver_password: "p" },
    );
    daemon = await DaemonProcess.start(env);
    downPort = String(await findFreePort());
    recovered = walPath("RECOVERYXLOG");
    // The daemon serves a file from pg_wal only once, then from the store: archive the history file.
    const archived = await run(
      process.execPath,
      [postgresCommandBin, ...auth(), "--mode", "archive", "--xlog", HISTORY],
      pgdata,
      {},
    );
    assert.equal(archived.code, 0, JSON.stringify(archived));
  });

  after(async () => {
    await daemon?.stop();
  });

  const auth = (): string[] => ["--port", String(env.port), "--site", SITE, "--username", "u", "--password", "p"];
  const walPath = (name: string): string => path.join(pgdata, "pg_wal", name);
  let recovered = "";
  const removeRecovered = async (): Promise<void> => {
    await rm(recovered, { force: true });
  };
  const expectRecovered = (want: Buffer | string) => async (): Promise<void> => {
    assert.ok((await readFile(recovered)).equals(Buffer.isBuffer(want) ? want : Buffer.from(want)));
  };

  const down = (): string[] => ["--port", downPort, "--site", SITE];
  /** `<dir>/<xlog>.pghoard.prefetch` restored to `<dir>/RECOVERYXLOG` (or `output`). */
  const prefetched = (
    name: string,
    p: {
      xlog: string;
      via: () => string[];
      shellOnly: boolean;
      dir?: string;
      output?: () => string;
      nativeItself?: boolean;
    },
  ): Case => {
    const dir = (): string => path.join(pgdata, p.dir ?? "pg_wal");
    const target = (): string => path.join(dir(), "RECOVERYXLOG");
    const prefetchFile = (): string => path.join(dir(), `${p.xlog}.pghoard.prefetch`);
    return {
      name,
      args: () => [
        ...p.via(),
        "--mode",
        "restore",
        "--xlog",
        p.xlog,
        "--output",
        p.output?.() ?? `${p.dir ?? "pg_wal"}/RECOVERYXLOG`,
      ],
      shellOnly: p.shellOnly,
      nativeItself: p.nativeItself ?? true,
      code: 0,
      setup: async () => {
        await mkdir(dir(), { recursive: true });
        await rm(target(), { force: true });
        await writeFile(prefetchFile(), `prefetched ${p.xlog}`);
      },
      check: async () => {
        assert.equal(await readFile(target(), "utf8"), `prefetched ${p.xlog}`);
        assert.ok(!existsSync(prefetchFile()));
      },
    };
  };

  const cases: Case[] = [
    { name: "archive 201", args: () => [...auth(), "--mode", "archive", "--xlog", SEG], shellOnly: true, code: 0 },
    {
      name: "archive, --opt=value forms",
      args: () => [
        `--port=${env.port}`,
        `--site=${SITE}`,
        "--username=u",
        "--password=p",
        "--mode=archive",
        `--xlog=${SEG}`,
      ],
      shellOnly: true,
      code: 0,
    },
    {
      name: "archive of a missing file: 404 → 3 with the daemon's reason",
      args: () => [...auth(), "--mode", "archive", "--xlog", "000000010000000000000006"],
      shellOnly: true,
      code: 3,
    },
    {
      name: "archive without credentials: 401 → 3",
      args: () => ["--port", String(env.port), "--site", SITE, "--mode", "archive", "--xlog", SEG],
      shellOnly: true,
      code: 3,
    },
    {
      name: "archive of a .backup label: 0 without the daemon",
      args: () => [
        "--port",
        downPort,
        "--site",
        SITE,
        "--mode",
        "archive",
        "--xlog",
        "000000010000000000000002.00000028.backup",
      ],
      shellOnly: true,
      code: 0,
    },
    {
      name: "archive, daemon down → 2",
      args: () => ["--port", downPort, "--site", SITE, "--mode", "archive", "--xlog", SEG],
      shellOnly: false,
      code: 2,
    },
    {
      name: "archive with a space in --site → 2 (refused before sending)",
      args: () => ["--port", String(env.port), "--site", "a b", "--mode", "archive", "--xlog", SEG],
      shellOnly: false,
      code: 2,
    },
    {
      name: "restore HEAD 200 → 0",
      args: () => [...auth(), "--mode", "restore", "--xlog", SEG],
      shellOnly: true,
      code: 0,
    },
    {
      name: "restore HEAD 404 → 4",
      args: () => [...auth(), "--mode", "restore", "--xlog", "0000000100000000000000A0"],
      shellOnly: true,
      code: 4,
    },
    {
      name: "restore GET, relative --output → 0",
      args: () => [...auth(), "--mode", "restore", "--xlog", SEG, "--output", "pg_wal/RECOVERYXLOG"],
      shellOnly: true,
      code: 0,
      setup: removeRecovered,
      check: expectRecovered(seg),
    },
    {
      name: "restore GET of a history file, absolute --output → 0",
      args: () => [...auth(), "--mode", "restore", "--xlog", HISTORY, "--output", recovered],
      shellOnly: true,
      code: 0,
      setup: removeRecovered,
      check: expectRecovered(history),
    },
    {
      name: "restore GET 404 → 4",
      args: () => [
        ...auth(),
        "--mode",
        "restore",
        "--xlog",
        "0000000100000000000000A0",
        "--output",
        "pg_wal/RECOVERYXLOG",
      ],
      shellOnly: true,
      code: 4,
    },
    {
      name: "restore GET outside the data directory: 400 → 5 with the reason",
      args: () => [...auth(), "--mode", "restore", "--xlog", SEG, "--output", "/etc/passwd"],
      shellOnly: true,
      code: 5,
    },
    prefetched("restore of a prefetched segment: the daemon makes the client's rename", {
      xlog: "00000001000000000000000B",
      via: auth,
      shellOnly: true,
    }),
    prefetched("restore of a prefetched history file through the daemon, absolute --output", {
      xlog: "00000004.history",
      via: auth,
      shellOnly: true,
      output: () => recovered,
    }),
    prefetched("restore of a prefetched segment outside the WAL directory: the Node.js client renames it", {
      xlog: "00000001000000000000000C",
      via: auth,
      shellOnly: false,
      dir: "elsewhere",
    }),
    prefetched("restore of a prefetched segment, absolute --output with ../ (the Node.js client's path)", {
      xlog: "00000001000000000000000D",
      via: auth,
      shellOnly: false,
      output: () => `${path.join(pgdata, "pg_wal")}/../pg_wal/RECOVERYXLOG`,
      nativeItself: false,
    }),
    prefetched("restore of a prefetched segment, daemon down: renamed by mv", {
      xlog: "000000010000000000000009",
      via: down,
      shellOnly: true,
    }),
    prefetched("restore of a prefetched history file, daemon down", {
      xlog: "00000003.history",
      via: down,
      shellOnly: true,
      output: () => recovered,
    }),
    {
      name: "restore from an unknown site → 5 (not 4: recovery must stop)",
      args: () => [
        ...auth().slice(0, 2),
        "--site",
        "nosuchsite",
        "--username",
        "u",
        "--password",
        "p",
        "--mode",
        "restore",
        "--xlog",
        SEG,
        "--output",
        recovered,
      ],
      shellOnly: false,
      code: 5,
    },
    {
      name: "restore, daemon down → 5 after 3 attempts",
      args: () => ["--port", downPort, "--site", SITE, "--mode", "restore", "--xlog", SEG, "--output", recovered],
      shellOnly: false,
      code: 5,
      env: FAST_RETRY,
    },
    {
      name: "restore, header injection in --output → 5",
      args: () => [
        ...auth(),
        "--mode",
        "restore",
        "--xlog",
        SEG,
        "--output",
        "x\r\nx-pghoard-target-path: /etc/passwd",
      ],
      shellOnly: false,
      code: 5,
    },
    {
      name: "restore, --output with ../ (normalized by Node.js)",
      args: () => [...auth(), "--mode", "restore", "--xlog", SEG, "--output", "pg_wal/../pg_wal/RECOVERYXLOG"],
      shellOnly: false,
      code: 0,
      setup: removeRecovered,
      check: expectRecovered(seg),
    },
    { name: "missing --site → 5", args: () => ["--mode", "archive", "--xlog", SEG], shellOnly: false, code: 5 },
    { name: "missing --xlog → 5", args: () => ["--mode", "restore", "--site", SITE], shellOnly: false, code: 5 },
    {
      name: "bad --mode → 5",
      args: () => ["--mode", "bogus", "--site", SITE, "--xlog", SEG],
      shellOnly: false,
      code: 5,
    },
    {
      name: "bad --port → 5",
      args: () => ["--mode", "archive", "--site", SITE, "--xlog", SEG, "--port", "notanint"],
      shellOnly: false,
      code: 5,
    },
    {
      name: "port out of range → 5",
      args: () => ["--mode", "archive", "--site", SITE, "--xlog", SEG, "--port", "70000"],
      shellOnly: false,
      code: 5,
    },
    {
      name: "unknown option → 5",
      args: () => ["--mode", "archive", "--site", SITE, "--xlog", SEG, "--unknown", "x"],
      shellOnly: false,
      code: 5,
    },
    {
      name: "positional argument → 5",
      args: () => ["--mode", "archive", "--site", SITE, "--xlog", SEG, "extra"],
      shellOnly: false,
      code: 5,
    },
    {
      name: "option value missing → 5",
      args: () => ["--mode", "archive", "--site", SITE, "--xlog"],
      shellOnly: false,
      code: 5,
    },
    {
      name: "option abbreviation (argparse prefix)",
      args: () => ["--po", String(env.port), "--si", SITE, "--use", "u", "--pas", "p", "--mo", "restore", "--xl", SEG],
      shellOnly: false,
      code: 0,
    },
    {
      name: "--config with archive → 5",
      args: () => ["--mode", "archive", "--site", SITE, "--xlog", SEG, "--config", "/nonexistent.json"],
      shellOnly: false,
      code: 5,
    },
    {
      name: "cleanup mode (the direct mode's recovery_end_command)",
      args: () => ["--mode", "cleanup", "--output", path.join(pgdata, "cleanupdir")],
      shellOnly: false,
      code: 0,
      setup: async () => {
        await mkdir(path.join(pgdata, "cleanupdir"), { recursive: true });
        await writeFile(path.join(pgdata, "cleanupdir", `${SEG}.pghoard.prefetch`), "x");
      },
      check: async () => assert.ok(!existsSync(path.join(pgdata, "cleanupdir", `${SEG}.pghoard.prefetch`))),
    },
    { name: "--help → 0", args: () => ["--help"], shellOnly: false, code: 0 },
    { name: "-h → 0", args: () => ["-h"], shellOnly: false, code: 0 },
    { name: "--version → 0", args: () => ["--version"], shellOnly: false, code: 0 },
  ];

  // PostgreSQL starts the client once per WAL file and every process start costs ~7-10 ms here:
  // archive, a restore through the daemon and a prefetched restore start none besides bash itself
  // (no `mv`, no `base64`, no subshell), also with --username/--password.
  it("archive and restore start no process besides bash", async () => {
    const trace = path.join(pgdata, "strace.out");
    const traced = async (args: string[], setup?: () => Promise<void>): Promise<void> => {
      await setup?.();
      const r = await run(
        "strace",
        ["-f", "-qq", "-e", "trace=execve,fork,vfork,clone,clone3", "-o", trace, shellBin, ...args],
        pgdata,
        { PGHOARD_NODE: "/bin/false" },
      );
      assert.equal(r.code, 0, JSON.stringify(r));
      const calls = (await readFile(trace, "utf8")).split("\n").filter((l) => /execve|fork|clone/.test(l));
      assert.equal(calls.length, 1, `${args.join(" ")}:\n${calls.join("\n")}`);
      assert.match(calls[0], /execve\(".*pghoard_postgres_command"/);
    };
    await traced([...auth(), "--mode", "archive", "--xlog", SEG]);
    await traced([...auth(), "--mode", "restore", "--xlog", SEG, "--output", "pg_wal/RECOVERYXLOG"], removeRecovered);
    const prefetched = "00000001000000000000000E";
    await traced(
      [...auth(), "--mode", "restore", "--xlog", prefetched, "--output", "pg_wal/RECOVERYXLOG"],
      async () => {
        await removeRecovered();
        await writeFile(walPath(`${prefetched}.pghoard.prefetch`), "prefetched E");
      },
    );
    await expectRecovered("prefetched E")();
    assert.ok(!existsSync(walPath(`${prefetched}.pghoard.prefetch`)));
  });

  // PostgreSQL's `sh -c` starts the client for every WAL file: a prefetched restore through the
  // native front is that one process and a rename, nothing else (no bash, no mv, no daemon call).
  it("the native front archives and restores without starting another process", { skip: !haveNative }, async () => {
    const trace = path.join(pgdata, "strace-native.out");
    /** The native front's process, connection and rename calls for one run (which must succeed). */
    const calls = async (args: string[]): Promise<string[]> => {
      const r = await run(
        "strace",
        ["-f", "-qq", "-e", "trace=execve,fork,vfork,clone,clone3,connect,rename", "-o", trace, nativeBin, ...args],
        pgdata,
        { PGHOARD_NODE: "/bin/false" },
      );
      assert.deepEqual(r, { code: 0, stdout: "", stderr: "" }, args.join(" "));
      const made = (await readFile(trace, "utf8")).split("\n").filter((l) => l.trim() && !l.includes("+++"));
      assert.equal(made.length, 2, made.join("\n"));
      assert.match(made[0], /execve\(".*dist\/native\/pghoard_postgres_command"/);
      return made;
    };
    const prefetched = "000000010000000000000010";
    await removeRecovered();
    await writeFile(walPath(`${prefetched}.pghoard.prefetch`), "prefetched 10");
    const renamed = await calls([
      ...auth(),
      "--mode",
      "restore",
      "--xlog",
      prefetched,
      "--output",
      "pg_wal/RECOVERYXLOG",
    ]);
    assert.match(renamed[1], /rename\(".*\.pghoard\.prefetch", ".*RECOVERYXLOG"\) = 0/);
    await expectRecovered("prefetched 10")();
    assert.ok(!existsSync(walPath(`${prefetched}.pghoard.prefetch`)));
    // Archive and restore through the daemon: one process and one connection, no bash.
    for (const args of [
      [...auth(), "--mode", "archive", "--xlog", SEG],
      [...auth(), "--mode", "restore", "--xlog", SEG, "--output", "pg_wal/RECOVERYXLOG"],
    ]) {
      await removeRecovered();
      assert.match((await calls(args))[1], /connect\(.*127\.0\.0\.1.* = 0/);
    }
    await expectRecovered(seg)();
  });

  // Started through PATH (as restore_command usually is), its messages name the path the shell found,
  // as the bash client's $0 does.
  it("the native front names itself by the path the shell found", { skip: !haveNative }, async () => {
    const args = "--port " + downPort + " --site " + SITE + " --mode restore --xlog " + SEG + " --output pg_wal/X";
    const through = (dir: string): Promise<Run> =>
      run("/bin/sh", ["-c", `pghoard_postgres_command ${args}`], pgdata, {
        ...FAST_RETRY,
        PATH: `${dir}:${process.env.PATH ?? "/usr/bin:/bin"}`,
      });
    const native = await through(path.dirname(nativeBin));
    const bash = await through(path.dirname(shellBin));
    assert.equal(native.code, 5);
    assert.match(native.stdout, new RegExp(`^${nativeBin.replace(/[.]/g, "\\.")}: ERROR: `, "m"));
    assert.deepEqual(asShell(native), bash);
  });

  // A `read` per header line reads a socket one byte per system call (~150 for an answer); the
  // client reads the daemon's whole answer at once instead.
  it("reads the daemon's answer in a few system calls, not byte by byte", async () => {
    const trace = path.join(pgdata, "strace-read.out");
    const prefetched = "00000001000000000000000F";
    await removeRecovered();
    await writeFile(walPath(`${prefetched}.pghoard.prefetch`), "prefetched F");
    const r = await run(
      "strace",
      [
        ...["-f", "-qq", "-y", "-e", "trace=read", "-o", trace, shellBin, ...auth()],
        ...["--mode", "restore", "--xlog", prefetched, "--output", "pg_wal/RECOVERYXLOG"],
      ],
      pgdata,
      { PGHOARD_NODE: "/bin/false" },
    );
    assert.equal(r.code, 0, JSON.stringify(r));
    await expectRecovered("prefetched F")();
    const socketReads = (await readFile(trace, "utf8")).split("\n").filter((l) => /read\(\d+<(?:TCP|socket:)/.test(l));
    assert.ok(socketReads.length >= 1 && socketReads.length <= 4, socketReads.join("\n"));
  });

  for (const c of cases) {
    it(c.name, async () => {
      const env = { ...(c.env ?? {}) };
      // The Node.js client names itself as the bash client does when it hands a case over.
      await c.setup?.();
      const viaNode = await run(process.execPath, [postgresCommandBin, ...c.args()], pgdata, {
        ...env,
        PGHOARD_POSTGRES_COMMAND_ARGV0: shellBin,
      });
      if (viaNode.code !== c.code) assert.fail(`Node.js client: ${JSON.stringify(viaNode)}`);
      await c.check?.();
      await c.setup?.();
      const viaShell = await run(shellBin, c.args(), pgdata, env);
      await c.check?.();
      assert.equal(viaNode.code, c.code, `Node.js client: ${JSON.stringify(viaNode)}`);
      assert.deepEqual(viaShell, viaNode);
      if (c.shellOnly) {
        await c.setup?.();
        const bashAlone = await run(shellBin, c.args(), pgdata, { ...env, PGHOARD_NODE: "/bin/false" });
        await c.check?.();
        assert.deepEqual(bashAlone, viaNode, "answered by bash without Node.js");
      } else {
        await c.setup?.();
        const handedOver = await run(shellBin, c.args(), pgdata, { ...env, PGHOARD_NODE: "/bin/false" });
        assert.deepEqual(handedOver, { code: 1, stdout: "", stderr: "" }, "handed over to Node.js untouched");
      }
      if (haveNative) {
        // The native front answers the same, itself or through the bash client.
        await c.setup?.();
        const viaNative = await run(nativeBin, c.args(), pgdata, env);
        await c.check?.();
        assert.deepEqual(asShell(viaNative), viaNode, "native front");
        await c.setup?.();
        const nativeNoNode = await run(nativeBin, c.args(), pgdata, { ...env, PGHOARD_NODE: "/bin/false" });
        if (c.shellOnly || c.nativeItself) {
          await c.check?.();
          assert.deepEqual(asShell(nativeNoNode), viaNode, "native front (and bash) without Node.js");
        } else {
          assert.deepEqual(nativeNoNode, { code: 1, stdout: "", stderr: "" }, "native front handed over untouched");
        }
      }
    });
  }
});
