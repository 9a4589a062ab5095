/**
 * Process-wide logging on pino, printed the way upstream pghoard's Python logging prints:
 *   default  `2026-11-26 02:23:53,123<TAB>pghoard.compressor<TAB>MainThread<TAB>INFO<TAB>message`
 *   --short-log  `INFO<TAB>message`
 *   systemd (NOTIFY_SOCKET set)  `pghoard.compressor MainThread INFO: message`
 * on stderr, optionally also to syslog. Levels use Python's names (DEBUG, INFO, WARNING, ERROR,
 * CRITICAL) mapped onto pino's debug/info/warn/error/fatal.
 *
 * Secrets never reach a line: structured fields are redacted by key name at any depth (pino's
 * `formatters.log`, which unlike path-based `redact` needs no list of paths), and the finished
 * line is scrubbed of `password=...`, URI passwords and PEM private keys.
 *
 * Syslog: Node has no AF_UNIX datagram sockets, and /dev/log is one. A socket path (the default
 * `/dev/log`) works when the optional native module `unix-dgram` (installed with hot-shots) can
 * be loaded; otherwise a warning is printed once and syslog stays off. `host:port` sends RFC 3164
 * lines over UDP instead (an extension; upstream only takes a path).
 */
import dgram from "node:dgram";
import { createRequire } from "node:module";
import os from "node:os";
import { isMainThread, threadId } from "node:worker_threads";
import pino, { type Logger } from "pino";

export type { Logger } from "pino";

type PinoLevel = "trace" | "debug" | "info" | "warn" | "error" | "fatal";

const PYTHON_TO_PINO: Record<string, PinoLevel> = {
  NOTSET: "trace",
  DEBUG: "debug",
  INFO: "info",
  WARNING: "warn",
  WARN: "warn",
  ERROR: "error",
  CRITICAL: "fatal",
  FATAL: "fatal",
};

const PINO_NUMBER_TO_PYTHON: Record<number, string> = {
  10: "DEBUG",
  20: "DEBUG",
  30: "INFO",
  40: "WARNING",
  50: "ERROR",
  60: "CRITICAL",
};

const SYSLOG_SEVERITY: Record<string, number> = { DEBUG: 7, INFO: 6, WARNING: 4, ERROR: 3, CRITICAL: 2 };

export const SYSLOG_FACILITIES: Record<string, number> = {
  kern: 0, user: 1, mail: 2, daemon: 3, auth: 4, syslog: 5, lpr: 6, news: 7, uucp: 8, cron: 9, authpriv: 10,
  ftp: 11, security: 4, local0: 16, local1: 17, local2: 18, local3: 19, local4: 20, local5: 21, local6: 22, local7: 23,
};

/** Python level name (or pino name) → pino level; undefined when unknown. */
export function toPinoLevel(level: string): PinoLevel | undefined {
  const upper = level.toUpperCase();
  if (upper in PYTHON_TO_PINO) return PYTHON_TO_PINO[upper];
  const lower = level.toLowerCase();
  return (["trace", "debug", "info", "warn", "error", "fatal"] as const).find((l) => l === lower);
}

// ---------------------------------------------------------------------------------------------
// Redaction

const REDACTED = "[REDACTED]";

/** Keys whose values are secrets wherever they appear. */
export const SECRET_KEYS: ReadonlySet<string> = new Set([
  "password",
  "webserver_password",
  "private",
  "private_key",
  "aws_secret_access_key",
  "aws_session_token",
  "account_key",
  "sas_token",
  "credentials",
  "pass",
  "secret",
  "client_secret",
  "refresh_token",
  "access_token",
]);

/**
 * Deep copy of `value` with secret values replaced by "[REDACTED]". `key` is a secret only inside
 * an object_storage-like object (swift's key), since elsewhere it names storage objects.
 */
export function redactSecrets(value: unknown, depth = 0, seen: WeakSet<object> = new WeakSet()): unknown {
  if (depth > 12 || value === null || typeof value !== "object") {
    return typeof value === "string" ? scrubText(value) : value;
  }
  if (seen.has(value)) return "[Circular]";
  seen.add(value);
  if (Array.isArray(value)) return value.map((v) => redactSecrets(v, depth + 1, seen));
  const proto = Object.getPrototypeOf(value) as unknown;
  if (proto !== Object.prototype && proto !== null) return value; // Errors etc.: scrubbed as text later
  const obj = value as Record<string, unknown>;
  const isStorage = "storage_type" in obj;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(obj)) {
    const secret = SECRET_KEYS.has(k) || (isStorage && k === "key");
    out[k] = secret && v !== null && v !== undefined && v !== "" ? REDACTED : redactSecrets(v, depth + 1, seen);
  }
  return out;
}

/** A configuration object (or part of one) safe to log. */
export function redactConfig<T>(config: T): T {
  return redactSecrets(config) as T;
}

const TEXT_SECRET_PATTERNS: ReadonlyArray<[RegExp, string]> = [
  [/(-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----)[\s\S]*?(-----END \2PRIVATE KEY-----)/g, `$1${REDACTED}$3`],
  [/\b(password\s*=\s*)('(?:\\.|[^'\\])*'?|[^\s'"]+)/gi, `$1${REDACTED}`],
  [/([a-z][a-z0-9+.-]*:\/\/[^:/@\s'"]*:)[^@/\s'"]+@/gi, `$1${REDACTED}@`],
  [
    /("(?:password|webserver_password|private|private_key|aws_secret_access_key|aws_session_token|account_key|sas_token|pass|secret|client_secret|refresh_token|access_token)"\s*:\s*)"(?:\\.|[^"\\])*"/g,
    `$1"${REDACTED}"`,
  ],
];

/** Removes secrets that look like secrets from free text (connection strings, URIs, PEM keys, JSON). */
export function scrubText(text: string): string {
  let out = text;
  for (const [pattern, replacement] of TEXT_SECRET_PATTERNS) out = out.replace(pattern, replacement);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Formatting

export type LogFormat = "default" | "short" | "systemd";

interface LogRecord {
  time?: number;
  level: number;
  msg?: unknown;
  name?: string;
  thread?: string;
  err?: { stack?: string; message?: string; type?: string };
  [key: string]: unknown;
}

function pad(n: number, width = 2): string {
  return String(n).padStart(width, "0");
}

/** Python's `%(asctime)s`: local time `YYYY-MM-DD HH:MM:SS,mmm`. */
export function pythonAsctime(date: Date): string {
  return (
    `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())},${pad(date.getMilliseconds(), 3)}`
  );
}

const RECORD_KEYS = new Set(["time", "level", "msg", "name", "thread", "err"]);

function messageOf(record: LogRecord): string {
  let message = record.msg === undefined ? "" : String(record.msg);
  const extra: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(record)) if (!RECORD_KEYS.has(k)) extra[k] = v;
  if (Object.keys(extra).length > 0) message += ` ${JSON.stringify(extra)}`;
  if (record.err) message += `\n${record.err.stack ?? `${record.err.type ?? "Error"}: ${record.err.message ?? ""}`}`;
  return message;
}

export function formatRecord(record: LogRecord, format: LogFormat): string {
  const level = PINO_NUMBER_TO_PYTHON[record.level] ?? "INFO";
  const name = record.name ?? "pghoard";
  const thread = record.thread ?? "MainThread";
  const message = messageOf(record);
  switch (format) {
    case "short":
      return `${level}\t${message}`;
    case "systemd":
      return `${name} ${thread} ${level}: ${message}`;
    default:
      return `${pythonAsctime(new Date(record.time ?? Date.now()))}\t${name}\t${thread}\t${level}\t${message}`;
  }
}

// ---------------------------------------------------------------------------------------------
// Syslog

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const MAX_SYSLOG_BYTES = 60_000;

/** `<PRI>Mmm dd hh:mm:ss [host ]pghoard[pid]: text` (RFC 3164; the host only over the network). */
export function syslogLine(options: { facility: number; level: string; text: string; date?: Date; hostname?: string }): string {
  const date = options.date ?? new Date();
  const pri = options.facility * 8 + (SYSLOG_SEVERITY[options.level] ?? 6);
  const stamp = `${MONTHS[date.getMonth()]} ${String(date.getDate()).padStart(2, " ")} ${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
  const host = options.hostname ? `${options.hostname} ` : "";
  return `<${pri}>${stamp} ${host}pghoard[${process.pid}]: ${options.text}`;
}

interface UnixDgramSocket {
  send(buf: Buffer, offset: number, length: number, path: string, callback?: (err?: Error) => void): void;
  close(): void;
  on(event: "error", listener: (err: Error) => void): void;
}
interface UnixDgramModule {
  createSocket(type: "unix_dgram"): UnixDgramSocket;
}

function loadUnixDgram(): UnixDgramModule | undefined {
  try {
    return createRequire(import.meta.url)("unix-dgram") as UnixDgramModule;
  } catch {
    return undefined;
  }
}

export interface SyslogOptions {
  address: string;
  facility: string;
}

class SyslogSender {
  private udp: dgram.Socket | undefined;
  private udpTarget: { host: string; port: number } | undefined;
  private unixDgram: UnixDgramModule | undefined;
  private reported = false;
  readonly facility: number;

  constructor(
    readonly address: string,
    facility: string,
    private readonly report: (message: string) => void,
  ) {
    this.facility = SYSLOG_FACILITIES[facility.toLowerCase()] ?? SYSLOG_FACILITIES.local2 ?? 18;
    if (!(facility.toLowerCase() in SYSLOG_FACILITIES)) report(`unknown syslog_facility ${JSON.stringify(facility)}, using local2`);
    const hostPort = /^\[?([^\]/]*?)\]?:(\d+)$/.exec(address);
    if (hostPort && !address.startsWith("/")) {
      this.udpTarget = { host: hostPort[1] || "127.0.0.1", port: Number(hostPort[2]) };
      this.udp = dgram.createSocket(this.udpTarget.host.includes(":") ? "udp6" : "udp4");
      this.udp.unref();
      this.udp.on("error", (err) => this.fail(err));
    } else {
      this.unixDgram = loadUnixDgram();
      if (!this.unixDgram) {
        report(
          `syslog to socket ${address} needs the optional module unix-dgram (Node has no unix datagram sockets); syslog disabled. ` +
            "Use syslog_address host:port for UDP instead.",
        );
      }
    }
  }

  private fail(err: Error): void {
    if (this.reported) return;
    this.reported = true;
    const code = (err as NodeJS.ErrnoException).code;
    this.report(`syslog send to ${this.address} failed: ${code ?? err.message} (further errors not reported)`);
  }

  send(level: string, text: string): void {
    let line = syslogLine({
      facility: this.facility,
      level,
      text,
      ...(this.udpTarget ? { hostname: os.hostname() } : {}),
    });
    let buf = Buffer.from(line);
    if (buf.length > MAX_SYSLOG_BYTES) {
      line = buf.subarray(0, MAX_SYSLOG_BYTES).toString();
      buf = Buffer.from(line);
    }
    if (this.udp && this.udpTarget) {
      this.udp.send(buf, this.udpTarget.port, this.udpTarget.host);
    } else if (this.unixDgram) {
      // A socket per message: an open unix-dgram socket would keep the event loop (and the process) alive.
      try {
        const socket = this.unixDgram.createSocket("unix_dgram");
        socket.on("error", (err) => this.fail(err));
        socket.send(buf, 0, buf.length, this.address, (err) => {
          if (err) this.fail(err);
        });
        socket.close();
      } catch (err) {
        this.fail(err as Error);
      }
    }
  }

  close(): void {
    this.udp?.close();
    this.udp = undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Process-wide state

export interface Destination {
  write(text: string): unknown;
}

export interface LoggerOptions {
  /** Python (DEBUG, INFO, WARNING, ERROR, CRITICAL) or pino level name; default INFO. */
  level?: string;
  /** `-D/--debug`: DEBUG regardless of `level`. */
  debug?: boolean;
  /** `-s/--short-log`. */
  shortLog?: boolean;
  /** Default: the systemd format when NOTIFY_SOCKET is set. */
  systemd?: boolean;
  /** Enable syslog (added once, like upstream; a later call cannot remove it). */
  syslog?: boolean;
  syslogAddress?: string;
  syslogFacility?: string;
  /** Where formatted lines go; default stderr (synchronous, so nothing is lost at exit). */
  destination?: Destination;
}

interface State {
  format: LogFormat;
  destination: Destination;
  syslog: SyslogSender | undefined;
  root: Logger;
  children: Set<WeakRef<Logger>>;
}

let state: State | undefined;

const threadName = isMainThread ? "MainThread" : `Worker-${threadId}`;

function stderrDestination(): Destination {
  return pino.destination({ dest: 2, sync: true });
}

function writeLine(line: string): void {
  if (!state) return;
  let record: LogRecord;
  try {
    record = JSON.parse(line) as LogRecord;
  } catch {
    state.destination.write(scrubText(line));
    return;
  }
  const text = scrubText(formatRecord(record, state.format));
  state.destination.write(text + "\n");
  if (state.syslog) {
    const level = PINO_NUMBER_TO_PYTHON[record.level] ?? "INFO";
    state.syslog.send(level, scrubText(formatRecord(record, "systemd")));
  }
}

function reportProblem(message: string): void {
  state?.destination.write(formatRecord({ level: 40, time: Date.now(), name: "pghoard.logger", msg: message }, state.format) + "\n");
}

function createState(): State {
  const children = new Set<WeakRef<Logger>>();
  const root = pino(
    {
      level: "info",
      base: { thread: threadName },
      formatters: { log: (obj) => redactSecrets(obj) as Record<string, unknown> },
      onChild: (child) => {
        // Per-request children come and go: drop collected ones now and then.
        if (children.size >= 1024) for (const ref of children) if (!ref.deref()) children.delete(ref);
        children.add(new WeakRef(child));
      },
    },
    { write: writeLine },
  );
  const format: LogFormat = process.env.NOTIFY_SOCKET ? "systemd" : "default";
  return { format, destination: stderrDestination(), syslog: undefined, root, children };
}

function currentState(): State {
  state ??= createState();
  return state;
}

/**
 * Configures process-wide logging and returns the root logger (`pghoard`). Safe to call again
 * (e.g. once the config is loaded): format, level and destination are updated in place, so
 * loggers handed out earlier follow.
 */
export function createLogger(options: LoggerOptions = {}): Logger {
  const s = currentState();
  // Only options given explicitly change the format, so a later call (e.g. to add syslog) keeps --short-log.
  if (options.shortLog !== undefined || options.systemd !== undefined) {
    s.format = options.shortLog ? "short" : (options.systemd ?? Boolean(process.env.NOTIFY_SOCKET)) ? "systemd" : "default";
  }
  if (options.destination) s.destination = options.destination;
  if (options.debug) setLogLevel("DEBUG");
  else if (options.level !== undefined) setLogLevel(options.level);
  if (options.syslog && !s.syslog) {
    s.syslog = new SyslogSender(options.syslogAddress ?? "/dev/log", options.syslogFacility ?? "local2", reportProblem);
  }
  return s.root;
}

/**
 * Applies the logging keys of a loaded pghoard.json: `log_level` (an unknown name is reported and
 * ignored) and `syslog`/`syslog_address`/`syslog_facility` (added once, never removed, as upstream).
 * Call after every successful (re)load.
 */
export function configureLoggingFromConfig(config: {
  log_level?: string;
  syslog?: boolean;
  syslog_address?: string;
  syslog_facility?: string;
}): void {
  if (config.log_level !== undefined) setLogLevel(config.log_level);
  if (config.syslog) {
    createLogger({
      syslog: true,
      ...(config.syslog_address !== undefined ? { syslogAddress: config.syslog_address } : {}),
      ...(config.syslog_facility !== undefined ? { syslogFacility: config.syslog_facility } : {}),
    });
  }
}

/** A named logger (`pghoard.<component>` by convention), child of the root. */
export function getLogger(name: string, bindings: Record<string, unknown> = {}): Logger {
  return currentState().root.child({ name, ...bindings });
}

/**
 * Sets the level of every logger. Unknown names are reported as an error and change nothing
 * (upstream's behaviour for a bad `log_level` on reload). Returns whether the level was applied.
 */
export function setLogLevel(level: string): boolean {
  const s = currentState();
  const pinoLevel = toPinoLevel(level);
  if (!pinoLevel) {
    s.root.child({ name: "pghoard" }).error(`Problem with log_level: ${JSON.stringify(level)} is not a known level`);
    return false;
  }
  s.root.level = pinoLevel;
  for (const ref of s.children) {
    const child = ref.deref();
    if (child) child.level = pinoLevel;
    else s.children.delete(ref);
  }
  return true;
}

/** Python name of the current level. */
export function getLogLevel(): string {
  return PINO_NUMBER_TO_PYTHON[currentState().root.levelVal] ?? "INFO";
}

/** Stops syslog and forgets all state (tests; a fresh createLogger() starts over). */
export function resetLogging(): void {
  state?.syslog?.close();
  state = undefined;
}
