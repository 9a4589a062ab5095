/**
 * The Node.js entry points in bin/: `pghoard` and `pghoard_restore` run with a libuv thread pool of
 * 16 (object transfers, fsyncs and file reads share it), unless UV_THREADPOOL_SIZE says otherwise.
 * libuv sizes the pool once, at first use; an ES module entry is read through the pool before its
 * body runs, so a setting made there has no effect (the wrappers are CommonJS for that reason).
 * Checked from outside: the process's thread count with the default against UV_THREADPOOL_SIZE=1.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readdir } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { describe, it } from "node:test";
import { DaemonProcess, makeDaemonEnv, makeFakePgdata, sleep } from "../daemon/helpers.js";
import { repoRoot } from "../helpers/paths.js";

const threads = async (pid: number): Promise<number> => (await readdir(`/proc/${pid}/task`)).length;
const inherited = process.env.UV_THREADPOOL_SIZE;

describe(
  "bin wrappers: libuv thread pool",
  { skip: inherited ? `UV_THREADPOOL_SIZE=${inherited} is set` : false },
  () => {
    it("pghoard: the daemon's pool has 16 threads by default", { timeout: 90_000 }, async () => {
      const env = await makeDaemonEnv({ pool: { pgDataDirectory: await makeFakePgdata() } });
      const counts: number[] = [];
      for (const extra of [{}, { UV_THREADPOOL_SIZE: "1" }] as Record<string, string>[]) {
        const daemon = await DaemonProcess.start(env, { env: extra });
        try {
          counts.push(await threads(daemon.child.pid!));
        } finally {
          await daemon.stop("SIGTERM");
        }
      }
      assert.ok(counts[0]! - counts[1]! >= 15, `threads with the default ${counts[0]}, with a pool of 1 ${counts[1]}`);
    });

    it("pghoard_restore: 16 pool threads by default", { timeout: 60_000 }, async () => {
      // A daemon that accepts and never answers keeps the command waiting while its threads are counted.
      const sockets: net.Socket[] = [];
      let connected: () => void = () => undefined;
      const server = net.createServer((s) => {
        sockets.push(s);
        connected();
      });
      await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
      const port = (server.address() as net.AddressInfo).port;
      const counts: number[] = [];
      try {
        for (const extra of [{}, { UV_THREADPOOL_SIZE: "1" }] as Record<string, string>[]) {
          const seen = new Promise<void>((r) => (connected = r));
          const child = spawn(
            process.execPath,
            [
              path.join(repoRoot, "bin", "pghoard_restore.js"),
              "list-basebackups-http",
              "--port",
              String(port),
              "--site",
              "s",
            ],
            { env: { ...process.env, ...extra }, stdio: "ignore" },
          );
          try {
            const exited = new Promise<never>((_, reject) =>
              child.once("exit", (code) => reject(new Error(`pghoard_restore exited (${code}) before connecting`))),
            );
            await Promise.race([seen, exited]);
            await sleep(100);
            counts.push(await threads(child.pid!));
          } finally {
            child.kill("SIGKILL");
          }
        }
      } finally {
        for (const s of sockets) s.destroy();
        server.close();
      }
      assert.ok(counts[0]! - counts[1]! >= 15, `threads with the default ${counts[0]}, with a pool of 1 ${counts[1]}`);
    });
  },
);
