/**
 * Shared plumbing of pghoard_archive_cleanup and pghoard_archive_sync: argparse-compatible exit
 * codes on top of commander (usage errors → 2, --help/--version → 0), the package version, and the
 * "config file path must be given" rule of cli.md.
 */
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Command, CommanderError, InvalidArgumentError } from "commander";
import { createLogger, getLogger, type Logger } from "../common/logger.js";

export const EXIT_OK = 0;
export const EXIT_FAIL = 1;
export const EXIT_USAGE = 2;

export const NO_CONFIG_MESSAGE = "pghoard: config file path must be given with --config or via env PGHOARD_CONFIG";

/** Version from the package.json above this file (dist/src/commands → repo or /usr/lib/pghoard). */
export function packageVersion(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    try {
      const pkg = JSON.parse(readFileSync(path.join(dir, "package.json"), "utf8")) as { version?: string };
      if (pkg.version) return pkg.version;
    } catch {
      // not here, keep walking up
    }
    const parent = path.dirname(dir);
    if (parent === dir) return "unknown";
    dir = parent;
  }
}

export function newProgram(name: string, description: string): Command {
  return new Command(name)
    .description(description)
    .version(packageVersion(), "--version", "show program version")
    .helpOption("-h, --help", "show this help message and exit")
    .exitOverride()
    .configureOutput({
      writeOut: (s) => process.stdout.write(s),
      writeErr: (s) => process.stderr.write(s),
    })
    .showHelpAfterError(false)
    .allowExcessArguments(false);
}

/**
 * Parses argv; returns the options, or an exit code when commander printed help/version (0) or a
 * usage error (2, as argparse does).
 */
export function parseArgs<T>(program: Command, argv: string[]): { opts: T } | { exitCode: number } {
  try {
    program.parse(argv, { from: "user" });
    return { opts: program.opts() as T };
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === "commander.helpDisplayed" || err.code === "commander.version" || err.code === "commander.help") {
        return { exitCode: EXIT_OK };
      }
      process.stderr.write(program.helpInformation().split("\n")[0] + "\n");
      return { exitCode: EXIT_USAGE };
    }
    throw err;
  }
}

/** `--config`, else $PGHOARD_CONFIG; prints upstream's message and yields null when neither is set. */
export function configPathOrNull(cliValue: string | undefined): string | null {
  const value = cliValue ?? process.env.PGHOARD_CONFIG;
  if (!value) {
    process.stdout.write(`${NO_CONFIG_MESSAGE}\n`);
    return null;
  }
  return value;
}

/** Integer parser for commander options (argparse `type=int` semantics: usage error otherwise). */
export function parseInteger(value: string): number {
  if (!/^[+-]?\d+$/.test(value.trim())) {
    throw new InvalidArgumentError(`invalid int value: '${value}'`);
  }
  return Number.parseInt(value, 10);
}

/** Sets up process-wide logging for a command-line tool and returns its named logger. */
export function toolLogger(name: string, options: { debug?: boolean } = {}): Logger {
  createLogger({ level: "INFO", debug: options.debug === true });
  return getLogger(name);
}

/** Ctrl-C prints upstream's message and exits 1; returns the function that removes the handler. */
export function exitOnKeyboardInterrupt(): () => void {
  const onSigint = () => {
    process.stdout.write("*** interrupted by keyboard ***\n");
    process.exit(EXIT_FAIL);
  };
  process.once("SIGINT", onSigint);
  return () => process.removeListener("SIGINT", onSigint);
}
