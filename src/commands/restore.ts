/**
 * pghoard_restore: list basebackups and restore one (cli.md §2). Exit codes: 0 success,
 * 1 on restore/configuration errors (`FATAL: <ErrorClass>: <message>` on stdout) or Ctrl-C,
 * 2 on usage errors.
 */
import path from "node:path";
import {
  ConfigError,
  getSiteFromConfig,
  loadConfig,
  privateKeyLookup,
  resolveConfigPath,
  type PghoardConfig,
} from "../config/index.js";
import { createStorage } from "../storage/index.js";
import { RestoreError, describeError } from "../restore/errors.js";
import type { RestoreDeps } from "../restore/get_basebackup.js";
import { KeyboardInterrupt, abortOnKeyboardInterrupt, runCli, type Io } from "./cli.js";
import { RESTORE_SPEC } from "./cli_specs.js";
import { tuneAllocator } from "../common/native_addon.js";

// Each subcommand imports its own modules when it runs: a restore never loads the drill's
// PostgreSQL client, verify's workers or the HTTP client, and starts sooner (its object worker
// is already loading, see bin/pghoard_restore.js).

async function readConfig(configPath: string | undefined): Promise<PghoardConfig> {
  const resolved = resolveConfigPath(configPath);
  if (!resolved) throw new ConfigError("config file path must be given with --config or via env PGHOARD_CONFIG");
  return loadConfig(resolved, { tool: "restore" });
}

async function restoreDeps(config: PghoardConfig): Promise<RestoreDeps> {
  const { createDecodeStream, decodeBuffer } = await import("../fileformat/streams.js");
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

interface HttpListOptions {
  verbose?: boolean;
  host?: string;
  port?: number;
  username?: string;
  password?: string;
  site: string;
  config?: string;
}

/**
 * Upstream accepts --config here and ignores it; we take the daemon's address, port and
 * credentials from it for whatever the command line leaves out (the defaults stay upstream's).
 */
async function listHttp(o: HttpListOptions, io: Io): Promise<number> {
  const { daemonEndpoint } = await import("./daemon_client.js");
  const { availableCaption, formatBasebackupList, listBasebackupsHttp } = await import("../restore/list.js");
  const config = resolveConfigPath(o.config) ? await readConfig(o.config) : undefined;
  const endpoint = daemonEndpoint(o, config);
  const backups = await listBasebackupsHttp({ site: o.site, ...endpoint });
  io.stdout.write(formatBasebackupList(backups, { caption: availableCaption(o.site), verbose: Boolean(o.verbose) }));
  return 0;
}

/** `request-basebackup`: exit 0 once requested (with --wait: once stored), 1 when it failed. */
async function requestHttp(o: HttpListOptions & { wait?: boolean; timeout: number }, io: Io): Promise<number> {
  const { daemonEndpoint, requestBasebackup } = await import("./daemon_client.js");
  const config = resolveConfigPath(o.config) ? await readConfig(o.config) : undefined;
  await requestBasebackup(daemonEndpoint(o, config), {
    site: o.site,
    wait: Boolean(o.wait),
    timeoutSeconds: o.timeout,
    print: (line) => io.stdout.write(`${line}\n`),
  });
  return 0;
}

interface SiteOptions {
  site?: string;
  config?: string;
  json?: boolean;
}

function writeJson(io: Io, value: unknown): void {
  io.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

async function listStore(o: SiteOptions & { verbose?: boolean }, io: Io): Promise<number> {
  const { listSiteBasebackups, closeStores } = await import("../restore/get_basebackup.js");
  const { availableCaption, formatBasebackupList } = await import("../restore/list.js");
  const config = await readConfig(o.config);
  const site = getSiteFromConfig(config, o.site);
  const { backups, stores } = await listSiteBasebackups(config, site, await restoreDeps(config));
  await closeStores(stores);
  if (o.json) {
    const sorted = [...backups].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    writeJson(io, { site, basebackups: sorted.map((b) => ({ name: b.name, size: b.size, metadata: b.metadata })) });
  } else {
    io.stdout.write(formatBasebackupList(backups, { caption: availableCaption(site), verbose: Boolean(o.verbose) }));
  }
  return 0;
}

async function info(o: SiteOptions, io: Io): Promise<number> {
  const { formatSiteInfo, siteInfo } = await import("../restore/info.js");
  const config = await readConfig(o.config);
  const result = await siteInfo(config, getSiteFromConfig(config, o.site));
  if (o.json) writeJson(io, result);
  else io.stdout.write(formatSiteInfo(result));
  return 0;
}

async function verify(o: SiteOptions & { basebackup: string }, io: Io): Promise<number> {
  const { formatVerifyReport, verifyBasebackups, verifyReportJson } = await import("../restore/verify.js");
  const config = await readConfig(o.config);
  const interrupt = abortOnKeyboardInterrupt();
  let report;
  try {
    report = await verifyBasebackups({
      config,
      site: getSiteFromConfig(config, o.site),
      basebackup: o.basebackup,
      // Progress goes to stderr, so stdout stays the report (or clean JSON).
      out: io.stderr,
      quiet: Boolean(o.json) && !(io.stderr as NodeJS.WriteStream).isTTY,
      signal: interrupt.signal,
    });
  } finally {
    interrupt.dispose();
  }
  if (o.json) writeJson(io, verifyReportJson(report));
  else io.stdout.write(formatVerifyReport(report));
  return report.ok ? 0 : 1;
}

async function restoreBasebackup(
  o: Record<string, unknown>,
  globals: { statusOutputFile?: string },
  io: Io,
): Promise<number> {
  const tablespaceDirs = parseTablespaceDirs(o.tablespaceDir as string[] | undefined);
  const { getBasebackup } = await import("../restore/get_basebackup.js");
  const config = await readConfig(o.config as string | undefined);
  const site = getSiteFromConfig(config, o.site as string | undefined);
  const interrupt = abortOnKeyboardInterrupt();
  try {
    await getBasebackup(
      {
        config,
        site,
        targetDir: o.targetDir as string,
        basebackup: o.basebackup as string,
        overwrite: Boolean(o.overwrite),
        delta: Boolean(o.delta),
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
        pghoardPostgresCommandBin: o.pghoardPostgresCommandBin as string | undefined,
        restoreCommandMode: o.restoreCommandMode as "direct" | "daemon",
        configPath: resolveConfigPath(o.config as string | undefined),
        statusOutputFile: globals.statusOutputFile,
        out: io.stdout,
        signal: interrupt.signal,
      },
      await restoreDeps(config),
    );
  } catch (err) {
    if (interrupt.signal.aborted && interrupt.signal.reason instanceof KeyboardInterrupt) throw interrupt.signal.reason;
    throw err;
  } finally {
    interrupt.dispose();
  }
  return 0;
}

/** `drill`: exit 0 when the backup restored and recovered, 1 with the reason otherwise. */
async function drill(o: Record<string, unknown>, io: Io): Promise<number> {
  const { formatDrillReport, runDrill } = await import("../restore/drill.js");
  const configPath = resolveConfigPath(o.config as string | undefined);
  const config = await readConfig(configPath ?? undefined);
  const site = getSiteFromConfig(config, o.site as string | undefined);
  const json = Boolean(o.json);
  // The daemon stops a running drill with SIGTERM: clean up as for Ctrl-C.
  const interrupt = abortOnKeyboardInterrupt(["SIGINT", "SIGTERM"]);
  try {
    const report = await runDrill(
      {
        config,
        configPath: path.resolve(configPath as string),
        site,
        basebackup: o.basebackup as string,
        target: {
          name: o.recoveryTargetName as string | undefined,
          time: o.recoveryTargetTime as string | undefined,
          xid: o.recoveryTargetXid as string | undefined,
          lsn: o.recoveryTargetLsn as string | undefined,
          immediate: Boolean(o.recoveryTargetImmediate),
        },
        scratchDir: o.scratchDir as string | undefined,
        timeoutSeconds: o.timeout as number,
        postgresCommandBin: o.pghoardPostgresCommandBin as string | undefined,
        signal: interrupt.signal,
        progress: json ? undefined : (line) => io.stdout.write(`${line}\n`),
      },
      await restoreDeps(config),
    );
    if (json) io.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    else io.stdout.write(formatDrillReport(report));
    if (!report.success && !json) throw new RestoreError(report.error ?? "drill failed");
    return report.success ? 0 : 1;
  } finally {
    interrupt.dispose();
  }
}

export async function main(
  argv: string[],
  io: Io = { stdout: process.stdout, stderr: process.stderr },
): Promise<number> {
  // Restores and verifies stream through 1 MiB buffers: reuse memory instead of faulting it in afresh.
  tuneAllocator();
  return runCli(
    RESTORE_SPEC,
    argv,
    async (inv) => {
      if (inv.command === "list-basebackups-http") return listHttp(inv.opts as unknown as HttpListOptions, io);
      if (inv.command === "request-basebackup")
        return requestHttp(inv.opts as unknown as HttpListOptions & { wait?: boolean; timeout: number }, io);
      if (inv.command === "list-basebackups") return listStore(inv.opts, io);
      if (inv.command === "info") return info(inv.opts, io);
      if (inv.command === "verify") return verify(inv.opts as unknown as SiteOptions & { basebackup: string }, io);
      if (inv.command === "drill") return drill(inv.opts, io);
      return restoreBasebackup(inv.opts, inv.globals, io);
    },
    {
      io,
      fatal: (inv) => ({
        write: (line) => io.stdout.write(`${line}\n`),
        stack: Boolean(inv.globals.debug),
        // Upstream wraps anything unexpected as RestoreError("<ExceptionClass>: <message>").
        expected: (err) => err instanceof ConfigError || err instanceof RestoreError,
        unexpected: (err) => new RestoreError(describeError(err)),
      }),
    },
  );
}
