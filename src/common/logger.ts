/**
 * Process-wide logging on pino, printed the way upstream pghoard's Python logging prints
 * (log_format.ts) on stderr, optionally also to syslog (syslog.ts); secrets are redacted from
 * fields and scrubbed from lines (redact.ts).
 */
import { isMainThread, threadId } from "node:worker_threads";
import pino, { type Logger } from "pino";
import { formatRecord, PINO_NUMBER_TO_PYTHON, toPinoLevel, type LogFormat, type LogRecord } from "./log_format.js";
import { redactSecrets, scrubText } from "./redact.js";
import { SyslogSender } from "./syslog.js";

export type { Logger } from "pino";

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
  state?.destination.write(
    formatRecord({ level: 40, time: Date.now(), name: "pghoard.logger", msg: message }, state.format) + "\n",
  );
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
    s.format = options.shortLog
      ? "short"
      : (options.systemd ?? Boolean(process.env.NOTIFY_SOCKET))
        ? "systemd"
        : "default";
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

const siteChildren = new WeakMap<Logger, Map<string, Logger>>();

/**
 * The child of `log` that puts `site` on every line: one structured field an operator can filter
 * on, rather than the site's name in some messages only. Cached per logger and site.
 */
export function siteLogger(log: Logger, site: string): Logger {
  let bySite = siteChildren.get(log);
  if (!bySite) {
    bySite = new Map();
    siteChildren.set(log, bySite);
  }
  let child = bySite.get(site);
  if (!child) {
    child = log.child({ site });
    bySite.set(site, child);
  }
  return child;
}
