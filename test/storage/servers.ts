/**
 * Starts and stops the object-store test servers of test/servers on 127.0.0.1, each suite with its
 * own data directory and free ports. A server that cannot be installed or started yields a skip
 * reason instead of a failure, except on CI (`CI` set), where the storage suites must run.
 */
import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
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

/** A currently free TCP port on 127.0.0.1 (plus `span` free ports above it, for Swift's backends). */
export async function freePort(span = 0): Promise<number> {
  for (let tries = 0; tries < 50; tries++) {
    const port = await new Promise<number>((resolve, reject) => {
      const srv = createServer();
      srv.once("error", reject);
      srv.listen(0, "127.0.0.1", () => {
        const p = (srv.address() as { port: number }).port;
        srv.close(() => resolve(p));
      });
    });
    if (port + span > 65000) continue;
    return port;
  }
  throw new Error("no free port");
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

/** Starts a server; resolves to the server or to a skip reason (never a skip on CI). */
export async function startServer(kind: ServerKind): Promise<TestServer | { skip: string }> {
  // under the repository's tmp-friendly disk: Swift needs user xattrs, which tmpfs may lack
  const dir = await mkdtemp(path.join(os.tmpdir(), `pghoard-it-${kind}-`));
  const [start, stop] = scripts[kind].map((s) => path.join(repoRoot, "test", "servers", s)) as [string, string];
  let lastError = "";
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort(kind === "swift" ? 10 : 0);
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
      lastError = (e.stderr || e.message).trim().split("\n").slice(-3).join(" | ");
      // A port taken between the probe and the start (Swift's backends bind theirs later, and other
      // tests pick random ports concurrently): stop what did start, then try other ports.
      if (!/already in use|Could not bind/.test(lastError)) break;
      await run(stop, [dir], { timeout: 60_000 }).catch(() => undefined);
    }
  }
  await run(stop, [dir], { timeout: 60_000 }).catch(() => undefined);
  await rm(dir, { recursive: true, force: true }).catch(() => undefined);
  const reason = `${kind} test server unavailable: ${lastError}`;
  if (process.env.CI) throw new Error(reason);
  return { skip: reason };
}
