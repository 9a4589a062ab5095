/**
 * pghoard_restore: list basebackups and restore one (cli.md §2). Exit codes: 0 success,
 * 1 on restore/configuration errors (`FATAL: <ErrorClass>: <message>` on stdout) or Ctrl-C,
 * 2 on usage errors.
 */
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Command, CommanderError, Option } from "commander";

import { ConfigError, getSiteFromConfig, loadConfig, privateKeyLookup, resolveConfigPath, type PghoardConfig } from "../config/index.js";
import { createDecodeStream, decodeBuffer } from "../fileformat/index.js";
import { createStorage } from "../storage/index.js";
import { RestoreError, describeError } from "../restore/errors.js";
import { getBasebackup, listSiteBasebackups, closeStores, type RestoreDeps } from "../restore/get-basebackup.js";
import { availableCaption, formatBasebackupList, listBasebackupsHttp } from "../restore/list.js";

class InterruptedError extends Error {
  constructor() {
    super("interrupted");
    this.name = "InterruptedError";
  }
}

function packageVersion(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = path.join(dir, "package.json");
    if (existsSync(candidate)) return (JSON.parse(readFileSync(candidate, "utf8")) as { version: string }).version;
    const parent = path.dirname(dir);
    if (parent === dir) return "unknown";
    dir = parent;
  }
}

function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

interface Io {
  stdout: NodeJS.WritableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream;
}

async function readConfig(configPath: string | undefined): Promise<PghoardConfig> {
  const resolved = resolveConfigPath(configPath);
  if (!resolved) throw new ConfigError("config file path must be given with --config or via env PGHOARD_CONFIG");
  return loadConfig(resolved, { tool: "restore" });
}

function restoreDeps(config: PghoardConfig): RestoreDeps {
  return {
    createStorage: (site) => createStorage(config.backup_sites[site].object_storage),
    storageConfig: (site) => config.backup_sites[site]?.object_storage,
    privateKeyLookup: (site) => {
      const siteConfig = config.backup_sites[site];
      return siteConfig ? privateKeyLookup(siteConfig) : () => undefined;
    },
    createDecodeStream: (metadata, pem) => createDecodeStream(metadata, () => pem ?? undefined),
    decodeBuffer: (data, metadata, keys) => decodeBuffer(data, metadata, keys),
  };
}

function parseTablespaceDirs(values: string[] | undefined): Record<string, string> {
  const mapping: Record<string, string> = {};
  for (const value of values ?? []) {
    const eq = value.indexOf("=");
    if (eq < 0) {
      const list = (values ?? []).map((v) => `'${v}'`).join(", ");
      throw new RestoreError(`Invalid tablespace mapping [${list}]`);
    }
    mapping[value.slice(0, eq)] = value.slice(eq + 1);
  }
  return mapping;
}

function buildProgram(io: Io, run: { action?: () => Promise<void> }): Command {
  const program = new Command("pghoard_restore");
  program
    .exitOverride()
    .enablePositionalOptions()
    .configureOutput({
      writeOut: (s) => io.stdout.write(s),
      writeErr: (s) => io.stderr.write(s),
    })
    .option("-D, --debug", "Enable debug logging")
    .option("--status-output-file <FILE>", "Filename for status output JSON")
    .version(packageVersion(), "--version", "show program version");

  const configOption = (cmd: Command, requiredWithoutEnv: boolean): void => {
    const env = process.env.PGHOARD_CONFIG;
    if (env) cmd.option("--config <CONFIG>", "pghoard config file", env);
    else if (requiredWithoutEnv) cmd.requiredOption("--config <CONFIG>", "pghoard config file");
    else cmd.option("--config <CONFIG>", "pghoard config file");
  };

  const http = program
    .command("list-basebackups-http")
    .description("List available basebackups from a HTTP source")
    .option("-v, --verbose", "verbose output")
    .option("--host <HOST>", "pghoard repository host", "127.0.0.1")
    .option("--port <PORT>", "pghoard repository port", "16000")
    .option("--username <USERNAME>", "pghoard repository username")
    .option("--password <PASSWORD>", "pghoard repository password")
    .requiredOption("--site <SITE>", "pghoard site");
  configOption(http, false);
  http.action((o: { verbose?: boolean; host: string; port: string; username?: string; password?: string; site: string }) => {
    run.action = async () => {
      const backups = await listBasebackupsHttp(o);
      io.stdout.write(formatBasebackupList(backups, { caption: availableCaption(o.site), verbose: Boolean(o.verbose) }));
    };
  });

  const list = program
    .command("list-basebackups")
    .description("List basebackups from an object store")
    .option("-v, --verbose", "verbose output")
    .option("--site <SITE>", "pghoard site");
  configOption(list, true);
  list.action((o: { verbose?: boolean; site?: string; config?: string }) => {
    run.action = async () => {
      const config = await readConfig(o.config);
      const site = getSiteFromConfig(config, o.site);
      const { backups, stores } = await listSiteBasebackups(config, site, restoreDeps(config));
      await closeStores(stores);
      io.stdout.write(formatBasebackupList(backups, { caption: availableCaption(site), verbose: Boolean(o.verbose) }));
    };
  });

  const get = program
    .command("get-basebackup")
    .description("Download a basebackup from an object store")
    .option("-v, --verbose", "verbose output")
    .option("--site <SITE>", "pghoard site")
    .option("--basebackup <NAME>", "pghoard basebackup (full name as listed, or 'latest')", "latest")
    .option("--primary-conninfo <CONNINFO>", "replication.conf primary_conninfo", "")
    .requiredOption("--target-dir <DIR>", "pghoard restore target 'pgdata' dir")
    .option("--overwrite", "overwrite existing target directory")
    .option("--tablespace-dir <NAME=DIRECTORY>", "map the given tablespace to an existing empty directory; can be repeated", collect)
    .option("--tablespace-base-dir <DIR>", "map all tablespaces in the backup below this existing base directory")
    .option("--recovery-end-command <COMMAND>", "PostgreSQL recovery_end_command")
    .addOption(new Option("--recovery-target-action <ACTION>", "PostgreSQL recovery_target_action").choices(["pause", "promote", "shutdown"]))
    .option("--recovery-target-name <RESTOREPOINT>", "PostgreSQL recovery_target_name")
    .option("--recovery-target-time <ISO_TIMESTAMP>", "PostgreSQL recovery_target_time (also selects the basebackup)")
    .option("--recovery-target-xid <XID>", "PostgreSQL recovery_target_xid")
    .option("--recovery-target-lsn <LSN>", "PostgreSQL recovery_target_lsn (not in upstream pghoard)")
    .option("--recovery-target-immediate", "recovery_target = 'immediate': stop as soon as consistent (not in upstream pghoard)")
    .option("--restore-to-primary", "Restore the database to a PG primary (no standby; archive recovery via recovery.signal)")
    .option("--restore-to-master", "Alias of --restore-to-primary, kept for compatibility")
    .option("--preserve-until <ISO_TIMESTAMP>", "Request the backup to be preserved until this time before restoring")
    .option("--cancel-preserve-on-success", "Cancel the preservation request after a successful restore (default)")
    .option("--no-cancel-preserve-on-success", "Keep the preservation request after a successful restore")
    .option("--pghoard-postgres-command-bin <PATH>", "program written into restore_command", "pghoard_postgres_command");
  configOption(get, true);
  get.action((o: Record<string, unknown>) => {
    run.action = async () => {
      const globals = program.opts<{ debug?: boolean; statusOutputFile?: string }>();
      const tablespaceDirs = parseTablespaceDirs(o.tablespaceDir as string[] | undefined);
      const config = await readConfig(o.config as string | undefined);
      const site = getSiteFromConfig(config, o.site as string | undefined);
      const controller = new AbortController();
      const onSigint = (): void => {
        if (controller.signal.aborted) process.exit(1);
        controller.abort(new InterruptedError());
      };
      process.on("SIGINT", onSigint);
      try {
        await getBasebackup(
          {
            config,
            site,
            targetDir: o.targetDir as string,
            basebackup: o.basebackup as string,
            overwrite: Boolean(o.overwrite),
            tablespaceDirs,
            tablespaceBaseDir: o.tablespaceBaseDir as string | undefined,
            primaryConninfo: o.primaryConninfo as string,
            recoveryEndCommand: o.recoveryEndCommand as string | undefined,
            recoveryTargetAction: o.recoveryTargetAction as "pause" | "promote" | "shutdown" | undefined,
            recoveryTargetName: o.recoveryTargetName as string | undefined,
            recoveryTargetTime: o.recoveryTargetTime as string | undefined,
            recoveryTargetXid: o.recoveryTargetXid as string | undefined,
            recoveryTargetLsn: o.recoveryTargetLsn as string | undefined,
            recoveryTargetImmediate: Boolean(o.recoveryTargetImmediate),
            restoreToPrimary: Boolean(o.restoreToPrimary || o.restoreToMaster),
            preserveUntil: o.preserveUntil as string | undefined,
            cancelPreserveOnSuccess: o.cancelPreserveOnSuccess !== false,
            pghoardPostgresCommandBin: o.pghoardPostgresCommandBin as string,
            statusOutputFile: globals.statusOutputFile,
            out: io.stdout,
            signal: controller.signal,
          },
          restoreDeps(config),
        );
      } catch (err) {
        if (controller.signal.aborted && controller.signal.reason instanceof InterruptedError) throw controller.signal.reason;
        throw err;
      } finally {
        process.off("SIGINT", onSigint);
      }
    };
  });
  return program;
}

export async function main(argv: string[], io: Io = { stdout: process.stdout, stderr: process.stderr }): Promise<number> {
  const run: { action?: () => Promise<void> } = {};
  const program = buildProgram(io, run);
  try {
    await program.parseAsync(argv, { from: "user" });
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === "commander.helpDisplayed" || err.code === "commander.version") return 0;
      // No sub-command: help was printed, exit 1 like upstream.
      if (err.code === "commander.help") return err.exitCode;
      return 2;
    }
    throw err;
  }
  if (!run.action) {
    io.stdout.write(program.helpInformation());
    return 1;
  }
  const debug = Boolean(program.opts<{ debug?: boolean }>().debug);
  try {
    await run.action();
    return 0;
  } catch (err) {
    if (err instanceof InterruptedError) {
      io.stdout.write("*** interrupted by keyboard ***\n");
      return 1;
    }
    let fatal: { name: string; message: string };
    if (err instanceof ConfigError) fatal = { name: "InvalidConfigurationError", message: err.message };
    else if (err instanceof RestoreError) fatal = { name: "RestoreError", message: err.message };
    else fatal = { name: "RestoreError", message: describeError(err) };
    if (debug && err instanceof Error && err.stack) io.stderr.write(`${err.stack}\n`);
    io.stdout.write(`FATAL: ${fatal.name}: ${fatal.message}\n`);
    return 1;
  }
}
