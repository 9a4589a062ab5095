/**
 * Log lines printed the way upstream pghoard's Python logging prints them:
 *   default  `2026-11-26 02:23:53,123<TAB>pghoard.compressor<TAB>MainThread<TAB>INFO<TAB>message`
 *   short (--short-log)  `INFO<TAB>message`
 *   systemd (NOTIFY_SOCKET set)  `pghoard.compressor MainThread INFO: message`
 * Levels use Python's names (DEBUG, INFO, WARNING, ERROR, CRITICAL) mapped onto pino's
 * debug/info/warn/error/fatal.
 */

export type PinoLevel = "trace" | "debug" | "info" | "warn" | "error" | "fatal";

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

/** pino level number → Python level name. */
export const PINO_NUMBER_TO_PYTHON: Record<number, string> = {
  10: "DEBUG",
  20: "DEBUG",
  30: "INFO",
  40: "WARNING",
  50: "ERROR",
  60: "CRITICAL",
};

/** Python level name (or pino name) → pino level; undefined when unknown. */
export function toPinoLevel(level: string): PinoLevel | undefined {
  const upper = level.toUpperCase();
  if (upper in PYTHON_TO_PINO) return PYTHON_TO_PINO[upper];
  const lower = level.toLowerCase();
  return (["trace", "debug", "info", "warn", "error", "fatal"] as const).find((l) => l === lower);
}

export type LogFormat = "default" | "short" | "systemd";

/** One pino record as its JSON line parses. */
export interface LogRecord {
  time?: number;
  level: number;
  msg?: unknown;
  name?: string;
  thread?: string;
  err?: { stack?: string; message?: string; type?: string };
  [key: string]: unknown;
}

/** Zero-padded decimal, for timestamps. */
export function pad(n: number, width = 2): string {
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
