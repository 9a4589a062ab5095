/**
 * pghoard_postgres_command: PostgreSQL's archive_command / restore_command client (cli.md §6,
 * http-api.md §9). PostgreSQL starts it once per WAL segment, so start-up time matters: this file
 * imports node built-ins only (no commander, config, logger, compression or SDKs), and only ones
 * Node's bootstrap has loaded already (node:fs, node:path, node:net), so they cost nothing; the
 * version module is loaded only for --version.
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

/** Thrown for --help / --version, which print and stop. */
class EarlyExit extends Error {
  constructor(
    readonly exitCode: number,
    readonly output: string,
  ) {
    super("early exit");
  }
}

/** Thrown for --version: the version module is loaded only then. */
class VersionRequest extends Error {}

export interface PostgresCommandOptions {
  host: string;
  port: number;
  username?: string;
  password?: string;
  site: string;
  xlog: string;
  output?: string;
  mode: "archive" | "restore";
}

const USAGE =
  "usage: pghoard_postgres_command [-h] [--version] [--host HOST] [--port PORT] [--username USERNAME]\n" +
  "                                [--password PASSWORD] --site SITE --xlog XLOG [--output OUTPUT]\n" +
  "                                --mode {archive,restore}";

const OPTION_NAMES = [
  "help",
  "version",
  "host",
  "port",
  "username",
  "password",
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
    if (arg === "-h") throw new EarlyExit(EXIT_OK, `${USAGE}\n`);
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
    if (name === "help") throw new EarlyExit(EXIT_OK, `${USAGE}\n`);
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
  const missing = (["site", "xlog", "mode"] as const).filter((n) => values[n] === undefined);
  if (missing.length > 0) {
    throw new UsageError(`the following arguments are required: ${missing.map((m) => `--${m}`).join(", ")}`);
  }
  const mode = values.mode;
  if (mode !== "archive" && mode !== "restore") {
    throw new UsageError(`argument --mode: invalid choice: '${mode}' (choose from 'archive', 'restore')`);
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

/**
 * One HTTP/1.1 request over a plain TCP socket; resolves to the response status. Only the
 * status line is needed (the daemon's answers to these requests carry no meaningful body).
 * node:net is used instead of node:http because node:http alone costs ~6 ms of CPU to load, a
 * tenth of this process's whole life, once per WAL segment; node:net is loaded at bootstrap.
 */
async function httpRequest(
  opts: PostgresCommandOptions,
  method: string,
  requestPath: string,
  headers: Record<string, string>,
): Promise<number> {
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
    const finish = (err: Error | null, status?: number): void => {
      if (settled) return;
      settled = true;
      socket.destroy();
      if (err) reject(err);
      else resolve(status as number);
    };
    const socket = net.connect({ host: opts.host, port: opts.port }, () => socket.write(request));
    socket.on("data", (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      const eol = received.indexOf("\r\n");
      if (eol < 0) {
        if (received.length > 8192) finish(new ConnectionFailure("BadStatusLine: status line too long"));
        return;
      }
      const line = received.subarray(0, eol).toString("latin1");
      const match = /^HTTP\/\d\.\d (\d{3})(?: |$)/.exec(line);
      if (match) finish(null, Number(match[1]));
      else finish(new ConnectionFailure(`BadStatusLine: ${JSON.stringify(line)}`));
    });
    socket.on("end", () =>
      finish(new ConnectionFailure("RemoteDisconnected: Remote end closed connection without response")),
    );
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
  const status = await httpRequest(opts, "PUT", `/${opts.site}/archive/${opts.xlog}`, {});
  if (status === 201) return;
  throw new CommandError(`Archival failed with HTTP status ${status}`, EXIT_ARCHIVE_FAIL);
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
  for (let retries = RETRY_COUNT - 1; retries >= 0; retries--) {
    try {
      status = await httpRequest(opts, method, requestPath, headers);
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
  if (status === 404) throw new CommandError(`'${opts.xlog}' not found from archive`, EXIT_NOT_FOUND);
  throw new CommandError(`Restore failed with HTTP status ${status}`, EXIT_ABORT);
}

/** Runs the command; resolves to the process exit code (never throws). */
export async function main(argv: string[]): Promise<number> {
  let failExitCode = EXIT_ABORT;
  try {
    const opts = parseArgs(argv);
    if (opts.mode === "archive") {
      failExitCode = EXIT_UNEXPECTED; // PostgreSQL simply retries archive_command later
      await archiveCommand(opts);
    } else {
      await restoreCommand(opts);
    }
    return EXIT_OK;
  } catch (err) {
    if (err instanceof EarlyExit) {
      process.stdout.write(err.output);
      return err.exitCode;
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
      process.stdout.write(`${process.argv[1] ?? "pghoard_postgres_command"}: ERROR: ${err.message}\n`);
      return err.exitCode;
    }
    if (err instanceof ConnectionFailure) {
      process.stderr.write(`${process.argv[1] ?? "pghoard_postgres_command"}: ERROR: ${err.message}\n`);
      return failExitCode;
    }
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    return failExitCode;
  }
}
