/**
 * The command-line layer of every tool but pghoard_postgres_command (which must start without
 * commander): commands and options are data (`CommandSpec`, see cli_specs.ts) from which the
 * commander program, `--help` and argparse-compatible usage errors are built; one runner maps
 * errors to upstream's one-line `FATAL` reports and exit codes, and handles Ctrl-C.
 */
import { Command, CommanderError, InvalidArgumentError, Option } from "commander";
import { createLogger, getLogger, type Logger } from "../common/logger.js";
import { packageVersion } from "../common/version.js";
import { ConfigError } from "../config/index.js";

export const EXIT_OK = 0;
export const EXIT_FAIL = 1;
/** argparse's status for usage errors. */
export const EXIT_USAGE = 2;

export const NO_CONFIG_MESSAGE = "pghoard: config file path must be given with --config or via env PGHOARD_CONFIG";
export const INTERRUPTED_MESSAGE = "*** interrupted by keyboard ***";

// ---------------------------------------------------------------------------------------------
// Definitions (data only: man pages and shell completion are generated from the same objects)

export interface OptionSpec {
  /** commander/argparse flags: `-D, --debug`, `--site <SITE>`, `--no-verify`. */
  flags: string;
  /** What the option means (one sentence, no default: that is added from `default`/`env`). */
  description: string;
  /** Value when the option is absent. */
  default?: string | number;
  /** Environment variable whose non-empty value is the default (`PGHOARD_CONFIG`). */
  env?: string;
  /** Must be given; `"unless-env"`: only when `env` is unset or empty (argparse `required=not default`). */
  required?: boolean | "unless-env";
  /** Value type; `int` parses like argparse `type=int`, `port` is an int in 0–65535. */
  type?: "string" | "int" | "port";
  /** Allowed values (argparse `choices`). */
  choices?: readonly string[];
  /** May be given several times; the values are collected in a list. */
  repeatable?: boolean;
  /** `version`: prints the package version and exits 0 (placed where argparse lists it in usage). */
  action?: "version";
}

export interface ArgumentSpec {
  name: string;
  description: string;
  optional: boolean;
}

export interface ExitCodeSpec {
  code: number;
  meaning: string;
}

export interface CommandSpec {
  name: string;
  description: string;
  options: readonly OptionSpec[];
  arguments?: readonly ArgumentSpec[];
  /** Sub-commands; the command's own options must then precede the sub-command (argparse). */
  subcommands?: readonly CommandSpec[];
  exitCodes?: readonly ExitCodeSpec[];
}

/** `--config`, as every tool but the daemon spells it. */
export function configOption(description: string, required: OptionSpec["required"] = false): OptionSpec {
  return { flags: "--config <CONFIG>", description, env: "PGHOARD_CONFIG", required };
}

export const VERSION_OPTION: OptionSpec = {
  flags: "--version",
  description: "show program's version number and exit",
  action: "version",
};
export const DEBUG_OPTION: OptionSpec = { flags: "-D, --debug", description: "Enable debug logging" };

// ---------------------------------------------------------------------------------------------
// Value parsers

/** argparse `type=int`: anything else is a usage error. */
export function parseInteger(value: string): number {
  if (!/^[+-]?\d+$/.test(value.trim())) throw new InvalidArgumentError(`invalid int value: '${value}'`);
  return Number.parseInt(value, 10);
}

/** A TCP port number; anything else is a usage error (not a failed connection later). */
export function parsePort(value: string): number {
  const port = parseInteger(value);
  if (port < 0 || port > 65535) throw new InvalidArgumentError(`${port} is not a port number (0-65535)`);
  return port;
}

function collect(value: string, previous: unknown): string[] {
  return [...(Array.isArray(previous) ? (previous as string[]) : []), value];
}

function choiceParser(choices: readonly string[]): (value: string) => string {
  return (value) => {
    if (choices.includes(value)) return value;
    throw new InvalidArgumentError(
      `invalid choice: '${value}' (choose from ${choices.map((c) => `'${c}'`).join(", ")})`,
    );
  };
}

// ---------------------------------------------------------------------------------------------
// Help and usage text

function flagNames(flags: string): string[] {
  return flags.split(/[ ,|]+/).filter((f) => f.startsWith("-"));
}

function metavar(option: OptionSpec): string | undefined {
  if (option.choices) return `{${option.choices.join(",")}}`;
  return /[<[]([^>\]]+)[>\]]/.exec(option.flags)?.[1];
}

function envValue(option: OptionSpec): string | undefined {
  return option.env ? process.env[option.env] || undefined : undefined;
}

function isRequired(option: OptionSpec): boolean {
  return option.required === true || (option.required === "unless-env" && envValue(option) === undefined);
}

/** The option's help line: its meaning, then its default. */
export function optionHelp(option: OptionSpec): string {
  const defaults: string[] = [];
  if (option.env) defaults.push(`$${option.env}`);
  if (option.default !== undefined) defaults.push(JSON.stringify(option.default));
  const notes: string[] = [];
  if (option.required === true) notes.push("required");
  else if (option.required === "unless-env") notes.push(`required unless $${option.env} is set`);
  if (defaults.length) notes.push(`default: ${defaults.join(", else ")}`);
  if (option.repeatable) notes.push("repeatable");
  return notes.length ? `${option.description} (${notes.join("; ")})` : option.description;
}

/** argparse's usage line without `usage: <prog>`, e.g. `[-h] [-D] [--config CONFIG] [config_file]`. */
export function usageLine(spec: CommandSpec, withVersion = true): string {
  const tokens = ["[-h]"];
  for (const option of spec.options) {
    if (option.action === "version" && !withVersion) continue;
    const mv = metavar(option);
    const body = mv ? `${flagNames(option.flags)[0]} ${mv}` : flagNames(option.flags)[0];
    tokens.push(isRequired(option) ? body : `[${body}]`);
  }
  for (const argument of spec.arguments ?? []) tokens.push(argument.optional ? `[${argument.name}]` : argument.name);
  if (spec.subcommands?.length) tokens.push(`{${spec.subcommands.map((s) => s.name).join(",")}}`, "...");
  return tokens.join(" ");
}

function exitCodesHelp(spec: CommandSpec): string {
  if (!spec.exitCodes?.length) return "";
  return `\nExit codes:\n${spec.exitCodes.map((e) => `  ${String(e.code).padEnd(4)}${e.meaning}`).join("\n")}\n`;
}

// ---------------------------------------------------------------------------------------------
// Building the commander program

/** A usage error, reported the argparse way: usage line, `<prog>: error: <message>`, exit 2. */
class UsageError extends Error {
  constructor(
    readonly prog: string,
    readonly usage: string,
    message: string,
  ) {
    super(message);
  }
}

/** commander's message → argparse's wording. */
function argparseMessage(command: Command, message: string, code: string): string {
  const text = message.replace(/^error: /, "");
  const optionFlags = (): string => flagNames(/option '([^']*)'/.exec(text)?.[1] ?? "").join("/");
  switch (code) {
    case "commander.unknownOption":
      return `unrecognized arguments: ${/unknown option '([^']*)'/.exec(text)?.[1] ?? text}`;
    case "commander.excessArguments":
      return `unrecognized arguments: ${command.args.slice(command.registeredArguments.length).join(" ")}`;
    case "commander.missingMandatoryOptionValue":
      return `the following arguments are required: ${optionFlags()}`;
    case "commander.optionMissingArgument":
      return `argument ${optionFlags()}: expected one argument`;
    case "commander.invalidArgument":
      return `argument ${optionFlags()}: ${text.replace(/^.*? is invalid\. /s, "")}`;
    case "commander.unknownCommand": {
      const names = command.commands.map((c) => c.name());
      const given = /unknown command '([^']*)'/.exec(text)?.[1] ?? "";
      return `argument {${names.join(",")}}: invalid choice: '${given}' (choose from ${names.map((n) => `'${n}'`).join(", ")})`;
    }
    case "commander.missingArgument":
      return `the following arguments are required: ${/argument '([^']*)'/.exec(text)?.[1] ?? text}`;
    default:
      return text;
  }
}

/** commander with argparse's usage errors. */
class ArgparseCommand extends Command {
  usageText = "";

  override createCommand(name: string): ArgparseCommand {
    return new ArgparseCommand(name);
  }

  override error(message: string, errorOptions?: { code?: string; exitCode?: number }): never {
    const prog = [...ancestry(this)].map((c) => c.name()).join(" ");
    throw new UsageError(prog, this.usageText, argparseMessage(this, message, errorOptions?.code ?? "commander.error"));
  }
}

function* ancestry(command: Command): Generator<Command> {
  if (command.parent) yield* ancestry(command.parent);
  yield command;
}

export interface Io {
  stdout: NodeJS.WritableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream;
}

function addOption(command: Command, spec: OptionSpec): void {
  if (spec.action === "version") {
    command.version(packageVersion(), spec.flags, spec.description);
    return;
  }
  const option = new Option(spec.flags, optionHelp(spec));
  if (spec.choices) option.choices(spec.choices).argParser(choiceParser(spec.choices));
  else if (spec.type === "int") option.argParser(parseInteger);
  else if (spec.type === "port") option.argParser(parsePort);
  else if (spec.repeatable) option.argParser(collect);
  const fromEnv = envValue(spec);
  if (fromEnv !== undefined) option.default(fromEnv);
  else if (spec.default !== undefined) option.default(spec.default);
  if (isRequired(spec)) option.makeOptionMandatory();
  command.addOption(option);
}

function configure(
  command: ArgparseCommand,
  spec: CommandSpec,
  io: Io,
  onAction: (inv: Invocation) => void,
  topLevel: boolean,
): void {
  command.usageText = usageLine(spec, topLevel);
  command
    .description(spec.description)
    .usage(command.usageText)
    .helpOption("-h, --help", "show this help message and exit")
    .exitOverride()
    .configureOutput({
      writeOut: (s) => io.stdout.write(s),
      // Usage errors are thrown (error() above), so what comes here is the help commander prints when
      // a sub-command is missing: on stdout, as upstream's print_help().
      writeErr: (s) => (spec.subcommands?.length ? io.stdout : io.stderr).write(s),
    })
    // Defaults are part of each option's text already (optionHelp).
    .configureHelp({ optionDescription: (o) => o.description })
    .showSuggestionAfterError(false)
    .allowExcessArguments(false);
  const epilogue = exitCodesHelp(spec);
  if (epilogue) command.addHelpText("after", epilogue);
  for (const option of spec.options) addOption(command, option);
  for (const argument of spec.arguments ?? [])
    command.argument(argument.optional ? `[${argument.name}]` : `<${argument.name}>`, argument.description);
  if (spec.subcommands?.length) {
    // argparse: the command's own options must precede the sub-command.
    command.enablePositionalOptions();
    // argparse has no `help <command>` sub-command; commander would add one.
    command.helpCommand(false);
    for (const sub of spec.subcommands) {
      const child = command.command(sub.name) as ArgparseCommand;
      configure(child, sub, io, onAction, false);
    }
  } else {
    command.action((...params: unknown[]) => {
      const self = params[params.length - 1] as Command;
      const globals = self.parent ? self.parent.opts() : {};
      onAction({ command: self.parent ? self.name() : undefined, opts: self.opts(), globals, args: self.args.slice() });
    });
  }
}

/** What the command line asked for. */
export interface Invocation {
  /** The sub-command, when the command has them. */
  command: string | undefined;
  /** Options of the (sub-)command, by commander's camelCase names. */
  opts: Record<string, unknown>;
  /** Options of the top-level command when a sub-command ran. */
  globals: Record<string, unknown>;
  /** Positional arguments. */
  args: string[];
}

/** The commander program of a spec (for --help rendering and tests). */
export function buildProgram(
  spec: CommandSpec,
  io: Io,
  onAction: (inv: Invocation) => void = () => undefined,
): Command {
  const program = new ArgparseCommand(spec.name);
  configure(program, spec, io, onAction, true);
  return program;
}

/** Parses argv; an exit code when nothing is left to do (help, version, usage error). */
export async function parseCommandLine(spec: CommandSpec, argv: string[], io: Io): Promise<Invocation | number> {
  let invocation: Invocation | undefined;
  const program = buildProgram(spec, io, (inv) => (invocation = inv));
  try {
    await program.parseAsync(argv, { from: "user" });
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr.write(`usage: ${err.prog} ${err.usage}\n${err.prog}: error: ${err.message}\n`);
      return EXIT_USAGE;
    }
    if (err instanceof CommanderError) {
      // --help/--version: 0; no sub-command: commander printed the help (stdout), 1 like upstream.
      return err.code === "commander.helpDisplayed" || err.code === "commander.version" ? EXIT_OK : err.exitCode;
    }
    throw err;
  }
  return invocation ?? EXIT_FAIL;
}

// ---------------------------------------------------------------------------------------------
// Running: fatal errors and Ctrl-C

/** Ctrl-C while a command was working (upstream's KeyboardInterrupt). */
export class KeyboardInterrupt extends Error {
  constructor() {
    super("interrupted");
    this.name = "KeyboardInterrupt";
  }
}

/** The class name upstream would print for an error (our ConfigError is its InvalidConfigurationError). */
export function upstreamErrorName(err: unknown): string {
  if (err instanceof ConfigError) return "InvalidConfigurationError";
  return err instanceof Error ? err.name : "Error";
}

export interface FatalReport {
  /** Where the one line goes: stdout, or the tool's logger. */
  write(line: string): void;
  /** `FATAL: <Class>: <message>` (default) or, like pghoard_create_keys, `FATAL: <message>`. */
  withClassName?: boolean;
  /** Errors reported as they are; default: all. */
  expected?(err: unknown): boolean;
  /** What to report for any other error; without it, it propagates (a bug: stack trace, exit 1). */
  unexpected?(err: unknown): Error;
  /** Also the stack on stderr (`--debug`). */
  stack?: boolean;
}

export interface RunOptions {
  io?: Io;
  /** How an error escaping the command is reported (exit 1); without it, it propagates. */
  fatal?(inv: Invocation): FatalReport;
  /** Ctrl-C while the command runs: upstream's message on stdout and exit 1 at once. Without it, Node's default. */
  exitOnInterrupt?: boolean;
}

/** Parses argv per `spec` and runs `command`; returns the process exit code. */
export async function runCli(
  spec: CommandSpec,
  argv: string[],
  command: (inv: Invocation, io: Io) => Promise<number>,
  options: RunOptions = {},
): Promise<number> {
  const io = options.io ?? { stdout: process.stdout, stderr: process.stderr };
  ignoreOutputErrors(io.stdout);
  ignoreOutputErrors(io.stderr);
  const inv = await parseCommandLine(spec, argv, io);
  if (typeof inv === "number") return inv;
  const removeSigint = options.exitOnInterrupt ? exitOnKeyboardInterrupt(io) : () => undefined;
  try {
    return await command(inv, io);
  } catch (err) {
    if (err instanceof KeyboardInterrupt) {
      io.stdout.write(`${INTERRUPTED_MESSAGE}\n`);
      return EXIT_FAIL;
    }
    const report = options.fatal?.(inv);
    if (!report) throw err;
    let shown = err;
    if (report.expected && !report.expected(err)) {
      if (!report.unexpected) throw err;
      shown = report.unexpected(err);
    }
    if (report.stack && err instanceof Error && err.stack) io.stderr.write(`${err.stack}\n`);
    const message = shown instanceof Error ? shown.message : String(shown);
    report.write(
      report.withClassName === false ? `FATAL: ${message}` : `FATAL: ${upstreamErrorName(shown)}: ${message}`,
    );
    return EXIT_FAIL;
  } finally {
    removeSigint();
  }
}

const guardedOutputs = new WeakSet<NodeJS.WritableStream>();

/**
 * A closed output (`… | head -1`: EPIPE) must not abort the work: without a listener the stream's
 * 'error' event would be an uncaught exception. Once errored, the stream drops further writes.
 */
export function ignoreOutputErrors(stream: NodeJS.WritableStream): void {
  if (guardedOutputs.has(stream)) return;
  guardedOutputs.add(stream);
  // Embedders and tests may pass a bare { write } sink: nothing to guard there.
  if (typeof stream.on === "function") stream.on("error", () => undefined);
}

/** Ctrl-C prints upstream's message and exits 1; returns the function that removes the handler. */
function exitOnKeyboardInterrupt(io: Io): () => void {
  const onSigint = (): void => {
    io.stdout.write(`${INTERRUPTED_MESSAGE}\n`);
    process.exit(EXIT_FAIL);
  };
  process.once("SIGINT", onSigint);
  return () => process.removeListener("SIGINT", onSigint);
}

/**
 * Ctrl-C (and any other of `signals`) aborts `signal` with a KeyboardInterrupt (the work winds
 * down, runCli reports it); a second one exits 1 at once. Returns the function that removes the handler.
 */
export function abortOnKeyboardInterrupt(signals: readonly NodeJS.Signals[] = ["SIGINT"]): {
  signal: AbortSignal;
  dispose(): void;
} {
  const controller = new AbortController();
  const onSigint = (): void => {
    if (controller.signal.aborted) process.exit(EXIT_FAIL);
    controller.abort(new KeyboardInterrupt());
  };
  for (const name of signals) process.on(name, onSigint);
  return { signal: controller.signal, dispose: () => signals.forEach((name) => process.off(name, onSigint)) };
}

// ---------------------------------------------------------------------------------------------
// Helpers the tools share

/** `--config`, else $PGHOARD_CONFIG; prints upstream's message and yields null when neither is set. */
export function configPathOrNull(cliValue: string | undefined, io: Pick<Io, "stdout"> = process): string | null {
  const value = cliValue ?? process.env.PGHOARD_CONFIG;
  if (!value) {
    io.stdout.write(`${NO_CONFIG_MESSAGE}\n`);
    return null;
  }
  return value;
}

/** Sets up process-wide logging for a command-line tool and returns its named logger. */
export function toolLogger(name: string, options: { debug?: boolean } = {}): Logger {
  createLogger({ level: "INFO", debug: options.debug === true });
  return getLogger(name);
}
