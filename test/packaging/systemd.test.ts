/**
 * systemd integration: sd_notify over both transports to a real AF_UNIX datagram socket, the
 * journal log format under NOTIFY_SOCKET, and `systemd-analyze verify` of the shipped unit.
 */
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile, mkdir, copyFile } from "node:fs/promises";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { after, before, describe, it } from "node:test";
import { MALLOC_MMAP_THRESHOLD, MALLOC_TRIM_THRESHOLD } from "../../src/common/native_addon.js";
import { SystemdNotifier, sdNotify, watchdogIntervalMs } from "../../src/daemon/sdnotify.js";
import { repoRoot } from "../helpers/paths.js";
import { DaemonProcess, makeDaemonEnv, makeFakePgdata } from "../daemon/helpers.js";

const execFileAsync = promisify(execFile);

interface Listener {
  path: string;
  next(): Promise<string>;
  /** The next datagram within `ms`, else null (consumes nothing later). */
  poll(ms: number): Promise<string | null>;
  close(): void;
}

interface UnixDgramSocket {
  bind(p: string): void;
  on(event: "message", cb: (buf: Buffer) => void): void;
  on(event: "error", cb: (err: Error) => void): void;
  close(): void;
}

function hasUnixDgram(): boolean {
  try {
    createRequire(import.meta.url)("unix-dgram");
    return true;
  } catch {
    return false;
  }
}

async function listen(dir: string): Promise<Listener> {
  const unixDgram = createRequire(import.meta.url)("unix-dgram") as { createSocket(t: string): UnixDgramSocket };
  const socketPath = path.join(dir, "notify.sock");
  const socket = unixDgram.createSocket("unix_dgram");
  const messages: string[] = [];
  const waiters: (() => void)[] = [];
  socket.on("message", (buf) => {
    messages.push(buf.toString("utf8"));
    for (const w of waiters.splice(0)) w();
  });
  socket.bind(socketPath);
  return {
    path: socketPath,
    async next() {
      const deadline = Date.now() + 5000;
      while (messages.length === 0) {
        if (Date.now() > deadline) throw new Error("no sd_notify datagram received");
        await new Promise<void>((r) => {
          waiters.push(r);
          setTimeout(r, 100);
        });
      }
      return messages.shift() as string;
    },
    async poll(ms: number) {
      const deadline = Date.now() + ms;
      while (messages.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      return messages.shift() ?? null;
    },
    close: () => socket.close(),
  };
}

const which = (bin: string) =>
  ["/usr/bin", "/bin", "/usr/sbin", "/sbin"].map((d) => path.join(d, bin)).find((p) => existsSync(p));

describe(
  "sd_notify",
  { skip: hasUnixDgram() ? false : "the optional module unix-dgram is not installed (needed to listen)" },
  () => {
    let dir: string;
    let listener: Listener;
    before(async () => {
      dir = await mkdtemp(path.join(os.tmpdir(), "pghoard-sdnotify-"));
      listener = await listen(dir);
    });
    after(async () => {
      listener.close();
      await rm(dir, { recursive: true, force: true });
    });

    it("does nothing without NOTIFY_SOCKET", async () => {
      assert.equal(await sdNotify("READY=1", { env: {} }), null);
      assert.equal(watchdogIntervalMs({}), null);
    });

    it("sends READY/STOPPING datagrams from our own pid through unix-dgram", async () => {
      const env = { NOTIFY_SOCKET: listener.path };
      const notifier = new SystemdNotifier({ env });
      assert.equal(await notifier.ready(), "unix-dgram");
      assert.equal(await listener.next(), `READY=1\nSTATUS=pghoard running\nMAINPID=${process.pid}`);
      assert.equal(await notifier.stopping(), "unix-dgram");
      assert.equal(await listener.next(), "STOPPING=1\nSTATUS=stopping");
    });

    it("pings the watchdog at half of WATCHDOG_USEC while the main loop is alive", async () => {
      const env = { NOTIFY_SOCKET: listener.path, WATCHDOG_USEC: "200000", WATCHDOG_PID: String(process.pid) };
      assert.equal(watchdogIntervalMs(env), 100);
      assert.equal(watchdogIntervalMs({ ...env, WATCHDOG_PID: "1" }), null, "watchdog meant for another pid");
      const notifier = new SystemdNotifier({ env, heartbeatMaxAgeMs: 300 });
      await notifier.ready();
      assert.match(await listener.next(), /^READY=1/);
      notifier.heartbeat();
      assert.equal(await listener.next(), "WATCHDOG=1");
      // Without heartbeats the pings stop, so systemd would restart a hung daemon.
      await new Promise((r) => setTimeout(r, 500));
      while ((await listener.poll(250)) !== null) {
        // drain pings sent before the heartbeat aged out
      }
      assert.equal(await listener.poll(400), null);
      notifier.stopWatchdog();
    });

    it(
      "falls back to systemd-notify --pid (the unit sets NotifyAccess=all for it)",
      { skip: which("systemd-notify") ? false : "systemd-notify not installed" },
      async () => {
        const env = { ...process.env, NOTIFY_SOCKET: listener.path };
        assert.equal(
          await sdNotify("READY=1\nSTATUS=fallback", { env, transport: "systemd-notify", noBlock: true }),
          "systemd-notify",
        );
        const message = await listener.next();
        assert.match(message, /READY=1/);
        assert.match(message, /STATUS=fallback/);
        assert.match(message, new RegExp(`MAINPID=${process.pid}`));
      },
    );

    it("the daemon sends READY=1 once its main loop runs and STOPPING=1 on SIGTERM, logging in journal format", async () => {
      const env = await makeDaemonEnv(
        { notifysite: { pgDataDirectory: await makeFakePgdata() } },
        { log_level: "INFO" },
      );
      const daemon = await DaemonProcess.start(env, { env: { NOTIFY_SOCKET: listener.path } });
      try {
        const ready = await listener.next();
        assert.match(ready, /^READY=1\nSTATUS=pghoard running\nMAINPID=(\d+)$/);
        assert.equal(Number(/MAINPID=(\d+)/.exec(ready)?.[1]), daemon.child.pid);
        daemon.child.kill("SIGTERM");
        assert.match(await listener.next(), /^STOPPING=1/);
        const exit = await daemon.exited;
        assert.equal(exit.code, 0);
        assert.match(daemon.logs(), /^pghoard\S* MainThread INFO: /m);
      } finally {
        await daemon.stop("SIGKILL");
        await rm(env.dir, { recursive: true, force: true });
      }
    });

    it("logs in the journal format `logger thread LEVEL: message` when NOTIFY_SOCKET is set", async () => {
      const script = path.join(repoRoot, "bin", "pghoard_archive_cleanup.js");
      const configPath = path.join(dir, "pghoard.json");
      await writeFile(
        configPath,
        JSON.stringify({
          backup_sites: {
            default: {
              nodes: [{ host: "127.0.0.1" }],
              object_storage: { storage_type: "local", directory: path.join(dir, "store") },
            },
          },
        }),
      );
      const stderr = await new Promise<string>((resolve) => {
        const child = spawn(process.execPath, [script, "--config", configPath], {
          env: { ...process.env, NOTIFY_SOCKET: listener.path },
        });
        let err = "";
        child.stderr.on("data", (d: Buffer) => (err += d.toString()));
        child.on("close", () => resolve(err));
      });
      assert.match(stderr, /^ArchiveCleanup MainThread ERROR: FATAL: NoBasebackupsError: No basebackups found/m);
    });
  },
);

describe("systemd unit", () => {
  const unitPath = path.join(repoRoot, "systemd", "pghoard.service");

  it("is Type=notify as user postgres, reloads with SIGHUP and is hardened", async () => {
    const unit = await readFile(unitPath, "utf8");
    for (const line of [
      "Type=notify",
      "NotifyAccess=all",
      "User=postgres",
      "ExecStart=/usr/bin/pghoard /var/lib/pghoard/pghoard.json",
      "ExecReload=/bin/kill -HUP $MAINPID",
      "WorkingDirectory=/var/lib/pghoard",
      "ProtectSystem=full",
      "ReadWritePaths=/var/lib/pghoard",
      "PrivateTmp=true",
      "NoNewPrivileges=true",
      // A missing config is one failed condition, a broken one stops restarting after a few tries.
      "ConditionPathExists=/var/lib/pghoard/pghoard.json",
      "StartLimitIntervalSec=120",
      "StartLimitBurst=5",
      // glibc's trim and mmap thresholds, the values the processes also set themselves.
      `Environment=MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD} MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD}`,
    ]) {
      assert.ok(unit.split("\n").includes(line), `missing ${line}`);
    }
  });

  it(
    "passes systemd-analyze verify",
    { skip: which("systemd-analyze") ? false : "systemd-analyze not installed" },
    async () => {
      // verify wants ExecStart's binary to exist: point a copy of the unit at a stand-in in a temp root.
      const tmp = await mkdtemp(path.join(os.tmpdir(), "pghoard-unit-"));
      try {
        await mkdir(path.join(tmp, "bin"));
        const fakeBin = path.join(tmp, "bin", "pghoard");
        await copyFile(path.join(repoRoot, "bin", "pghoard.js"), fakeBin);
        const unit = (await readFile(unitPath, "utf8")).replace("ExecStart=/usr/bin/pghoard", `ExecStart=${fakeBin}`);
        const copy = path.join(tmp, "pghoard.service");
        await writeFile(copy, unit);
        await execFileAsync("chmod", ["+x", fakeBin]);
        let stderr = "";
        try {
          ({ stderr } = await execFileAsync("systemd-analyze", ["verify", "--man=no", copy], {
            env: { ...process.env, SYSTEMD_LOG_LEVEL: "warning" },
          }));
        } catch (err) {
          const e = err as { stderr?: string; message: string };
          // Without a running systemd (containers, CI) verify may fail to connect to the manager; the unit's own lines are what we check.
          stderr = e.stderr ?? e.message;
        }
        const about = stderr
          .split("\n")
          .filter(
            (l) =>
              l.includes("pghoard.service") && !/Failed to (connect|create)|bus|System has not been booted/i.test(l),
          );
        assert.deepEqual(about, [], stderr);
      } finally {
        await rm(tmp, { recursive: true, force: true });
      }
    },
  );
});
