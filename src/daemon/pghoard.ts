/**
 * The pghoard daemon (operations.md §1, §2, §7, §13): loads the config, starts the compressor and
 * transfer workers and the HTTP server, recovers the spool, then runs the main loop — every site,
 * then the state file, every 5 seconds — until a signal or a critical failure stops it.
 *
 * Signals: SIGHUP reloads the config (an invalid file is logged and the old config kept);
 * SIGTERM drains the compression and upload queues (graceful_shutdown_*_timeout) and exits 0;
 * a second SIGTERM, or SIGINT, stops at once.
 */
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { access, constants, mkdir, readdir, readFile, realpath, stat, unlink } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import type { Logger } from "pino";
import { ConfigError, loadConfig } from "../config/index.js";
import type { PghoardConfig } from "../config/types.js";
import { FileFormatPool } from "../fileformat/index.js";
import { Metrics } from "../monitoring/index.js";
import { writeFileAtomic } from "../common/fs.js";
import { isDiskFull } from "../common/errors.js";
import { PidLock, processExists } from "../common/pid_lock.js";
import { Compressors } from "./compressor.js";
import { DaemonContext } from "./context.js";
import { pyNaiveIsoformatUtc } from "../common/pycompat.js";
import { stringifySorted } from "./json.js";
import type { DaemonPlugin, DaemonPluginFactory, SiteHandle, SiteState } from "./plugins.js";
import { sleep } from "../common/async.js";
import { recoverSpool } from "./recovery.js";
import { SystemdNotifier } from "./sdnotify.js";
import { createSiteSpoolDirs } from "./spool.js";
import { TransferAgents, type TransferAgentState } from "./transfer.js";
import { WebServer } from "./webserver.js";

const MAIN_LOOP_INTERVAL_MS = 5000;

export interface PGHoardOptions {
  log: Logger;
  /** Parts from other areas, created in this order at start (see plugins.ts). */
  plugins: DaemonPluginFactory[];
  /** Called after each successful (re)load with the config's `log_level`. */
  onLogLevel?: (level: string) => void;
  /** Compressor retry interval (tests). */
  compressionRetryIntervalMs?: number;
}

/** A directory the daemon writes into must exist and be writable; the error names the config key. */
async function requireWritableDirectory(dir: string, key: string): Promise<void> {
  let isDirectory: boolean;
  try {
    isDirectory = (await stat(dir)).isDirectory();
  } catch {
    throw new ConfigError(
      `${key}: directory ${dir} does not exist (create it for the daemon's user, or change ${key})`,
    );
  }
  if (!isDirectory) throw new ConfigError(`${key}: ${dir} is not a directory`);
  try {
    await access(dir, constants.W_OK);
  } catch {
    throw new ConfigError(`${key}: directory ${dir} is not writable by this user (uid ${process.getuid?.()})`);
  }
}

export class PGHoard {
  ctx!: DaemonContext;
  webserver!: WebServer;
  compressors!: Compressors;
  transferAgents!: TransferAgents;
  private plugins: DaemonPlugin[] = [];
  private siteStates: Record<string, SiteState> = {};
  private readonly startupTime = pyNaiveIsoformatUtc(new Date());
  private running = false;
  private wake = new AbortController();
  private shutdownMode: "none" | "graceful" | "immediate" = "none";
  private signalHandlers: Array<[NodeJS.Signals, () => void]> = [];
  private exitCode = 0;
  private stateWrite: Promise<void> = Promise.resolve();
  /** Single-daemon locks (per config file, per backup_location); taken before anything else. */
  private locks: PidLock[] = [];
  /** sd_notify under systemd (no-op otherwise): READY=1 after the first main-loop round, STOPPING=1, watchdog. */
  private readonly systemd = new SystemdNotifier({ warn: (m) => this.log.warn(m) });

  constructor(
    readonly configPath: string,
    private readonly options: PGHoardOptions,
  ) {}

  get log(): Logger {
    return this.options.log;
  }

  /** Loads the config and starts everything; throws ConfigError when the config is invalid. */
  async init(): Promise<void> {
    await this.lockConfigFile();
    const config = await loadConfig(this.configPath, { tool: "daemon", warn: (m) => this.log.warn(m) });
    this.options.onLogLevel?.(config.log_level);
    if (!config.backup_location) throw new Error("backup_location must be set for the daemon");
    await mkdir(config.backup_location, { recursive: true });
    // Refused here in one line, not an ERROR with a stack trace at every main-loop round.
    await requireWritableDirectory(path.dirname(path.resolve(config.json_state_file_path)), "json_state_file_path");
    await requireWritableDirectory(path.resolve(config.alert_file_dir), "alert_file_dir");
    // Before any plugin runs: a second daemon must not touch the first one's children or spool.
    this.locks.push(
      await PidLock.acquire(
        path.join(config.backup_location, ".pghoard.lock"),
        `backup_location ${config.backup_location}`,
      ),
    );

    await removeDeadStateTempFiles(config.json_state_file_path);

    const pool = new FileFormatPool(Math.max(1, config.compression.thread_count));
    const metrics = new Metrics(config, { log: this.log });
    this.ctx = new DaemonContext(config, metrics, this.log, pool);

    // Counters survive restarts (upstream reads transfer_agent_state back).
    let transferState: TransferAgentState = {};
    try {
      const previous = JSON.parse(await readFile(config.json_state_file_path, "utf8")) as Record<string, unknown>;
      this.ctx.previousState = previous;
      if (previous.transfer_agent_state && typeof previous.transfer_agent_state === "object") {
        transferState = previous.transfer_agent_state as TransferAgentState;
      }
    } catch {
      // no previous state file (or unreadable): start from zero
    }

    this.compressors = new Compressors(this.ctx, this.options.compressionRetryIntervalMs);
    this.ctx.compressionDeleter = (p) => void this.compressors.walDeleter.add(p);
    this.transferAgents = new TransferAgents(this.ctx, transferState);
    this.webserver = new WebServer(this.ctx);
    for (const factory of this.options.plugins) this.plugins.push(await factory(this.ctx));

    this.compressors.start(config.compression.thread_count);
    this.transferAgents.start(Math.max(1, config.transfer.thread_count));
    const address = await this.webserver.start();
    this.log.info(`pghoard initialized, HTTP server on ${address.address}:${address.port}, cwd: ${process.cwd()}`);
    for (const [site, siteConfig] of Object.entries(config.backup_sites)) {
      // GET /<site>/archive/<name> writes only inside pg_data_directory: without one, every restore request fails.
      if (!siteConfig.pg_data_directory) {
        this.log.warn(
          `Site '${site}' has no pg_data_directory: this daemon cannot serve restore_command for it (use pghoard_postgres_command --config instead)`,
        );
      }
    }
    this.installSignalHandlers();
    for (const site of Object.keys(config.backup_sites)) await recoverSpool(this.ctx, site);
  }

  /**
   * The config file's lock lives in the temp directory (the config's own directory is often not
   * writable by the daemon), named after the file's real path.
   */
  private async lockConfigFile(): Promise<void> {
    const real = await realpath(this.configPath);
    const digest = createHash("sha256").update(real).digest("hex").slice(0, 16);
    const file = path.join(os.tmpdir(), `pghoard-config-${digest}.lock`);
    this.locks.push(await PidLock.acquire(file, `config file ${real}`));
  }

  private installSignalHandlers(): void {
    const on = (signal: NodeJS.Signals, handler: () => void): void => {
      process.on(signal, handler);
      this.signalHandlers.push([signal, handler]);
    };
    on("SIGHUP", () => void this.reloadConfig());
    on("SIGTERM", () => this.requestStop(this.shutdownMode === "none" ? "graceful" : "immediate", "SIGTERM"));
    on("SIGINT", () => this.requestStop("immediate", "SIGINT"));
  }

  private removeSignalHandlers(): void {
    for (const [signal, handler] of this.signalHandlers) process.off(signal, handler);
    this.signalHandlers = [];
  }

  requestStop(mode: "graceful" | "immediate", reason: string): void {
    if (mode === "immediate" && this.shutdownMode !== "immediate") {
      void this.systemd.stopping();
      this.log.warn(`Quitting immediately (${reason})`);
      this.shutdownMode = "immediate";
      void this.immediateExit();
      return;
    }
    if (this.shutdownMode === "none") {
      void this.systemd.stopping();
      this.log.warn(`Quitting gracefully (${reason}): draining compression and upload queues`);
      this.shutdownMode = "graceful";
      this.running = false;
      this.wake.abort();
    }
  }

  async reloadConfig(): Promise<boolean> {
    this.log.info(`Reloading configuration from ${this.configPath}`);
    void this.systemd.reloading();
    let config: PghoardConfig;
    try {
      config = await loadConfig(this.configPath, { tool: "daemon", warn: (m) => this.log.warn(m) });
    } catch (err) {
      this.log.error(`Invalid config file ${this.configPath}, keeping the current configuration: ${String(err)}`);
      void this.systemd.ready();
      return false;
    }
    this.ctx.replaceConfig(config);
    this.options.onLogLevel?.(config.log_level);
    await this.ctx.metrics.reconfigure(config);
    for (const plugin of this.plugins) {
      try {
        plugin.configReloaded?.();
      } catch (err) {
        this.log.error({ err }, `Plugin ${plugin.name} failed to apply the new configuration`);
      }
    }
    this.log.info("Configuration reloaded");
    void this.systemd.ready();
    return true;
  }

  /** Runs until stopped; resolves to the process exit code. */
  async run(): Promise<number> {
    // A SIGTERM that arrived during init() already asked for a stop.
    this.running = this.shutdownMode === "none";
    let readySent = false;
    this.ctx.criticalFailure.signal.addEventListener("abort", () => this.wake.abort(), { once: true });
    this.ctx.wakeMainLoop = () => this.wake.abort();
    while (this.running) {
      try {
        for (const site of Object.keys(this.ctx.config.backup_sites)) {
          await this.handleSite(site);
          if (!this.running) break;
        }
        await this.writeStateFile();
        this.systemd.heartbeat();
        if (!readySent && this.running) {
          readySent = true;
          void this.systemd.ready();
        }
      } catch (err) {
        this.log.error({ err }, "Unexpected exception in PGHoard main loop");
        this.ctx.metrics.unexpectedException(err, "pghoard_run");
      }
      if (this.ctx.criticalFailure.signal.aborted) {
        this.log.error("Unexpected critical failure in a PGHoard worker. Quitting main loop.");
        this.ctx.metrics.increase("pghoard.unrecoverable_quit_main_loop_failure");
        this.exitCode = 1;
        break;
      }
      if (!this.running) break;
      await sleep(MAIN_LOOP_INTERVAL_MS, this.wake.signal);
      if (this.wake.signal.aborted && this.running) this.wake = new AbortController();
    }
    if (this.shutdownMode === "immediate") return new Promise<number>(() => undefined); // immediateExit ends the process
    await this.gracefulShutdown();
    return this.exitCode;
  }

  private async handleSite(site: string): Promise<void> {
    const siteConfig = this.ctx.site(site);
    if (!this.siteStates[site]) this.siteStates[site] = { basebackups: [] };
    const spool = this.ctx.spoolPaths(site);
    await createSiteSpoolDirs(spool);
    if (!siteConfig.active) return;
    const handle: SiteHandle = {
      site,
      siteConfig,
      spool,
      state: this.siteStates[site],
      maintenanceMode: () => existsSync(this.ctx.config.maintenance_mode_file),
      queueIncomingFile: (fullPath: string) => {
        const filetype = path.basename(fullPath).endsWith(".history") ? "timeline" : "xlog";
        this.ctx.compressionQueue.put({
          site,
          filetype,
          fullPath,
          compressToMemory: false,
          deleteFileAfterCompression: true,
        });
      },
    };
    for (const plugin of this.plugins) {
      if (!plugin.handleSite) continue;
      try {
        await plugin.handleSite(handle);
      } catch (err) {
        this.log.error({ err }, `Plugin ${plugin.name} failed for site ${site}`);
        this.ctx.metrics.unexpectedException(err, "pghoard_run");
      }
    }
  }

  /** operations.md §7 */
  buildState(): Record<string, unknown> {
    const state: Record<string, unknown> = {
      backup_sites: this.siteStates,
      compressors: this.compressors.states,
      pg_basebackups: {},
      pg_receivexlogs: {},
      walreceivers: {},
      queues: {
        compression_queue: this.ctx.compressionQueue.size,
        transfer_queue: this.ctx.transferQueue.size,
      },
      served_files: this.webserver.mostRecentlyServedFiles,
      startup_time: this.startupTime,
      transfer_agent_state: this.transferAgents.state,
    };
    for (const plugin of this.plugins) {
      try {
        plugin.writeState?.(state);
      } catch (err) {
        this.log.error({ err }, `Plugin ${plugin.name} failed to write its state`);
      }
    }
    return state;
  }

  /** Atomic write (temp file in the same directory, rename); serialized so writes never interleave. */
  writeStateFile(): Promise<void> {
    const write = async (): Promise<void> => {
      const file = this.ctx.config.json_state_file_path;
      const text = `${stringifySorted(this.buildState())}\n`;
      const tempPath = path.join(path.dirname(file), `${path.basename(file)}.${process.pid}.tmp`);
      try {
        await writeFileAtomic(file, text, { tempPath });
      } catch (err) {
        // A full disk is an expected condition: one line, no stack trace, every time it happens.
        if (isDiskFull(err)) this.log.error(`Problem writing state file ${file}: ${(err as Error).message}`);
        else this.log.error({ err }, `Problem writing state file ${file}`);
      }
    };
    this.stateWrite = this.stateWrite.then(write, write);
    return this.stateWrite;
  }

  private async waitUntil(condition: () => boolean, timeoutSeconds: number | null): Promise<boolean> {
    const deadline = timeoutSeconds === null ? Infinity : Date.now() + timeoutSeconds * 1000;
    while (!condition()) {
      if (this.shutdownMode === "immediate" || Date.now() >= deadline) return false;
      await sleep(50);
    }
    return true;
  }

  private async gracefulShutdown(): Promise<void> {
    const config = this.ctx.config;
    for (const plugin of this.plugins) {
      try {
        await plugin.stop?.(true);
      } catch (err) {
        this.log.error({ err }, `Plugin ${plugin.name} failed to stop`);
      }
    }
    const drained = this.webserver.stop();
    const compressed = await this.waitUntil(
      () => this.ctx.compressionQueue.size === 0 && this.compressors.inProgress === 0,
      config.graceful_shutdown_compression_timeout,
    );
    if (!compressed) this.log.warn("Compression queue not drained before graceful_shutdown_compression_timeout");
    await this.compressors.stop();
    const uploaded = await this.waitUntil(
      () => this.transferAgents.pendingCount === 0,
      config.graceful_shutdown_upload_timeout,
    );
    if (!uploaded) this.log.warn("Upload queue not drained before graceful_shutdown_upload_timeout");
    await this.transferAgents.stop();
    await Promise.race([drained, sleep(1000)]);
    this.webserver.stopNow();
    await this.writeStateFile();
    await this.release();
    this.log.info("pghoard stopped");
  }

  private async immediateExit(): Promise<void> {
    this.running = false;
    this.webserver?.stopNow();
    for (const plugin of this.plugins) {
      await Promise.race([plugin.stop?.(false).catch(() => undefined), sleep(1000)]);
    }
    await Promise.race([this.writeStateFile(), sleep(2000)]);
    process.exit(0);
  }

  private async release(): Promise<void> {
    this.systemd.stopWatchdog();
    this.removeSignalHandlers();
    await this.ctx.pool.close();
    await this.ctx.closeStorages();
    await this.ctx.metrics.close();
    for (const lock of this.locks) lock.release();
  }
}

/**
 * A daemon killed while writing the state file leaves `<state file>.<pid>.tmp`; the name is per
 * process, so nothing would ever overwrite or remove it. Those of processes that are gone are removed.
 */
async function removeDeadStateTempFiles(stateFile: string): Promise<void> {
  const dir = path.dirname(path.resolve(stateFile));
  const prefix = `${path.basename(stateFile)}.`;
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return; // the directory check at start-up reports an unusable directory
  }
  for (const name of names) {
    const pid =
      name.startsWith(prefix) && name.endsWith(".tmp") ? Number(name.slice(prefix.length, -".tmp".length)) : NaN;
    if (!Number.isSafeInteger(pid) || pid <= 0 || pid === process.pid || processExists(pid)) continue;
    await unlink(path.join(dir, name)).catch(() => undefined);
  }
}
