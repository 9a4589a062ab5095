/**
 * `pghoard` — the backup daemon (cli.md §1).
 *   pghoard [-h] [-D] [--version] [-s] [--config CONFIG] [config_file]
 */
import { existsSync } from "node:fs";
import { LockHeldError } from "../common/pid_lock.js";
import path from "node:path";
import { createLogger, getLogger, setLogLevel } from "../common/logger.js";
import { ConfigError, resolveConfigPath } from "../config/index.js";
import { createBasebackupPlugin } from "../basebackup/daemon.js";
import { PGHoard } from "../daemon/pghoard.js";
import { createMonitoringPlugin } from "../monitoring/daemon_plugin.js";
import { createRestoreDrillPlugin } from "../restore/drill_daemon.js";
import { createWalStreamingPlugin } from "../wal/streaming.js";
import { NO_CONFIG_MESSAGE, parseCommandLine } from "./cli.js";
import { PGHOARD_SPEC } from "./cli_specs.js";
import { tuneAllocator } from "../common/native_addon.js";

interface DaemonArgs {
  debug?: boolean;
  shortLog?: boolean;
  config?: string;
}

export async function main(argv: string[]): Promise<number> {
  const inv = await parseCommandLine(PGHOARD_SPEC, argv, { stdout: process.stdout, stderr: process.stderr });
  if (typeof inv === "number") return inv;
  const args = inv.opts as DaemonArgs;
  const configFile = inv.args[0];
  const configPath = resolveConfigPath(args.config) ?? configFile;
  if (!configPath) {
    process.stdout.write(`${NO_CONFIG_MESSAGE}\n`);
    return 1;
  }
  if (!existsSync(configPath)) {
    process.stdout.write(`pghoard: '${configPath}' doesn't exist\n`);
    return 1;
  }
  createLogger({ shortLog: args.shortLog === true, debug: args.debug === true, level: "INFO" });
  const log = getLogger("pghoard");
  // Buffers streamed through the codecs reuse memory instead of page-faulting it in afresh.
  tuneAllocator();
  // A stray rejected promise must not take the WAL archiver down; log it like upstream logs a thread's exception.
  process.on("unhandledRejection", (err) => {
    log.error({ err }, `Unhandled promise rejection: ${err instanceof Error ? err.message : String(err)}`);
  });
  const daemon = new PGHoard(configPath, {
    log,
    // Streaming first, then basebackups, then the WAL-position probe (operations.md §2), then
    // restore drills (they read the basebackup listing the basebackup plugin keeps in the state).
    plugins: [
      createWalStreamingPlugin,
      createBasebackupPlugin,
      createMonitoringPlugin,
      (ctx) => createRestoreDrillPlugin(ctx, { configPath: path.resolve(configPath) }),
    ],
    onLogLevel: (level) => void setLogLevel(level),
  });
  try {
    await daemon.init();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stdout.write(`pghoard: failed to load config ${configPath}: ${err.message}\n`);
      return 1;
    }
    if (err instanceof LockHeldError) {
      log.error(`pghoard refuses to start: ${err.message}`);
      return 1;
    }
    log.error({ err }, `pghoard failed to start: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  }
  return daemon.run();
}
