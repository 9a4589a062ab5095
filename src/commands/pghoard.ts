/**
 * `pghoard` — the backup daemon (cli.md §1).
 *   pghoard [-h] [-D] [--version] [-s] [--config CONFIG] [config_file]
 */
import { existsSync } from "node:fs";
import { createLogger, getLogger, setLogLevel } from "../common/logger.js";
import { ConfigError, resolveConfigPath } from "../config/index.js";
import { createBasebackupPlugin } from "../basebackup/daemon.js";
import { PGHoard } from "../daemon/pghoard.js";
import { createMonitoringPlugin } from "../monitoring/daemon_plugin.js";
import { createWalStreamingPlugin } from "../wal/streaming.js";

const VERSION = "0.1.0";
const USAGE = "usage: pghoard [-h] [-D] [--version] [-s] [--config CONFIG] [config_file]";

interface DaemonArgs {
  debug: boolean;
  shortLog: boolean;
  config?: string;
  configFile?: string;
}

class UsageError extends Error {}

function parseArgs(argv: string[]): DaemonArgs | "help" | "version" {
  const args: DaemonArgs = { debug: false, shortLog: false };
  const positional: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "-h" || arg === "--help") return "help";
    if (arg === "--version") return "version";
    if (arg === "-D" || arg === "--debug") args.debug = true;
    else if (arg === "-s" || arg === "--short-log") args.shortLog = true;
    else if (arg === "--config") {
      if (i + 1 >= argv.length) throw new UsageError("argument --config: expected one argument");
      args.config = argv[++i];
    } else if (arg.startsWith("--config=")) args.config = arg.slice("--config=".length);
    else if (/^-[Ds]+$/.test(arg)) {
      if (arg.includes("D")) args.debug = true;
      if (arg.includes("s")) args.shortLog = true;
    } else if (arg.startsWith("-") && arg !== "-") throw new UsageError(`unrecognized arguments: ${arg}`);
    else positional.push(arg);
  }
  if (positional.length > 1) throw new UsageError(`unrecognized arguments: ${positional.slice(1).join(" ")}`);
  args.configFile = positional[0];
  return args;
}

export async function main(argv: string[]): Promise<number> {
  let args: ReturnType<typeof parseArgs>;
  try {
    args = parseArgs(argv);
  } catch (err) {
    process.stderr.write(`${USAGE}\npghoard: error: ${(err as Error).message}\n`);
    return 2;
  }
  if (args === "help") {
    process.stdout.write(`${USAGE}\n\npostgresql automatic backup daemon\n`);
    return 0;
  }
  if (args === "version") {
    process.stdout.write(`${VERSION}\n`);
    return 0;
  }
  const configPath = resolveConfigPath(args.config) ?? args.configFile;
  if (!configPath) {
    process.stdout.write("pghoard: config file path must be given with --config or via env PGHOARD_CONFIG\n");
    return 1;
  }
  if (!existsSync(configPath)) {
    process.stdout.write(`pghoard: '${configPath}' doesn't exist\n`);
    return 1;
  }
  createLogger({ shortLog: args.shortLog, debug: args.debug, level: "INFO" });
  const log = getLogger("pghoard");
  // A stray rejected promise must not take the WAL archiver down; log it like upstream logs a thread's exception.
  process.on("unhandledRejection", (err) => {
    log.error({ err }, `Unhandled promise rejection: ${err instanceof Error ? err.message : String(err)}`);
  });
  const daemon = new PGHoard(configPath, {
    log,
    // Streaming first, then basebackups, then the WAL-position probe (operations.md §2).
    plugins: [createWalStreamingPlugin, createBasebackupPlugin, createMonitoringPlugin],
    onLogLevel: (level) => void setLogLevel(level),
  });
  try {
    await daemon.init();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stdout.write(`pghoard: failed to load config ${configPath}: ${err.message}\n`);
      return 1;
    }
    log.error({ err }, `pghoard failed to start: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  }
  return daemon.run();
}
