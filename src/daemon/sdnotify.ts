/**
 * sd_notify(3) for the daemon under systemd (`Type=notify`): READY=1, RELOADING=1, STOPPING=1,
 * STATUS=..., WATCHDOG=1.
 *
 * The protocol is one datagram on the AF_UNIX SOCK_DGRAM socket named by $NOTIFY_SOCKET. Node has
 * no unix datagram sockets, so two honest transports are used, in this order:
 *  1. the native module `unix-dgram` (an optional dependency that comes with hot-shots): the
 *     datagram is sent from our own pid, so the unit's default `NotifyAccess=main` accepts it;
 *  2. otherwise, or for abstract sockets (`@name`, which unix-dgram cannot address), spawning
 *     `systemd-notify --pid=<our pid> <assignments>`. That message comes from a child process,
 *     which systemd accepts only with `NotifyAccess=all` (the shipped unit sets it).
 * Without $NOTIFY_SOCKET every call is a no-op. Failures are reported once through `warn` and never
 * thrown: the daemon works the same without systemd.
 */
import { spawn } from "node:child_process";
import { loadUnixDgram } from "../common/unix_dgram.js";

export type NotifyTransport = "unix-dgram" | "systemd-notify";

export interface SdNotifyOptions {
  /** Defaults to process.env. */
  env?: NodeJS.ProcessEnv;
  /** Force a transport (tests); default: unix-dgram when loadable and the socket is a path. */
  transport?: NotifyTransport;
  /** systemd-notify binary (default: found on PATH). */
  systemdNotifyPath?: string;
  /**
   * Pass --no-block to systemd-notify. By default it waits (barrier) until systemd has processed the
   * message, which also keeps it alive long enough for systemd to attribute the message to the unit.
   */
  noBlock?: boolean;
  warn?: (message: string) => void;
}

/** Sends one notification; resolves to the transport used, or null when not under systemd / failed. */
export async function sdNotify(assignments: string, options: SdNotifyOptions = {}): Promise<NotifyTransport | null> {
  const env = options.env ?? process.env;
  const socketPath = env.NOTIFY_SOCKET;
  if (!socketPath) return null;
  const unixDgram = options.transport === "systemd-notify" ? undefined : loadUnixDgram();
  if (unixDgram && !socketPath.startsWith("@")) {
    const buf = Buffer.from(assignments, "utf8");
    const ok = await new Promise<boolean>((resolve) => {
      try {
        const socket = unixDgram.createSocket("unix_dgram");
        socket.on("error", (err) => {
          options.warn?.(`sd_notify to ${socketPath} failed: ${err.message}`);
          resolve(false);
        });
        socket.send(buf, 0, buf.length, socketPath, (err) => {
          socket.close();
          if (err) options.warn?.(`sd_notify to ${socketPath} failed: ${err.message}`);
          resolve(!err);
        });
      } catch (err) {
        options.warn?.(`sd_notify to ${socketPath} failed: ${(err as Error).message}`);
        resolve(false);
      }
    });
    if (ok) return "unix-dgram";
  }
  const bin = options.systemdNotifyPath ?? "systemd-notify";
  const args = [
    `--pid=${process.pid}`,
    ...(options.noBlock ? ["--no-block"] : []),
    ...assignments.split("\n").filter((line) => line !== ""),
  ];
  const code = await new Promise<number | null>((resolve) => {
    const child = spawn(bin, args, { env, stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.once("error", (err) => {
      options.warn?.(`sd_notify: cannot run ${bin} (${err.message}); systemd will not see our notifications`);
      resolve(null);
    });
    child.once("close", (exitCode) => {
      if (exitCode !== 0) options.warn?.(`sd_notify: ${bin} exited with ${exitCode}: ${stderr.trim()}`);
      resolve(exitCode);
    });
  });
  return code === 0 ? "systemd-notify" : null;
}

/** Half of WatchdogSec in ms when the watchdog is enabled for this process (sd_watchdog_enabled(3)). */
export function watchdogIntervalMs(env: NodeJS.ProcessEnv = process.env): number | null {
  const usec = Number(env.WATCHDOG_USEC);
  if (!Number.isFinite(usec) || usec <= 0) return null;
  if (env.WATCHDOG_PID && Number(env.WATCHDOG_PID) !== process.pid) return null;
  return Math.max(1, Math.floor(usec / 1000 / 2));
}

/**
 * The daemon's systemd companion. `ready()` after start-up (and after a reload), `reloading()` on
 * SIGHUP, `stopping()` on shutdown, `heartbeat()` from every main-loop iteration: the watchdog is
 * only pinged while the main loop has run recently, so a hung loop gets the service restarted.
 */
export class SystemdNotifier {
  private timer: NodeJS.Timeout | null = null;
  private lastHeartbeat = Date.now();
  private warned = false;
  private readonly enabled: boolean;

  constructor(private readonly options: SdNotifyOptions & { heartbeatMaxAgeMs?: number } = {}) {
    this.enabled = Boolean((options.env ?? process.env).NOTIFY_SOCKET);
  }

  private send(assignments: string): Promise<NotifyTransport | null> {
    if (!this.enabled) return Promise.resolve(null);
    return sdNotify(assignments, {
      ...this.options,
      warn: (m) => {
        // One warning is enough: the same cause would repeat on every watchdog ping.
        if (this.warned) return;
        this.warned = true;
        this.options.warn?.(m);
      },
    });
  }

  ready(status = "pghoard running"): Promise<NotifyTransport | null> {
    this.startWatchdog();
    return this.send(`READY=1\nSTATUS=${status}\nMAINPID=${process.pid}`);
  }

  reloading(): Promise<NotifyTransport | null> {
    return this.send("RELOADING=1\nSTATUS=reloading configuration");
  }

  stopping(): Promise<NotifyTransport | null> {
    this.stopWatchdog();
    return this.send("STOPPING=1\nSTATUS=stopping");
  }

  status(text: string): Promise<NotifyTransport | null> {
    return this.send(`STATUS=${text}`);
  }

  heartbeat(): void {
    this.lastHeartbeat = Date.now();
  }

  private startWatchdog(): void {
    const interval = watchdogIntervalMs(this.options.env ?? process.env);
    if (!this.enabled || interval === null || this.timer) return;
    // The main loop sleeps 5 s between iterations and a site iteration may wait on storage: allow a minute.
    const maxAge = this.options.heartbeatMaxAgeMs ?? Math.max(60_000, interval * 4);
    this.timer = setInterval(() => {
      if (Date.now() - this.lastHeartbeat <= maxAge) void this.send("WATCHDOG=1");
    }, interval);
    this.timer.unref();
  }

  stopWatchdog(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}
