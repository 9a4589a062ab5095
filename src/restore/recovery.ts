/**
 * Recovery configuration written after the data is restored (operations.md §12).
 *
 * Two deliberate differences from upstream, both so that the restored cluster behaves as the
 * operator asked:
 * - PostgreSQL ≥ 12: the backup's own `postgresql.auto.conf` (ALTER SYSTEM settings) is kept and
 *   our block appended; recovery settings already in it (e.g. from an earlier restore of the
 *   same cluster) are commented out so they cannot override or add to the new targets.
 *   Upstream replaces the file.
 * - `--restore-to-primary` on PostgreSQL ≥ 12 writes `recovery.signal`, so archive recovery runs
 *   and recovery targets take effect. Upstream writes no signal file (PostgreSQL would then start
 *   without replaying the archive).
 * Also supported beyond upstream: `recovery_target_lsn` and `recovery_target = 'immediate'`.
 *
 * restore_command: by default the direct mode (no daemon needed), with the absolute paths of
 * node, the installed Node client pghoard_postgres_command.js and the config, plus a
 * recovery_end_command that removes the read-ahead files it leaves. `restoreCommandMode:
 * "daemon"` writes upstream's, with the installed bash client bin/pghoard_postgres_command (no
 * Node.js start-up per WAL file). The direct mode keeps the Node client: the bash client would
 * only hand every call over to it, one bash start later.
 */
import { readFile } from "node:fs/promises";
import path from "node:path";

import { writeFileAtomic } from "../common/fs.js";
import { installedCommandLine, clientCommandLine, shellQuote } from "../common/install_paths.js";
import { RestoreError } from "./errors.js";

export interface RecoveryOptions {
  /** Content of the restored `PG_VERSION` (e.g. "15", "9.6"). */
  pgVersion: string;
  site: string;
  /** `http_port` of the restore-time config. */
  port: number;
  /** "direct" (default): WAL straight from the object storage; "daemon": through the daemon's HTTP API. */
  restoreCommandMode?: RestoreCommandMode;
  /** Direct mode: the config file restored with (made absolute here). */
  configPath?: string;
  /**
   * Program written into restore_command (default: the installed bash client in daemon mode, node +
   * the installed Node client in direct mode).
   */
  commandBin?: string;
  /** Daemon HTTP credentials; added to restore_command only when both are set. */
  username?: string | null;
  password?: string | null;
  primaryConninfo?: string | null;
  recoveryEndCommand?: string | null;
  targetAction?: "pause" | "promote" | "shutdown" | null;
  targetName?: string | null;
  /** Already in the form to write (Python `str(datetime)` of the parsed value). */
  targetTime?: string | null;
  targetXid?: string | null;
  targetLsn?: string | null;
  targetImmediate?: boolean;
  restoreToPrimary?: boolean;
}

export type RestoreCommandMode = "direct" | "daemon";
export const RESTORE_COMMAND_MODES: readonly RestoreCommandMode[] = ["direct", "daemon"];

/** restore_command and the recovery_end_command it needs (null: none), as shell command lines. */
export function restoreCommands(
  opts: Pick<
    RecoveryOptions,
    "restoreCommandMode" | "configPath" | "commandBin" | "site" | "port" | "username" | "password"
  >,
): { restoreCommand: string; recoveryEndCommand: string | null } {
  const command = (args: string[]): string =>
    opts.commandBin
      ? [opts.commandBin, ...args.map(shellQuote)].join(" ")
      : installedCommandLine("pghoard_postgres_command", args);
  // Each mode's way to its WAL, then the same file arguments.
  const files = ["--site", opts.site, "--output", "%p", "--xlog", "%f"];
  if ((opts.restoreCommandMode ?? "direct") === "daemon") {
    const args = ["--mode", "restore", "--port", String(opts.port), ...files];
    if (opts.username && opts.password) args.push("--username", opts.username, "--password", opts.password);
    const restoreCommand = opts.commandBin ? command(args) : clientCommandLine(args);
    return { restoreCommand, recoveryEndCommand: null };
  }
  if (!opts.configPath) throw new RestoreError("The direct restore_command needs the path of the configuration file");
  return {
    restoreCommand: command(["--mode", "restore", "--config", path.resolve(opts.configPath), ...files]),
    recoveryEndCommand: command(["--mode", "cleanup"]),
  };
}

/** The closing line of get-basebackup: what PostgreSQL needs to fetch WAL while it recovers. */
export function restoreCommandHint(opts: {
  restoreCommandMode?: RestoreCommandMode;
  site: string;
  config: { http_port: number };
}): string {
  if (opts.restoreCommandMode === "daemon") {
    return `WAL is served by the pghoard daemon: make sure it runs with site '${opts.site}' on port ${opts.config.http_port} and that site's pg_data_directory is the restored directory while PostgreSQL recovers.`;
  }
  return `restore_command reads WAL of site '${opts.site}' straight from the object storage (no pghoard daemon needed); PostgreSQL's OS user must be able to read the configuration file.`;
}

export interface RecoveryConfig {
  /** Text of our block (newline-terminated lines). */
  content: string;
  /** Where it goes: `recovery.conf` (replaced, PG < 12) or `postgresql.auto.conf` (appended). */
  fileName: "recovery.conf" | "postgresql.auto.conf";
  /** Empty signal files to create (PG ≥ 12). */
  signalFiles: string[];
  /** Messages for the operator (e.g. unsupported target action on old versions). */
  warnings: string[];
}

/** SQL-literal quoting as psycopg2's `adapt()`: single quotes, `'` and `\` doubled. */
export function quoteLiteral(value: string): string {
  return `'${value.replace(/\\/g, "\\\\").replace(/'/g, "''")}'`;
}

/** Plain single-quoted value; upstream inserts these unescaped, we double `'` (same text otherwise). */
function quotePlain(value: string): string {
  return `'${value.replace(/'/g, "''")}'`;
}

/** PG_VERSION as a comparable number: "15" → 15, "9.6" → 9.6. */
export function parsePgVersion(text: string): number {
  const value = Number.parseFloat(text.trim());
  if (!Number.isFinite(value)) throw new RestoreError(`Cannot parse PG_VERSION '${text.trim()}'`);
  return value;
}

export const RECOVERY_TARGET_CONFLICT =
  "Specify at most one of recovery_target_name, recovery_target_time or recovery_target_xid";

/** Builds the recovery configuration; pure, no file access. */
export function buildRecoveryConfig(opts: RecoveryOptions): RecoveryConfig {
  const version = parsePgVersion(opts.pgVersion);
  const targets = [
    opts.targetName,
    opts.targetTime,
    opts.targetXid,
    opts.targetLsn,
    opts.targetImmediate ? "immediate" : null,
  ];
  if (targets.filter((t) => t !== null && t !== undefined).length > 1) {
    throw new RestoreError(
      opts.targetLsn || opts.targetImmediate
        ? `${RECOVERY_TARGET_CONFLICT} (or --recovery-target-lsn / --recovery-target-immediate)`
        : RECOVERY_TARGET_CONFLICT,
    );
  }
  const warnings: string[] = [];
  const commands = restoreCommands(opts);
  // Ours first: the user's command's exit status is the one PostgreSQL reports.
  const recoveryEndCommand = [commands.recoveryEndCommand, opts.recoveryEndCommand].filter(Boolean).join("; ");

  const lines = [
    "# pghoard created recovery.conf",
    "recovery_target_timeline = 'latest'",
    `restore_command = ${quotePlain(commands.restoreCommand)}`,
  ];
  const useRecoveryConf = version < 12;
  if (useRecoveryConf) lines.push("trigger_file = 'trigger_file'");
  else if (version < 16) lines.push("promote_trigger_file = 'trigger_file'");
  const signalFiles: string[] = [];
  if (!opts.restoreToPrimary) {
    if (useRecoveryConf) lines.push("standby_mode = 'on'");
    else signalFiles.push("standby.signal");
  } else if (!useRecoveryConf) {
    signalFiles.push("recovery.signal");
  }
  if (opts.primaryConninfo) lines.push(`primary_conninfo = ${quoteLiteral(opts.primaryConninfo)}`);
  if (recoveryEndCommand) lines.push(`recovery_end_command = ${quoteLiteral(recoveryEndCommand)}`);
  if (opts.targetAction) {
    if (version >= 9.5) lines.push(`recovery_target_action = '${opts.targetAction}'`);
    else if (opts.targetAction === "pause") lines.push("pause_at_recovery_target = True");
    else if (opts.targetAction === "shutdown") {
      warnings.push(`Unsupported recovery_target_action 'shutdown' for PostgreSQL ${opts.pgVersion.trim()}, ignoring`);
    }
  }
  if (opts.targetName) lines.push(`recovery_target_name = ${quotePlain(opts.targetName)}`);
  if (opts.targetTime) lines.push(`recovery_target_time = ${quotePlain(opts.targetTime)}`);
  if (opts.targetXid) lines.push(`recovery_target_xid = ${quotePlain(opts.targetXid)}`);
  if (opts.targetLsn) {
    if (version < 10)
      throw new RestoreError(
        `recovery_target_lsn needs PostgreSQL 10 or later, the backup is ${opts.pgVersion.trim()}`,
      );
    lines.push(`recovery_target_lsn = ${quotePlain(opts.targetLsn)}`);
  }
  if (opts.targetImmediate) lines.push("recovery_target = 'immediate'");
  return {
    content: lines.join("\n") + "\n",
    fileName: useRecoveryConf ? "recovery.conf" : "postgresql.auto.conf",
    signalFiles,
    warnings,
  };
}

/** Settings that must come only from our block (recovery and standby parameters). */
const RECOVERY_SETTING_RE =
  /^\s*(restore_command|archive_cleanup_command|recovery_end_command|recovery_target\w*|primary_conninfo|primary_slot_name|promote_trigger_file|trigger_file|standby_mode|pause_at_recovery_target)\s*=/i;

/**
 * Appends our block to an existing `postgresql.auto.conf`, commenting out recovery settings it
 * already had. Pure; `existing` is the restored file content (or "" when there was none).
 */
export function appendToAutoConf(existing: string, block: string): string {
  if (existing === "") return block;
  const kept = existing
    .split("\n")
    .map((line) => (RECOVERY_SETTING_RE.test(line) ? `# disabled by pghoard_restore: ${line}` : line))
    .join("\n");
  return (kept.endsWith("\n") ? kept : kept + "\n") + block;
}

/** Writes the configuration into a restored data directory. Returns what was written. */
export async function writeRecoveryConfig(
  pgdata: string,
  opts: Omit<RecoveryOptions, "pgVersion">,
): Promise<RecoveryConfig> {
  let pgVersion: string;
  try {
    pgVersion = await readFile(path.join(pgdata, "PG_VERSION"), "utf8");
  } catch (err) {
    throw new RestoreError(`Restored directory has no readable PG_VERSION: ${(err as Error).message}`);
  }
  const config = buildRecoveryConfig({ ...opts, pgVersion });
  const filePath = path.join(pgdata, config.fileName);
  if (config.fileName === "recovery.conf") {
    await writeFileAtomic(filePath, config.content, { mode: 0o600 });
  } else {
    let existing = "";
    try {
      existing = await readFile(filePath, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
    await writeFileAtomic(filePath, appendToAutoConf(existing, config.content), { mode: 0o600 });
  }
  for (const signal of config.signalFiles) {
    await writeFileAtomic(path.join(pgdata, signal), "", { mode: 0o600 });
  }
  return config;
}
