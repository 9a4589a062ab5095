/**
 * Starts and stops the object-store test servers of test/servers on 127.0.0.1, each suite with its
 * own data directory and free ports. A server that cannot be installed or started yields a skip
 * reason instead of a failure, except on CI (`CI` set), where the storage suites must run.
 */
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { createServer } from "node:net";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { repoRoot } from "../helpers/paths.js";

const run = promisify(execFile);

export type ServerKind = "swift" | "azurite" | "sshd";

export interface TestServer {
  env: Record<string, string>;
  dir: string;
  stop(): Promise<void>;
}

/** A currently free TCP port on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const p = (srv.address() as { port: number }).port;
      srv.close(() => resolve(p));
    });
  });
}

function parseEnv(stdout: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of stdout.trim().split("\n")) {
    const m = /^(\w+)='(.*)'$/.exec(line);
    if (m) env[m[1]!] = m[2]!;
  }
  return env;
}

const scripts: Record<ServerKind, [string, string]> = {
  swift: ["swift/start-swift.sh", "swift/stop-swift.sh"],
  azurite: ["azurite/start-azurite.sh", "azurite/stop-azurite.sh"],
  sshd: ["sshd/start-sshd.sh", "sshd/stop-sshd.sh"],
};

/**
 * A base port for Swift with `span` free ports above it, all below the kernel's ephemeral range.
 * Swift's four backends bind their ports a moment after start-swift.sh checked them; a port from
 * the ephemeral range could meanwhile be taken by any concurrent test's listen(0) or outgoing
 * connection, and the proxy then answers 503 for every object (seen on CI).
 */
export async function swiftBasePort(span = 10): Promise<number> {
  let low = 32768;
  try {
    low = Number((await readFile("/proc/sys/net/ipv4/ip_local_port_range", "utf8")).trim().split(/\s+/)[0]) || low;
  } catch {
    // not Linux: the IANA dynamic range starts at 49152, so 32768 is still below it
  }
  const top = Math.min(low, 65000) - span - 1;
  const bottom = Math.max(10000, top - 20000);
  for (let tries = 0; tries < 100; tries++) {
    const base = bottom + Math.floor(Math.random() * (top - bottom));
    let free = true;
    for (let p = base; p <= base + span && free; p++) free = await portFree(p);
    if (free) return base;
  }
  throw new Error("no free port range for Swift below the ephemeral ports");
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once("error", () => resolve(false));
    srv.listen(port, "127.0.0.1", () => srv.close(() => resolve(true)));
  });
}

/** Starts a server; resolves to the server or to a skip reason (never a skip on CI). */
export async function startServer(kind: ServerKind): Promise<TestServer | { skip: string }> {
  // under the repository's tmp-friendly disk: Swift needs user xattrs, which tmpfs may lack
  const dir = await mkdtemp(path.join(os.tmpdir(), `pghoard-it-${kind}-`));
  const [start, stop] = scripts[kind].map((s) => path.join(repoRoot, "test", "servers", s)) as [string, string];
  let lastError = "";
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = kind === "swift" ? await swiftBasePort() : await freePort();
    try {
      const { stdout } = await run(start, [dir, String(port)], { timeout: 180_000, maxBuffer: 1 << 20 });
      return {
        env: parseEnv(stdout),
        dir,
        async stop() {
          await run(stop, [dir], { timeout: 60_000 }).catch(() => undefined);
          await rm(dir, { recursive: true, force: true }).catch(() => undefined);
        },
      };
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      const stderr = e.stderr || e.message;
      lastError = stderr.trim().split("\n").slice(-3).join(" | ");
      // A missing install does not get better by trying again; anything else (a port taken between
      // the probe and the bind, a slow start on a loaded machine) gets other ports and another go.
      if (/missing Debian packages|apt-get|not found|still not usable/.test(stderr)) break;
      await run(stop, [dir], { timeout: 60_000 }).catch(() => undefined);
    }
  }
  await run(stop, [dir], { timeout: 60_000 }).catch(() => undefined);
  await rm(dir, { recursive: true, force: true }).catch(() => undefined);
  const reason = `${kind} test server unavailable: ${lastError}`;
  if (process.env.CI) throw new Error(reason);
  return { skip: reason };
}
