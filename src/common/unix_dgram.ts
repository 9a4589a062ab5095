/**
 * Loader of the optional native module `unix-dgram` (installed with hot-shots): Node has no
 * AF_UNIX datagram sockets, which syslog (/dev/log) and sd_notify ($NOTIFY_SOCKET) need.
 */
import { createRequire } from "node:module";

export interface UnixDgramSocket {
  send(buf: Buffer, offset: number, length: number, path: string, callback?: (err?: Error) => void): void;
  close(): void;
  on(event: "error", listener: (err: Error) => void): void;
}

export interface UnixDgramModule {
  createSocket(type: "unix_dgram"): UnixDgramSocket;
}

/** The module, or undefined when it is not installed or cannot be loaded (no build for this platform). */
export function loadUnixDgram(): UnixDgramModule | undefined {
  try {
    return createRequire(import.meta.url)("unix-dgram") as UnixDgramModule;
  } catch {
    return undefined;
  }
}
