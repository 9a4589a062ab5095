/**
 * `pghoard_restore get-basebackup`: select a backup, check the destination, download and extract
 * every object, write the recovery configuration (cli.md §2.3).
 *
 * Failure policy: `global/pg_control` is written under a temporary name and renamed into place
 * only after everything else succeeded, so an interrupted or failed restore never leaves a
 * directory PostgreSQL would start. On a failure that we catch, everything restored is removed
 * again: a target directory we created (or wiped with --overwrite) is deleted, an existing empty
 * one is emptied again; the same for tablespace directories. A delta restore (`--delta`) keeps
 * the directory and leaves it without `global/pg_control` instead (delta_restore.ts).
 *
 * Targets in use by a running PostgreSQL or configured as an active site's `pg_data_directory`
 * are refused before anything is touched (target_safety.ts).
 */
import { mkdir, readdir, rm, chmod, access, constants as fsConstants } from "node:fs/promises";
import { mkdtemp } from "node:fs/promises";
import path from "node:path";
import type { Duplex } from "node:stream";

import { preservationRequestKey, preservationRequestMetadata } from "../catalog/index.js";
import { exists } from "../common/fs.js";
import type { PghoardConfig } from "../config/types.js";
import type { ObjectStorageConfig } from "../storage/index.js";
import type { Metadata, StorageBackend } from "../storage/types.js";
import { RestoreError, describeError } from "./errors.js";
import { fetchAll, ProgressTracker } from "./fetch.js";
import { listBasebackups, type BasebackupEntry, type SiteStore } from "./list.js";
import { planRestore, type RestorePlan } from "./plan.js";
import { ProgressReporter } from "./progress.js";
import { parseTimestamp, pyStrDatetime, type ParsedTimestamp } from "../common/pycompat.js";
import {
  RECOVERY_TARGET_CONFLICT,
  restoreCommandHint,
  writeRecoveryConfig,
  type RecoveryConfig,
  type RestoreCommandMode,
} from "./recovery.js";
import { selectBasebackup } from "./select.js";
import { meaningfulEntries, RestoreTarget, type TablespaceTarget } from "./target.js";
import { ObjectWorkers } from "./workers.js";
import { abandonDeltaRestore, checkDeltaTarget, prepareDeltaTarget, pruneDeltaTarget } from "./delta_restore.js";
import { TargetSafety } from "./target_safety.js";

export type PrivateKeyLookup = (keyId: string) => string | undefined;

/** The modules restore builds on, passed in so the command wires the real ones. */
export interface RestoreDeps {
  /** Storage of a configured site (its own `object_storage`). */
  createStorage(site: string): Promise<StorageBackend>;
  /**
   * The site's `object_storage` config: when given, each object is restored entirely inside an
   * object worker thread (read, decrypt, decompress, extract); otherwise in-process.
   */
  storageConfig?(site: string): ObjectStorageConfig | undefined;
  privateKeyLookup(site: string): PrivateKeyLookup;
  /** Decode stream (decrypt + decompress per metadata) for objects restored in-process. */
  createDecodeStream(metadata: Metadata, privateKeyPem: string | null): Duplex;
  decodeBuffer(data: Buffer, metadata: Metadata, keys: PrivateKeyLookup): Promise<Buffer>;
}

export interface GetBasebackupOptions {
  config: PghoardConfig;
  site: string;
  targetDir: string;
  basebackup?: string;
  overwrite?: boolean;
  /** Restore over an existing stopped data directory, rewriting only what differs (delta_restore.ts). */
  delta?: boolean;
  /** `--tablespace-dir NAME=DIR` values. */
  tablespaceDirs?: Record<string, string>;
  tablespaceBaseDir?: string;
  /** Every tablespace goes to `DIR/<oid>` (created), whatever its original path: a drill must never touch the live ones. */
  tablespaceRelocateDir?: string;
  primaryConninfo?: string;
  recoveryEndCommand?: string;
  recoveryTargetAction?: "pause" | "promote" | "shutdown";
  recoveryTargetName?: string;
  recoveryTargetTime?: string;
  recoveryTargetXid?: string;
  recoveryTargetLsn?: string;
  recoveryTargetImmediate?: boolean;
  restoreToPrimary?: boolean;
  preserveUntil?: string;
  cancelPreserveOnSuccess?: boolean;
  pghoardPostgresCommandBin?: string;
  /** restore_command: "direct" (default, reads `configPath`'s storage) or "daemon" (upstream's). */
  restoreCommandMode?: RestoreCommandMode;
  /** The config file restored with, written into the direct restore_command. */
  configPath?: string;
  statusOutputFile?: string;
  /** Where messages go (stdout). */
  out: NodeJS.WritableStream;
  /** Progress bar only when this is a TTY (defaults to `out.isTTY`). */
  isTTY?: boolean;
  signal?: AbortSignal;
  /** Override of the stall timeout (tests). */
  stallTimeoutMs?: number;
}

export interface GetBasebackupResult {
  backup: BasebackupEntry;
  plan: RestorePlan;
  recovery: RecoveryConfig;
  tablespaces: TablespaceTarget[];
}

/** Checked first, before anything is listed or touched. */
export function checkRecoveryTargets(
  opts: Pick<
    GetBasebackupOptions,
    "recoveryTargetName" | "recoveryTargetTime" | "recoveryTargetXid" | "recoveryTargetLsn" | "recoveryTargetImmediate"
  >,
): void {
  const classic = [opts.recoveryTargetName, opts.recoveryTargetTime, opts.recoveryTargetXid].filter(
    (v) => v !== undefined && v !== null,
  );
  if (classic.length > 1) throw new RestoreError(RECOVERY_TARGET_CONFLICT);
  const all = classic.length + (opts.recoveryTargetLsn ? 1 : 0) + (opts.recoveryTargetImmediate ? 1 : 0);
  if (all > 1) {
    throw new RestoreError(
      "Specify at most one of recovery_target_name, recovery_target_time, recovery_target_xid, recovery_target_lsn or recovery_target = 'immediate'",
    );
  }
}

async function checkWritable(dir: string, what: string): Promise<void> {
  try {
    await access(dir, fsConstants.W_OK);
    // access() ignores read-only mounts for root; a real create proves it.
    const probe = await mkdtemp(path.join(dir, ".pghoard_restore_probe-"));
    await rm(probe, { recursive: true });
  } catch {
    throw new RestoreError(`${what} target directory '${dir}' is empty, but not writable, aborting.`);
  }
}

async function emptyDirectory(dir: string): Promise<void> {
  for (const entry of await readdir(dir).catch(() => [] as string[])) {
    if (entry === "lost+found") continue;
    await rm(path.join(dir, entry), { recursive: true, force: true });
  }
}

function siteStores(config: PghoardConfig, site: string): string[] {
  const siteConfig = config.backup_sites[site];
  const sites = [site];
  for (const moved of siteConfig.moved_from ?? []) {
    if (!config.backup_sites[moved]) {
      throw new RestoreError(`Site '${site}' has moved_from '${moved}', which is not defined in backup_sites`);
    }
    sites.push(moved);
  }
  return sites;
}

/** Lists the site's backups and those of its `moved_from` sites, each through its own store. */
export async function listSiteBasebackups(
  config: PghoardConfig,
  site: string,
  deps: Pick<RestoreDeps, "createStorage">,
): Promise<{ backups: BasebackupEntry[]; stores: Map<string, SiteStore> }> {
  const stores = new Map<string, SiteStore>();
  for (const name of siteStores(config, site)) {
    stores.set(name, { site: name, prefix: config.backup_sites[name].prefix, storage: await deps.createStorage(name) });
  }
  return { backups: await listBasebackups([...stores.values()]), stores };
}

export async function closeStores(stores: Map<string, SiteStore>): Promise<void> {
  for (const store of stores.values()) await store.storage.close().catch(() => undefined);
}

/** A timestamp option, or null; errors name the option as upstream does. */
function parseOptionTime(name: string, value: string | undefined): ParsedTimestamp | null {
  if (value === undefined) return null;
  try {
    return parseTimestamp(value);
  } catch (err) {
    throw new RestoreError(`${name} '${value}': ${(err as Error).message}`);
  }
}

export async function getBasebackup(opts: GetBasebackupOptions, deps: RestoreDeps): Promise<GetBasebackupResult> {
  const print = (text: string): void => {
    opts.out.write(text.endsWith("\n") ? text : text + "\n");
  };
  checkRecoveryTargets(opts);
  const targetTime = parseOptionTime("recovery_target_time", opts.recoveryTargetTime);
  const preserveUntil = parseOptionTime("preserve_until", opts.preserveUntil);

  const pgdata = path.resolve(opts.targetDir);
  const safety = await TargetSafety.load(opts.config);
  await safety.check(pgdata, "$PGDATA");
  const { backups, stores } = await listSiteBasebackups(opts.config, opts.site, deps);
  try {
    const { backup, output } = selectBasebackup(backups, {
      name: opts.basebackup ?? "latest",
      recoveryTargetTime: targetTime,
    });
    opts.out.write(output);
    const backupSite = backup.site ?? opts.site;
    const store = stores.get(backupSite) ?? [...stores.values()][0];
    const metadata = await store.storage.getMetadataForKey(backup.name);

    // Keys of the backup's own site first, then of the restored site.
    const ownKeys = deps.privateKeyLookup(backupSite);
    const siteKeys = deps.privateKeyLookup(opts.site);
    const keys: PrivateKeyLookup = (id) => ownKeys(id) ?? siteKeys(id);
    const keyFor = (meta: Metadata, label: string): string | null => {
      const keyId = meta["encryption-key-id"];
      if (!keyId) return null;
      const pem = keys(keyId);
      if (!pem) {
        throw new RestoreError(
          `Object '${label}' is encrypted with key '${keyId}', but no private key for it is configured for site '${backupSite}' (backup_sites.${backupSite}.encryption_keys.${keyId}.private)`,
        );
      }
      return pem;
    };
    keyFor(metadata, backup.name);

    let preservationRequest: string | undefined;
    if (preserveUntil) {
      const backupBase = path.posix.basename(backup.name);
      const until = pyStrDatetime(preserveUntil);
      const requestName = `${backupBase}_${until}`;
      try {
        await store.storage.storeFileFromMemory(
          preservationRequestKey(store.prefix, requestName),
          Buffer.alloc(0),
          preservationRequestMetadata(backupBase, until),
        );
        preservationRequest = requestName;
      } catch (err) {
        process.stderr.write(`Could not request backup preservation: ${describeError(err)}\n`);
      }
    }

    // Destination checks (nothing is changed until all of them passed).
    let pgdataState: "create" | "wipe" | "existing-empty" | "delta";
    if (!(await exists(pgdata, { noFollow: true }))) pgdataState = "create";
    else if (opts.delta && (await meaningfulEntries(pgdata)).length > 0) {
      await checkDeltaTarget(pgdata, opts.targetDir);
      pgdataState = "delta";
    } else if (opts.overwrite) pgdataState = "wipe";
    else if ((await meaningfulEntries(pgdata)).length === 0) pgdataState = "existing-empty";
    else
      throw new RestoreError(
        `$PGDATA target directory '${opts.targetDir}' exists, is not empty and --overwrite not specified, aborting.`,
      );

    const plan = await planRestore({
      name: backup.name,
      size: backup.size,
      metadata,
      storage: store.storage,
      sitePrefix: store.prefix,
      storageConfig: deps.storageConfig?.(backupSite),
      decodeBuffer: (data, meta, label) => {
        keyFor(meta, label);
        return deps.decodeBuffer(data, meta, keys).catch((err: unknown) => {
          const name = err instanceof Error ? err.name : "";
          throw new RestoreError(
            name === "IntegrityError" || name === "FileFormatError"
              ? `Object '${label}' is corrupt or was tampered with: ${(err as Error).message}`
              : `Object '${label}': ${describeError(err)}`,
          );
        });
      },
    });

    if (opts.tablespaceBaseDir && !(await exists(opts.tablespaceBaseDir, { noFollow: true })) && !opts.overwrite) {
      throw new RestoreError(`Tablespace base directory '${opts.tablespaceBaseDir}' does not exist, aborting.`);
    }
    const mapping = new Map(Object.entries(opts.tablespaceDirs ?? {}));
    const tablespaces: TablespaceTarget[] = [];
    const createdTablespaceDirs: string[] = [];
    /** Tablespace directories a delta restore works on (their files stay if it fails). */
    const deltaTablespaceDirs: string[] = [];
    try {
      for (const [name, info] of Object.entries(plan.tablespaces)) {
        let tsPath = mapping.get(name) ?? info.path;
        mapping.delete(name);
        const baseDir = opts.tablespaceRelocateDir ?? opts.tablespaceBaseDir;
        // A relocating restore (the drill) never writes to the original path, which may be the live cluster's.
        if (!opts.tablespaceRelocateDir) await safety.check(tsPath, `Tablespace '${name}'`);
        if (baseDir && (opts.tablespaceRelocateDir || !(await exists(tsPath, { noFollow: true })))) {
          tsPath = path.join(baseDir, String(info.oid));
          await safety.check(tsPath, `Tablespace '${name}'`);
          if (!(await exists(tsPath, { noFollow: true }))) {
            await mkdir(tsPath, { recursive: true, mode: 0o700 });
            createdTablespaceDirs.push(path.resolve(tsPath));
          }
        }
        if (!(await exists(tsPath, { noFollow: true }))) {
          throw new RestoreError(`Tablespace '${name}' target directory '${tsPath}' does not exist, aborting.`);
        }
        const tsInUse = (await meaningfulEntries(tsPath)).length > 0;
        if (tsInUse && opts.delta) deltaTablespaceDirs.push(path.resolve(tsPath));
        else if (tsInUse) {
          throw new RestoreError(
            `Tablespace '${name}' target directory '${tsPath}' exists but is not empty, aborting.`,
          );
        }
        const absolute = path.resolve(tsPath);
        if (absolute === pgdata || absolute.startsWith(pgdata + path.sep) || pgdata.startsWith(absolute + path.sep)) {
          throw new RestoreError(
            `Tablespace '${name}' target directory '${tsPath}' overlaps the target directory '${pgdata}', aborting.`,
          );
        }
        print(
          tsInUse
            ? `Delta restoring tablespace '${name}' into existing directory '${tsPath}'`
            : `Using existing empty directory '${tsPath}' for tablespace '${name}'`,
        );
        await checkWritable(tsPath, `Tablespace '${name}'`);
        tablespaces.push({ name, oid: info.oid, path: absolute });
      }
    } catch (err) {
      // A later tablespace failed its checks: directories made for earlier ones go again.
      for (const dir of createdTablespaceDirs) await rm(dir, { recursive: true, force: true });
      throw err;
    }
    if (mapping.size > 0) {
      const names = [...mapping.keys()].sort().map((n) => `'${n}'`);
      throw new RestoreError(
        `Tablespace mapping for [${names.join(", ")}] was requested, but the tablespaces are not present in the backup`,
      );
    }
    if (pgdataState === "existing-empty") await checkWritable(pgdata, "$PGDATA");

    // From here on files are changed: undo everything on failure.
    if (pgdataState === "wipe") await rm(pgdata, { recursive: true, force: true });
    if (pgdataState !== "existing-empty") await mkdir(pgdata, { recursive: true, mode: 0o700 });
    await chmod(pgdata, 0o700);
    const target = new RestoreTarget(pgdata, tablespaces, { delta: Boolean(opts.delta) });
    const tracker = new ProgressTracker(plan.items);
    const reporter = new ProgressReporter({
      tracker,
      out: opts.out,
      statusOutputFile: opts.statusOutputFile,
      isTTY: opts.isTTY,
    });
    let recovery: RecoveryConfig;
    try {
      if (opts.delta) await prepareDeltaTarget(target);
      for (const dir of plan.emptyDirs) {
        const absolute = target.resolve(dir, "the delta manifest");
        await target.addDirectory(absolute, 0o700, undefined);
      }
      const concurrency = Math.max(1, opts.config.restore_process_count ?? 1);
      const objectCount = plan.items.filter((i) => i.kind === "tar-object" || i.kind === "file-object").length;
      const workers = deps.storageConfig
        ? new ObjectWorkers(
            Math.max(1, Math.min(concurrency, objectCount)),
            target,
            privateKeysOf(opts.config, [backupSite, opts.site], deps),
          )
        : undefined;
      reporter.start();
      try {
        await fetchAll({
          target,
          items: plan.items,
          concurrency,
          createDecodeStream: (meta, label) => deps.createDecodeStream(meta, keyFor(meta, label)),
          workers,
          progress: tracker,
          stallTimeoutMs: opts.stallTimeoutMs,
          signal: opts.signal,
        });
      } finally {
        // Before anything else touches the target: no worker may still be writing.
        await workers?.close();
        await reporter.stop();
      }
      if (opts.signal?.aborted) throw opts.signal.reason ?? new RestoreError("Restore interrupted");
      if (opts.delta) {
        const removed = await pruneDeltaTarget(target);
        const { written, unchanged } = target.deltaStats;
        print(
          `Delta restore: ${unchanged} files unchanged, ${written} written, ${removed} files and directories the backup does not have removed`,
        );
      }
      await target.finish();
      const webUser = opts.config.webserver_username;
      const webPassword = opts.config.webserver_password;
      recovery = await writeRecoveryConfig(pgdata, {
        site: opts.site,
        port: opts.config.http_port,
        commandBin: opts.pghoardPostgresCommandBin,
        restoreCommandMode: opts.restoreCommandMode,
        configPath: opts.configPath,
        username: webUser,
        password: webPassword,
        primaryConninfo: opts.primaryConninfo,
        recoveryEndCommand: opts.recoveryEndCommand,
        targetAction: opts.recoveryTargetAction,
        targetName: opts.recoveryTargetName,
        targetTime: targetTime ? pyStrDatetime(targetTime) : undefined,
        targetXid: opts.recoveryTargetXid,
        targetLsn: opts.recoveryTargetLsn,
        targetImmediate: opts.recoveryTargetImmediate,
        restoreToPrimary: opts.restoreToPrimary,
      });
      for (const warning of recovery.warnings) print(warning);
      if (!target.hasPgControl) {
        throw new RestoreError(`Basebackup '${backup.name}' contains no global/pg_control; it is incomplete`);
      }
      // Durable before startable: every file was fsync'd as written, now every directory.
      await target.syncDirectories();
      await target.publishPgControl();
    } catch (err) {
      let what: string;
      if (pgdataState === "delta" || deltaTablespaceDirs.length > 0) {
        await abandonDeltaRestore(pgdata);
        what = `'${pgdata}' is partly delta restored and has no global/pg_control, so PostgreSQL will not start from it; run the same get-basebackup --delta again to finish.`;
      } else {
        await undoRestore(pgdata, pgdataState, tablespaces, createdTablespaceDirs);
        const removed = pgdataState === "existing-empty" ? `Emptied '${pgdata}' again` : `Removed '${pgdata}'`;
        what = `${removed}${tablespaces.length ? " and the tablespace directories" : ""}, so nothing half-restored is left behind.`;
      }
      process.stderr.write(
        opts.signal?.aborted
          ? `Restore of '${backup.name}' interrupted. ${what}\n`
          : `Restore of '${backup.name}' failed. ${what}\n` +
              "Fix the cause reported in the FATAL line (object store access, encryption keys; for a damaged object try another backup with --basebackup) " +
              "and run pghoard_restore get-basebackup again.\n",
      );
      throw err;
    }

    if (preservationRequest && opts.cancelPreserveOnSuccess !== false) {
      try {
        await store.storage.deleteKey(preservationRequestKey(store.prefix, preservationRequest));
      } catch (err) {
        process.stderr.write(`Could not cancel backup preservation: ${describeError(err)}\n`);
      }
    }

    print("Basebackup restoration complete.");
    if (process.getuid?.() === 0) {
      print(
        `The restored files belong to root: give them to the PostgreSQL user first, e.g. chown -R postgres: ${pgdata}`,
      );
    }
    print(`You can start PostgreSQL by running pg_ctl -D ${pgdata} start`);
    print("On systemd based systems you can run systemctl start postgresql");
    print("On SYSV Init based systems you can run /etc/init.d/postgresql start");
    print(restoreCommandHint(opts));
    return { backup, plan, recovery, tablespaces };
  } finally {
    await closeStores(stores);
  }
}

/** keyId → private PEM for the given sites (what object workers may need to decrypt). */
function privateKeysOf(
  config: PghoardConfig,
  sites: string[],
  deps: Pick<RestoreDeps, "privateKeyLookup">,
): Record<string, string> {
  const keys: Record<string, string> = {};
  for (const site of [...sites].reverse()) {
    const lookup = deps.privateKeyLookup(site);
    for (const keyId of Object.keys(config.backup_sites[site]?.encryption_keys ?? {})) {
      const pem = lookup(keyId);
      if (pem) keys[keyId] = pem;
    }
  }
  return keys;
}

async function undoRestore(
  pgdata: string,
  state: "create" | "wipe" | "existing-empty" | "delta",
  tablespaces: TablespaceTarget[],
  createdTablespaceDirs: string[],
): Promise<void> {
  try {
    if (state === "existing-empty") await emptyDirectory(pgdata);
    else await rm(pgdata, { recursive: true, force: true });
    for (const ts of tablespaces) {
      if (createdTablespaceDirs.includes(ts.path)) await rm(ts.path, { recursive: true, force: true });
      else await emptyDirectory(ts.path);
    }
  } catch (err) {
    process.stderr.write(
      `Cleanup after the failed restore failed too: ${describeError(err)}; remove '${pgdata}' by hand\n`,
    );
  }
}
