/** Locating and reading pghoard.json (upstream's `read_json_config_file` messages). */
import { promises as fs } from "node:fs";
import path from "node:path";
import { pyRepr } from "../common/pycompat.js";
import { ConfigError } from "./errors.js";
import type { PghoardConfig, Tool } from "./types.js";
import { keyPath, validateConfig } from "./validate.js";

/** `--config`, else `$PGHOARD_CONFIG`. */
export function resolveConfigPath(cliValue?: string): string | undefined {
  return cliValue || process.env.PGHOARD_CONFIG || undefined;
}

const PYTHON_OS_ERRORS: Record<string, string> = {
  EACCES: "PermissionError",
  EPERM: "PermissionError",
  EISDIR: "IsADirectoryError",
  ENOTDIR: "NotADirectoryError",
};

/** Whether parsing `prefix` fails for a reason other than running out of input. */
function failsBeforeEnd(prefix: string): boolean {
  try {
    JSON.parse(prefix);
    return false;
  } catch (err) {
    const message = (err as Error).message;
    if (/end of JSON input|Unterminated string/.test(message)) return false;
    const pos = /position (\d+)/.exec(message);
    return !(pos && Number(pos[1]) >= prefix.length);
  }
}

/**
 * Offset of the first syntax error. V8 does not always report a position ("Unexpected token ','
 * ..."), so find the shortest prefix that already fails for a reason other than its end.
 */
function jsonErrorOffset(text: string, message: string): number {
  const match = /position (\d+)/.exec(message);
  if (match) return Number(match[1]);
  let lo = 0;
  let hi = text.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (failsBeforeEnd(text.slice(0, mid + 1))) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/** JSON.parse's message on one line, plus the line and column of the error. */
function jsonErrorMessage(text: string, err: Error): string {
  const pos = jsonErrorOffset(text, err.message);
  const before = text.slice(0, pos);
  const line = before.split("\n").length;
  const column = pos - before.lastIndexOf("\n");
  return `${err.message.replace(/\s*\n\s*/g, " ")} (line ${line} column ${column})`;
}

/** Reads and parses the file; no defaults, no checks. */
export async function readJsonConfigFile(configPath: string): Promise<unknown> {
  let text: string;
  try {
    text = await fs.readFile(configPath, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? "";
    if (code === "ENOENT") throw new ConfigError(`Configuration file ${pyRepr(configPath)} does not exist`);
    throw new ConfigError(
      `Configuration file ${pyRepr(configPath)} can't be opened: ${PYTHON_OS_ERRORS[code] ?? "OSError"} (${code})`,
    );
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new ConfigError(
      `Configuration file ${pyRepr(configPath)} does not contain valid JSON: ${jsonErrorMessage(text, err as Error)}`,
    );
  }
}

export interface LoadOptions {
  tool?: Tool;
  warn?: (message: string) => void;
}

/**
 * Reads, validates and completes the configuration. Also reads `PG_VERSION` of every site with a
 * `pg_data_directory`; unreadable is an error for active sites of the daemon and
 * pghoard_archive_sync (upstream fails at startup there too).
 */
export async function loadConfig(configPath: string, options: LoadOptions = {}): Promise<PghoardConfig> {
  const raw = await readJsonConfigFile(configPath);
  const config = validateConfig(raw, { ...options, configPath });
  const checkPgdata = options.tool === "daemon" || options.tool === "archive_sync";
  for (const [siteName, site] of Object.entries(config.backup_sites)) {
    if (!site.pg_data_directory) continue;
    const versionFile = path.join(site.pg_data_directory, "PG_VERSION");
    try {
      site.pg_data_directory_version = (await fs.readFile(versionFile, "utf8")).trim();
    } catch (err) {
      if (checkPgdata && site.active) {
        const code = (err as NodeJS.ErrnoException).code ?? String(err);
        throw new ConfigError(
          `${keyPath("backup_sites", siteName)}.pg_data_directory: Site ${pyRepr(siteName)}: cannot read ${pyRepr(versionFile)} (${code})`,
        );
      }
    }
  }
  return config;
}
