/**
 * pghoard_archive_sync (cli.md §4): after a failover or an archiving outage, re-archive the WAL and
 * timeline history files of the local `pg_wal` that storage lacks (or holds with a different hash)
 * through the local daemon (`HEAD`/`PUT /<site>/archive/<file>`), then verify that every segment
 * from the current one back to the newest basebackup's start is archived, across timelines.
 *
 * Differences from upstream, all deliberate:
 * - `--max-hash-checks` is parsed as an integer (upstream crashes on any explicit value).
 * - The integrity walk follows the current timeline's history file from `pg_wal` when there is
 *   one: each segment is looked up on the timeline PostgreSQL would read it from, so a missing
 *   segment is reported as the one that is really needed. Without a history file it falls back to
 *   upstream's rule (on a miss, try the same position on the previous timeline once).
 * - The walk stops with a gap error instead of running below segment 0 when the first required
 *   segment is never met, and an unreachable daemon is a clear error, not a traceback.
 * - HTTP Basic credentials are sent when the config sets both webserver_username and _password.
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import type { Logger } from "../common/logger.js";
import {
  ConfigError,
  getSiteFromConfig,
  loadConfig,
  pgWalDirectory,
  replicationConnectionInfo,
  type PghoardConfig,
  type SiteConfig,
} from "../config/index.js";
import { nodeHashName } from "../fileformat/index.js";
import {
  WAL_SEG_SIZE,
  historyFileName,
  isHistoryName,
  isWalName,
  lsnToWalName,
  parseTimelineHistory,
  parseWalName,
  segmentNumberToWalName,
  timelineForLsn,
  walNameToSegmentNumber,
  type TimelineHistoryEntry,
} from "../wal/index.js";
import { ReplicationConnection } from "../wal/replication.js";
import { EXIT_FAIL, EXIT_OK, configPathOrNull, runCli, toolLogger } from "./cli.js";
import { ARCHIVE_SYNC_SPEC } from "./cli_specs.js";

export class SyncError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SyncError";
  }
}

export interface ArchiveSyncOptions {
  maxHashChecks: number;
  verify: boolean;
  newBackupOnFailure: boolean;
}

interface FirstRequired {
  segment: string;
  pgVersion: number | null;
}

/** Hex digest of a file, or null when it vanished (PostgreSQL may recycle it meanwhile). */
async function hashFile(filePath: string, pythonAlgorithm: string): Promise<string | null> {
  const hash = createHash(nodeHashName(pythonAlgorithm));
  try {
    for await (const chunk of createReadStream(filePath, { highWaterMark: 128 * 1024 })) hash.update(chunk as Buffer);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw err;
  }
  return hash.digest("hex");
}

export class ArchiveSync {
  readonly baseUrl: string;
  private readonly headers: Record<string, string> = {};

  constructor(
    readonly config: PghoardConfig,
    readonly siteName: string,
    private readonly log: Logger,
  ) {
    // Like upstream: always the local daemon on 127.0.0.1, whatever http_address says.
    this.baseUrl = `http://127.0.0.1:${config.http_port}/${encodeURIComponent(siteName)}`;
    if (config.webserver_username && config.webserver_password) {
      const token = Buffer.from(`${config.webserver_username}:${config.webserver_password}`).toString("base64");
      this.headers.authorization = `Basic ${token}`;
    }
  }

  get site(): SiteConfig {
    return this.config.backup_sites[this.siteName] as SiteConfig;
  }

  private async request(method: "GET" | "HEAD" | "PUT", suffix: string): Promise<Response> {
    const url = `${this.baseUrl}/${suffix}`;
    try {
      return await fetch(url, { method, headers: this.headers, signal: AbortSignal.timeout(120_000) });
    } catch (err) {
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      throw new SyncError(
        `pghoard daemon not reachable at ${url}: ${cause?.code ?? cause?.message ?? (err as Error).message}`,
      );
    }
  }

  /** The segment being written now, from IDENTIFY_SYSTEM on the site's first node. */
  async currentWalFile(): Promise<string> {
    const node = this.site.nodes[0];
    if (!node) throw new ConfigError(`Site '${this.siteName}' has no nodes to connect to`);
    const conn = await ReplicationConnection.connect(replicationConnectionInfo(node));
    try {
      const ident = await conn.identifySystem();
      return lsnToWalName(ident.xlogpos, ident.timeline, WAL_SEG_SIZE, conn.serverVersion || null);
    } finally {
      await conn.close();
    }
  }

  /** Start segment and pg-version of the basebackup with the greatest name (upstream's choice), or null. */
  async firstRequiredWalSegment(): Promise<FirstRequired | null> {
    const res = await this.request("GET", "basebackup");
    if (res.status !== 200) {
      await res.arrayBuffer();
      this.log.error(`Error looking up basebackups: HTTP ${res.status}`);
      return null;
    }
    const body = (await res.json()) as { basebackups?: Array<{ name: string; metadata: Record<string, string> }> };
    const items = body.basebackups ?? [];
    if (items.length === 0) {
      this.log.error("Unable to find any basebackups");
      return null;
    }
    const latest = items.reduce((a, b) => (b.name > a.name ? b : a));
    const segment = latest.metadata["start-wal-segment"];
    if (!segment || !isWalName(segment)) {
      this.log.error(`Basebackup '${latest.name}' has no valid start-wal-segment`);
      return null;
    }
    const version = Number.parseInt(latest.metadata["pg-version"] ?? "", 10);
    return { segment, pgVersion: Number.isNaN(version) ? null : version };
  }

  async run(options: ArchiveSyncOptions): Promise<number> {
    await this.uploadMissingLocalFiles(options.maxHashChecks);
    if (!options.verify) return EXIT_OK;
    return this.checkArchiveIntegrity(options.newBackupOnFailure);
  }

  /** Phase 1. Returns the files it (re-)archived. */
  async uploadMissingLocalFiles(maxHashChecks: number): Promise<string[]> {
    const current = await this.currentWalFile();
    const first = await this.firstRequiredWalSegment();
    const walDir = pgWalDirectory(this.site);
    // History files first (they are always wanted), then segments newest first.
    const files = (await readdir(walDir)).sort((a, b) => {
      const ka = `${isHistoryName(a) ? 1 : 0}${a}`;
      const kb = `${isHistoryName(b) ? 1 : 0}${b}`;
      return ka < kb ? 1 : ka > kb ? -1 : 0;
    });
    const needArchival: string[] = [];
    let hashChecks = 0;
    let withoutHash = 0;
    for (const file of files) {
      let type: "TIMELINE" | "WAL" | null = null;
      if (isHistoryName(file)) type = "TIMELINE";
      else if (!isWalName(file)) continue;
      else if (file === current) this.log.info(`Skipping currently open WAL file '${file}'`);
      else if (file > current) this.log.debug(`Skipping recycled WAL file '${file}'`);
      else if (first && file < first.segment) {
        this.log.info(`WAL file '${file}' is not needed for the latest basebackup`);
        break;
      } else type = "WAL";
      if (!type) continue;

      const res = await this.request("HEAD", `archive/${file}`);
      await res.arrayBuffer();
      if (res.status !== 200) {
        this.log.info(`${type} file '${file}' needs to be archived`);
        needArchival.push(file);
        continue;
      }
      const remoteHash = res.headers.get("metadata-hash");
      const algorithm = res.headers.get("metadata-hash-algorithm");
      if (type === "WAL" && !remoteHash) {
        // Without a hash (an old pghoard archived it) the first such file is re-archived: it may be
        // the last segment of the previous timeline as the old primary wrote it, without the switch.
        withoutHash += 1;
        if (withoutHash === 1) {
          this.log.info(`${type} file '${file}' already archived but no hash is available, reuploading`);
          needArchival.push(file);
          continue;
        }
      }
      const checkHash =
        type === "WAL" && !!remoteHash && !!algorithm && (maxHashChecks < 0 || hashChecks < maxHashChecks);
      if (!checkHash) {
        this.log.info(`${type} file '${file}' already archived`);
        continue;
      }
      hashChecks += 1;
      const ours = await hashFile(path.join(walDir, file), algorithm as string);
      if (ours === null) {
        this.log.info(`${type} file '${file}' already archived (file deleted before getting hash)`);
      } else if ((remoteHash as string).trim().toLowerCase() !== ours) {
        this.log.warn(
          `${type} file '${file}' already archived but existing hash '${remoteHash}' differs from our hash '${ours}', reuploading`,
        );
        needArchival.push(file);
      } else {
        this.log.info(`${type} file '${file}' already archived and has valid hash`);
      }
    }

    const archived: string[] = [];
    for (const file of [...needArchival].sort()) {
      const type = file.endsWith(".history") ? "TIMELINE" : "WAL";
      const res = await this.request("PUT", `archive/${file}`);
      const text = await res.text();
      if (res.status !== 201) {
        this.log.error(
          `${type} file '${file}' archival failed with status code ${res.status}${text ? `: ${text.trim()}` : ""}`,
        );
      } else {
        this.log.info(`${type} file '${file}' archived`);
        archived.push(file);
      }
    }
    return archived;
  }

  /** The current timeline's history from pg_wal, or null (timeline 1, or not there). */
  private async localHistory(timeline: number): Promise<TimelineHistoryEntry[] | null> {
    if (timeline <= 1) return [];
    try {
      const text = await readFile(path.join(pgWalDirectory(this.site), historyFileName(timeline)), "utf8");
      return parseTimelineHistory(text);
    } catch (err) {
      this.log.warn(
        `Timeline history ${historyFileName(timeline)} not readable in pg_wal (${(err as Error).message}); stepping back one timeline on a miss instead`,
      );
      return null;
    }
  }

  private async archived(name: string): Promise<boolean> {
    const res = await this.request("HEAD", `archive/${name}`);
    await res.arrayBuffer();
    return res.status === 200;
  }

  /** Phase 2. */
  async checkArchiveIntegrity(newBackupOnFailure: boolean): Promise<number> {
    const current = await this.currentWalFile();
    const first = await this.firstRequiredWalSegment();
    if (!current) throw new SyncError("Could not figure out current WAL segment");
    if (!first) throw new SyncError("No basebackups found");
    this.log.info(`Verifying archive integrity from '${current}' to '${first.segment}'`);
    const pgVersion = first.pgVersion;
    const segNo = (name: string) => walNameToSegmentNumber(name, WAL_SEG_SIZE, pgVersion);
    const firstSeg = segNo(first.segment);
    const currentTli = parseWalName(current).timeline;
    let seg = segNo(current);
    if (seg <= firstSeg) {
      this.log.info("The current segment is the first required one: nothing archived to verify yet");
      return EXIT_OK;
    }
    const history = await this.localHistory(currentTli);
    const gap = async (missing: string): Promise<number> => {
      const message = `xlog file ${missing} missing, integrity check from ${current} to ${first.segment} failed`;
      if (!newBackupOnFailure) throw new SyncError(message);
      this.log.error(`Requesting new basebackup: ${message}`);
      await this.requestBasebackup();
      return EXIT_OK;
    };

    let count = 0;
    let tli = currentTli;
    let validTimeline = true;
    for (;;) {
      if (validTimeline) seg -= 1n;
      if (seg < firstSeg) return gap(segmentNumberToWalName(tli, firstSeg, WAL_SEG_SIZE, pgVersion));
      if (seg === firstSeg) {
        // The backup's own start segment, on the timeline the backup was taken on.
        if (!(await this.archived(first.segment))) return gap(first.segment);
        count += 1;
        this.log.info(`xlog file '${first.segment}' correctly archived`);
        this.log.info(`Found all required WAL files: ${count}`);
        return EXIT_OK;
      }
      if (history !== null) {
        // PostgreSQL reads a segment from the newest timeline that had begun by its end.
        const segEnd = (seg + 1n) * BigInt(WAL_SEG_SIZE) - 1n;
        tli = timelineForLsn(history, currentTli, segEnd);
      }
      const name = segmentNumberToWalName(tli, seg, WAL_SEG_SIZE, pgVersion);
      if (await this.archived(name)) {
        this.log.info(`xlog file '${name}' correctly archived`);
        count += 1;
        validTimeline = true;
        continue;
      }
      if (history !== null || !validTimeline || tli <= 1) return gap(name);
      // Upstream's rule without a history: the same position on the previous timeline, once.
      validTimeline = false;
      tli -= 1;
    }
  }

  async requestBasebackup(): Promise<void> {
    const res = await this.request("PUT", "archive/basebackup");
    await res.arrayBuffer();
    if (res.status !== 201) this.log.error(`Request for a new backup for site: '${this.siteName}' failed`);
    else this.log.info(`Requested a new backup for site: '${this.siteName}' successfully`);
  }
}

interface SyncCliOptions {
  debug?: boolean;
  site?: string;
  config?: string;
  maxHashChecks: number;
  verify: boolean;
  createNewBackupOnFailure?: boolean;
}

export async function main(argv: string[]): Promise<number> {
  let log: Logger | undefined;
  return runCli(
    ARCHIVE_SYNC_SPEC,
    argv,
    async (inv) => {
      const opts = inv.opts as unknown as SyncCliOptions;
      const configPath = configPathOrNull(opts.config);
      if (configPath === null) return EXIT_FAIL;
      log = toolLogger("ArchiveSync", { debug: opts.debug });
      const config = await loadConfig(configPath, { tool: "archive_sync", warn: (m) => log?.warn(m) });
      const site = getSiteFromConfig(config, opts.site);
      return await new ArchiveSync(config, site, log).run({
        maxHashChecks: opts.maxHashChecks,
        verify: opts.verify,
        newBackupOnFailure: opts.createNewBackupOnFailure === true,
      });
    },
    { exitOnInterrupt: true, fatal: () => ({ write: (line) => log?.error(line) }) },
  );
}
