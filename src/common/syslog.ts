/**
 * Syslog output of the logger. Node has no AF_UNIX datagram sockets, and /dev/log is one: a socket
 * path (the default `/dev/log`) works when the optional native module `unix-dgram` can be loaded;
 * otherwise a warning is printed once and syslog stays off. `host:port` sends RFC 3164 lines over
 * UDP instead (an extension; upstream only takes a path).
 */
import dgram from "node:dgram";
import os from "node:os";
import { pad } from "./log_format.js";
import { loadUnixDgram, type UnixDgramModule } from "./unix_dgram.js";

const SYSLOG_SEVERITY: Record<string, number> = { DEBUG: 7, INFO: 6, WARNING: 4, ERROR: 3, CRITICAL: 2 };

export const SYSLOG_FACILITIES: Record<string, number> = {
  kern: 0,
  user: 1,
  mail: 2,
  daemon: 3,
  auth: 4,
  syslog: 5,
  lpr: 6,
  news: 7,
  uucp: 8,
  cron: 9,
  authpriv: 10,
  ftp: 11,
  security: 4,
  local0: 16,
  local1: 17,
  local2: 18,
  local3: 19,
  local4: 20,
  local5: 21,
  local6: 22,
  local7: 23,
};

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const MAX_SYSLOG_BYTES = 60_000;

/** `<PRI>Mmm dd hh:mm:ss [host ]pghoard[pid]: text` (RFC 3164; the host only over the network). */
export function syslogLine(options: {
  facility: number;
  level: string;
  text: string;
  date?: Date;
  hostname?: string;
}): string {
  const date = options.date ?? new Date();
  const pri = options.facility * 8 + (SYSLOG_SEVERITY[options.level] ?? 6);
  const stamp = `${MONTHS[date.getMonth()]} ${String(date.getDate()).padStart(2, " ")} ${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
  const host = options.hostname ? `${options.hostname} ` : "";
  return `<${pri}>${stamp} ${host}pghoard[${process.pid}]: ${options.text}`;
}

export interface SyslogOptions {
  address: string;
  facility: string;
}

/** Sends formatted lines to syslog over UDP or a unix datagram socket; failures are reported once. */
export class SyslogSender {
  private udp: dgram.Socket | undefined;
  private udpTarget: { host: string; port: number } | undefined;
  private unixDgram: UnixDgramModule | undefined;
  private reported = false;
  readonly facility: number;

  constructor(
    readonly address: string,
    facility: string,
    private readonly report: (message: string) => void,
  ) {
    this.facility = SYSLOG_FACILITIES[facility.toLowerCase()] ?? SYSLOG_FACILITIES.local2 ?? 18;
    if (!(facility.toLowerCase() in SYSLOG_FACILITIES))
      report(`unknown syslog_facility ${JSON.stringify(facility)}, using local2`);
    const hostPort = /^\[?([^\]/]*?)\]?:(\d+)$/.exec(address);
    if (hostPort && !address.startsWith("/")) {
      this.udpTarget = { host: hostPort[1] || "127.0.0.1", port: Number(hostPort[2]) };
      this.udp = dgram.createSocket(this.udpTarget.host.includes(":") ? "udp6" : "udp4");
      this.udp.unref();
      this.udp.on("error", (err) => this.fail(err));
    } else {
      this.unixDgram = loadUnixDgram();
      if (!this.unixDgram) {
        report(
          `syslog to socket ${address} needs the optional module unix-dgram (Node has no unix datagram sockets); syslog disabled. ` +
            "Use syslog_address host:port for UDP instead.",
        );
      }
    }
  }

  private fail(err: Error): void {
    if (this.reported) return;
    this.reported = true;
    const code = (err as NodeJS.ErrnoException).code;
    this.report(`syslog send to ${this.address} failed: ${code ?? err.message} (further errors not reported)`);
  }

  send(level: string, text: string): void {
    let line = syslogLine({
      facility: this.facility,
      level,
      text,
      ...(this.udpTarget ? { hostname: os.hostname() } : {}),
    });
    let buf = Buffer.from(line);
    if (buf.length > MAX_SYSLOG_BYTES) {
      line = buf.subarray(0, MAX_SYSLOG_BYTES).toString();
      buf = Buffer.from(line);
    }
    if (this.udp && this.udpTarget) {
      this.udp.send(buf, this.udpTarget.port, this.udpTarget.host);
    } else if (this.unixDgram) {
      // A socket per message: an open unix-dgram socket would keep the event loop (and the process) alive.
      try {
        const socket = this.unixDgram.createSocket("unix_dgram");
        socket.on("error", (err) => this.fail(err));
        socket.send(buf, 0, buf.length, this.address, (err) => {
          if (err) this.fail(err);
        });
        socket.close();
      } catch (err) {
        this.fail(err as Error);
      }
    }
  }

  close(): void {
    this.udp?.close();
    this.udp = undefined;
  }
}
