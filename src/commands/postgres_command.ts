/**
 * pghoard_postgres_command: PostgreSQL's archive_command / restore_command client (cli.md §6,
 * http-api.md §9). PostgreSQL starts it once per WAL segment, so start-up time matters: this file
 * imports node built-ins only (no commander, config, logger, compression or SDKs), and only ones
 * Node's bootstrap has loaded already (node:fs, node:path, node:net), so they cost nothing; the
 * version module is loaded only for --version. The direct mode (`--config`: no daemon) and its
 * helper modes load restore/wal_direct.js with a dynamic import, only when asked for.
 */
import { existsSync, renameSync } from "node:fs";
import path from "node:path";

export const EXIT_OK = 0;
export const EXIT_FAIL = 1;
export const EXIT_UNEXPECTED = 2;
export const EXIT_ARCHIVE_FAIL = 3;
export const EXIT_NOT_FOUND = 4;
export const EXIT_ABORT = 5;

const DEFAULT_HOST = "127.0.0.1";
const DEFAULT_PORT = 16000;
const RETRY_COUNT = 3;
/** Seconds between restore-mode connection attempts; tests shorten it with this variable. */
const RETRY_INTERVAL_ENV = "PGHOARD_POSTGRES_COMMAND_RETRY_INTERVAL";

const WAL_RE = /^[A-F0-9]{24}$/;
const HISTORY_RE = /^[A-F0-9]{8}\.history$/;

/** An error with the exit code the process should end with (upstream's PGCError). */
class CommandError extends Error {
  constructor(
    message: string,
    readonly exitCode: number = EXIT_FAIL,
  ) {
    super(message);
  }
}

/** argparse-style usage error: always mapped to EXIT_ABORT (upstream catches SystemExit). */
class UsageError extends Error {}

/** Thrown for --version: the version module is loaded only then. */
class VersionRequest extends Error {}

/** Thrown for -h/--help: the option definitions and the help renderer are loaded only then. */
class HelpRequest extends Error {}

const MODES = ["archive", "restore", "prefetch", "cleanup"] as const;
type Mode = (typeof MODES)[number];

export interface PostgresCommandOptions {
  host: string;
  port: number;
  username?: string;
  password?: string;
  /** Direct mode: read the site's object storage with this config instead of asking the daemon. */
  config?: string;
  site: string;
  xlog: string;
  output?: string;
  /** prefetch: internal, started by the direct mode; cleanup: recovery_end_command of the direct mode. */
  mode: Mode;
}

const USAGE =
  "usage: pghoard_postgres_command [-h] [--version] [--host HOST] [--port PORT] [--username USERNAME]\n" +
  "                                [--password PASSWORD] [--config CONFIG] --site SITE --xlog XLOG\n" +
  "                                [--output OUTPUT] --mode {archive,restore,cleanup}";

export const OPTION_NAMES = [
  "help",
  "version",
  "host",
  "port",
  "username",
  "password",
  "config",
  "site",
  "xlog",
  "output",
  "mode",
] as const;
type OptionName = (typeof OPTION_NAMES)[number];

/** Resolves `--opt` the way argparse does: exact name, else a unique prefix. */
function resolveOptionName(given: string): OptionName {
  const exact = OPTION_NAMES.find((n) => n === given);
  if (exact) return exact;
  const matches = OPTION_NAMES.filter((n) => n.startsWith(given));
  if (matches.length === 1) return matches[0];
  if (matches.length > 1) {
    throw new UsageError(`ambiguous option: --${given} could match ${matches.map((m) => `--${m}`).join(", ")}`);
  }
  throw new UsageError(`unrecognized arguments: --${given}`);
}

export function parseArgs(argv: string[]): PostgresCommandOptions {
  const values: Partial<Record<OptionName, string>> = {};
  const positional: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "-h") throw new HelpRequest();
    if (arg === "--") {
      positional.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith("--") || arg === "--") {
      positional.push(arg);
      continue;
    }
    const eq = arg.indexOf("=");
    const name = resolveOptionName(eq >= 0 ? arg.slice(2, eq) : arg.slice(2));
    if (name === "help") throw new HelpRequest();
    if (name === "version") throw new VersionRequest();
    let value: string;
    if (eq >= 0) {
      value = arg.slice(eq + 1);
    } else {
      const next = argv[i + 1];
      // argparse treats anything starting with "-" (except negative numbers) as the next option.
      if (next === undefined || (next.startsWith("-") && !/^-\d/.test(next) && next !== "-")) {
        throw new UsageError(`argument --${name}: expected one argument`);
      }
      value = next;
      i++;
    }
    values[name] = value;
  }
  if (positional.length > 0) throw new UsageError(`unrecognized arguments: ${positional.join(" ")}`);
  const mode = values.mode as Mode | undefined;
  const required = mode === "cleanup" ? (["mode"] as const) : (["site", "xlog", "mode"] as const);
  const missing = required.filter((n) => values[n] === undefined);
  if (missing.length > 0) {
    throw new UsageError(`the following arguments are required: ${missing.map((m) => `--${m}`).join(", ")}`);
  }
  if (mode === undefined || !MODES.includes(mode)) {
    throw new UsageError(`argument --mode: invalid choice: '${mode}' (choose from 'archive', 'restore', 'cleanup')`);
  }
  if (values.config !== undefined && mode === "archive") {
    throw new UsageError("argument --config: archive mode always goes through the daemon (--config is for restore)");
  }
  if ((mode === "prefetch" || (mode === "restore" && values.config !== undefined)) && values.output === undefined) {
    throw new UsageError("argument --output: required in the direct restore mode (--config)");
  }
  if (mode === "prefetch" && values.config === undefined) {
    throw new UsageError("argument --config: required with --mode prefetch");
  }
  let port = DEFAULT_PORT;
  if (values.port !== undefined) {
    const trimmed = values.port.trim();
    if (!/^[+-]?\d+$/.test(trimmed)) throw new UsageError(`argument --port: invalid int value: '${values.port}'`);
    port = Number.parseInt(trimmed, 10);
    // argparse would take it; the connection would then fail with a RangeError stack trace.
    if (port < 0 || port > 65535) throw new UsageError(`argument --port: ${port} is not a port number (0-65535)`);
  }
  return {
    host: values.host ?? DEFAULT_HOST,
    port,
    username: values.username,
    password: values.password,
    config: values.config,
    site: values.site as string,
    xlog: values.xlog as string,
    output: values.output,
    mode,
  };
}

/** A failure to talk to the daemon at all (as opposed to an HTTP error status). */
class ConnectionFailure extends Error {}

/** Characters Python's http.client refuses in a request target (it raises InvalidURL). */
const DISALLOWED_TARGET_CHARS = /[\x00-\x20\x7f-\uffff]/;
/** Header values must be latin-1 without control characters (no header injection). */
const DISALLOWED_HEADER_CHARS = /[^\t\x20-\x7e\x80-\xff]/;

/** Bytes of a response body kept: the daemon's error bodies are one short reason. */
const MAX_BODY = 4096;

interface HttpResult {
  status: number;
  /** The daemon's reason for an error status (one line, trimmed), "" when none. */
  body: string;
}

/** Parses a complete response head plus whatever body bytes arrived; null while incomplete. */
function parseResponse(received: Buffer, isHead: boolean, ended: boolean): HttpResult | null {
  const headEnd = received.indexOf("\r\n\r\n");
  if (headEnd < 0) return null;
  const lines = received.subarray(0, headEnd).toString("latin1").split("\r\n");
  const match = /^HTTP\/\d\.\d (\d{3})(?: |$)/.exec(lines[0]);
  if (!match) throw new ConnectionFailure(`BadStatusLine: ${JSON.stringify(lines[0])}`);
  const lengthLine = lines.find((l) => /^content-length:/i.test(l));
  const length = lengthLine ? Number.parseInt(lengthLine.slice(lengthLine.indexOf(":") + 1), 10) : NaN;
  const body = received.subarray(headEnd + 4);
  const wanted = isHead ? 0 : Math.min(Number.isFinite(length) ? length : MAX_BODY, MAX_BODY);
  if (body.length < wanted && !ended) return null;
  const text = body.subarray(0, wanted).toString("utf8").replace(/\s+/g, " ").trim();
  return { status: Number(match[1]), body: text };
}

/**
 * One HTTP/1.1 request over a plain TCP socket; resolves to the status and the (short) body,
 * which for errors carries the daemon's reason.
 * node:net is used instead of node:http because node:http alone costs ~6 ms of CPU to load, a
 * tenth of this process's whole life, once per WAL segment; node:net is loaded at bootstrap.
 */
async function httpRequest(
  opts: PostgresCommandOptions,
  method: string,
  requestPath: string,
  headers: Record<string, string>,
): Promise<HttpResult> {
  if (DISALLOWED_TARGET_CHARS.test(requestPath))
    throw new Error(`URL can't contain control characters or non-ASCII: ${JSON.stringify(requestPath)}`);
  const allHeaders: Record<string, string> = {
    Host: opts.host.includes(":") ? `[${opts.host}]:${opts.port}` : `${opts.host}:${opts.port}`,
    "Content-Length": "0",
    Connection: "close",
    ...headers,
  };
  if (opts.username && opts.password) {
    allHeaders.Authorization = "Basic " + Buffer.from(`${opts.username}:${opts.password}`, "utf8").toString("base64");
  }
  let head = `${method} ${requestPath} HTTP/1.1\r\n`;
  for (const [name, value] of Object.entries(allHeaders)) {
    if (DISALLOWED_HEADER_CHARS.test(value))
      throw new Error(`Invalid header value for ${name}: ${JSON.stringify(value)}`);
    head += `${name}: ${value}\r\n`;
  }
  const request = Buffer.from(`${head}\r\n`, "latin1");
  const net = await import("node:net");
  return new Promise((resolve, reject) => {
    let received = Buffer.alloc(0);
    let settled = false;
    const finish = (err: Error | null, result?: HttpResult): void => {
      if (settled) return;
      settled = true;
      socket.destroy();
      if (err) reject(err);
      else resolve(result as HttpResult);
    };
    const check = (ended: boolean): void => {
      try {
        const result = parseResponse(received, method === "HEAD", ended);
        if (result) finish(null, result);
        else if (ended)
          finish(new ConnectionFailure("RemoteDisconnected: Remote end closed connection without response"));
        else if (received.length > 16384 + MAX_BODY)
          finish(new ConnectionFailure("BadStatusLine: response head too long"));
      } catch (err) {
        finish(err as Error);
      }
    };
    const socket = net.connect({ host: opts.host, port: opts.port }, () => socket.write(request));
    socket.on("data", (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      check(false);
    });
    socket.on("end", () => check(true));
    socket.on("error", (err: NodeJS.ErrnoException) =>
      finish(new ConnectionFailure(`${err.code ?? err.name}: ${err.message}`)),
    );
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function retryIntervalSeconds(): number {
  const raw = process.env[RETRY_INTERVAL_ENV];
  if (raw !== undefined && raw.trim() !== "") {
    const value = Number(raw);
    if (Number.isFinite(value) && value >= 0) return value;
  }
  return 5;
}

async function archiveCommand(opts: PostgresCommandOptions): Promise<void> {
  if (opts.xlog.endsWith(".backup")) {
    process.stdout.write(`Ignoring request to archive backup label '${opts.xlog}': PGHoard does not use them\n`);
    return;
  }
  const { status, body } = await httpRequest(opts, "PUT", `/${opts.site}/archive/${opts.xlog}`, {});
  if (status === 201) return;
  throw new CommandError(`Archival failed with HTTP status ${status}${reasonSuffix(body)}`, EXIT_ARCHIVE_FAIL);
}

async function restoreCommand(opts: PostgresCommandOptions): Promise<void> {
  let method = "HEAD";
  const headers: Record<string, string> = {};
  if (opts.output) {
    // PostgreSQL runs restore_command in $PGDATA with a relative %p.
    const outputPath = path.isAbsolute(opts.output) ? opts.output : path.join(process.cwd(), opts.output);
    // Fast path: the daemon already prefetched this file next to the destination.
    if (WAL_RE.test(opts.xlog) || HISTORY_RE.test(opts.xlog)) {
      const prefetchPath = path.join(path.dirname(outputPath), `${opts.xlog}.pghoard.prefetch`);
      if (existsSync(prefetchPath)) {
        try {
          renameSync(prefetchPath, outputPath);
          return;
        } catch {
          // The daemon may have renamed it concurrently; fall back to asking the daemon.
        }
      }
    }
    headers["x-pghoard-target-path"] = outputPath;
    method = "GET";
  }
  const requestPath = `/${opts.site}/archive/${opts.xlog}`;
  const interval = retryIntervalSeconds();
  let status = 0;
  let body = "";
  for (let retries = RETRY_COUNT - 1; retries >= 0; retries--) {
    try {
      ({ status, body } = await httpRequest(opts, method, requestPath, headers));
      break;
    } catch (err) {
      if (!(err instanceof ConnectionFailure)) throw err;
      const message = `HTTP connection to ${opts.host}:${opts.port} failed: ${err.message}`;
      if (retries === 0) throw new CommandError(message, EXIT_ABORT);
      process.stdout.write(`${message}; ${retries} retries left, sleeping ${interval} seconds and retrying\n`);
      await sleep(interval * 1000);
    }
  }
  if (status === 201 && method === "GET") return;
  if (status === 200 && method === "HEAD") return;
  if (status === 404 && UNKNOWN_SITE_RE.test(body)) {
    // Exit 4 would tell PostgreSQL the archive ends here: a wrong site must stop recovery instead.
    throw new CommandError(
      `Restore failed: the daemon at ${opts.host}:${opts.port} has no site '${opts.site}' (${body})`,
      EXIT_ABORT,
    );
  }
  if (status === 404) throw new CommandError(`'${opts.xlog}' not found from archive`, EXIT_NOT_FOUND);
  throw new CommandError(`Restore failed with HTTP status ${status}${reasonSuffix(body)}`, EXIT_ABORT);
}

/** The daemon's 404 body for a site it does not have (http-api.md §3; upstream's wording too). */
const UNKNOWN_SITE_RE = /^Site: .* not found for path /;

function reasonSuffix(body: string): string {
  return body ? `: ${body.length > 300 ? `${body.slice(0, 300)}…` : body}` : "";
}

/** Direct mode and its helper modes: no daemon, the heavy modules loaded only now. */
async function directCommand(opts: PostgresCommandOptions): Promise<void> {
  const direct = await import("../restore/wal_direct.js");
  const where = (p: string): string => (path.isAbsolute(p) ? p : path.join(process.cwd(), p));
  if (opts.mode === "cleanup") {
    // recovery_end_command runs in $PGDATA; pg_xlog before PostgreSQL 10.
    const walDir = opts.output ? where(opts.output) : existsSync("pg_wal") ? where("pg_wal") : where("pg_xlog");
    let removed: number;
    try {
      removed = await direct.cleanupPrefetch(walDir);
    } catch (err) {
      throw new CommandError(`Removing prefetch files from ${walDir} failed: ${(err as Error).message}`, EXIT_FAIL);
    }
    if (removed > 0) process.stdout.write(`Removed ${removed} leftover prefetch files from ${walDir}\n`);
    return;
  }
  const directOpts = {
    configPath: where(opts.config as string),
    site: opts.site,
    xlog: opts.xlog,
    output: where(opts.output as string),
    warn: (line: string) => process.stdout.write(`${line}\n`),
  };
  if (opts.mode === "prefetch") {
    await direct.runPrefetch(directOpts);
    return;
  }
  try {
    if ((await direct.restoreWalDirect(directOpts)) === "restored") return;
  } catch (err) {
    if (err instanceof direct.DirectRestoreError) throw new CommandError(`Restore failed: ${err.message}`, EXIT_ABORT);
    throw err;
  }
  throw new CommandError(`'${opts.xlog}' not found from archive`, EXIT_NOT_FOUND);
}

/**
 * How messages name the command: the shell client (bin/pghoard_postgres_command) hands unusual cases
 * to this one and passes its own name, so both print the same lines.
 */
function commandName(): string {
  return process.env.PGHOARD_POSTGRES_COMMAND_ARGV0 || process.argv[1] || "pghoard_postgres_command";
}

/** Runs the command; resolves to the process exit code (never throws). */
export async function main(argv: string[]): Promise<number> {
  let failExitCode = EXIT_ABORT;
  try {
    const opts = parseArgs(argv);
    if (opts.mode === "archive") {
      failExitCode = EXIT_UNEXPECTED; // PostgreSQL simply retries archive_command later
      await archiveCommand(opts);
    } else if (opts.config !== undefined || opts.mode !== "restore") {
      await directCommand(opts);
    } else {
      await restoreCommand(opts);
    }
    return EXIT_OK;
  } catch (err) {
    if (err instanceof HelpRequest) {
      const { POSTGRES_COMMAND_SPEC } = await import("./postgres_command_spec.js");
      const { renderPlainHelp } = await import("./cli_help.js");
      process.stdout.write(renderPlainHelp(POSTGRES_COMMAND_SPEC));
      return EXIT_OK;
    }
    if (err instanceof VersionRequest) {
      const { packageVersion } = await import("../common/version.js");
      process.stdout.write(`${packageVersion()}\n`);
      return EXIT_OK;
    }
    if (err instanceof UsageError) {
      process.stderr.write(`${USAGE}\npghoard_postgres_command: error: ${err.message}\n`);
      return EXIT_ABORT;
    }
    if (err instanceof CommandError) {
      process.stdout.write(`${commandName()}: ERROR: ${err.message}\n`);
      return err.exitCode;
    }
    if (err instanceof ConnectionFailure) {
      process.stderr.write(`${commandName()}: ERROR: ${err.message}\n`);
      return failExitCode;
    }
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    return failExitCode;
  }
}
