/**
 * `pghoard_restore info`: a site's basebackups, its WAL archive per timeline with gaps, and the
 * recoverable window (README "Reading the recoverable window"):
 * - earliest: the end of the oldest backup whose WAL chain from its start segment to the newest
 *   archived segment is complete (its `end-time`; single-object backups, which record none, use
 *   the time the object was stored, which is after pg_basebackup finished);
 * - latest: the commit time of the newest transaction (commit or abort record) in the archived
 *   WAL on that chain, found by decoding the newest segments.
 * A `recovery_target_time` T restores when earliest < T < latest: pghoard_restore picks the newest
 * backup that ended before T, and PostgreSQL stops at the first transaction after T (it fails when
 * the archive ends first). Recovering without a target replays up to and including `latest`.
 */
import type { PghoardConfig } from "../config/types.js";
import { pyJsonUtc } from "../common/pycompat.js";
import {
  formatLsn,
  formatPgTimestampUs,
  isWalName,
  parseWalName,
  walNameToLsn,
  walNameToSegmentNumber,
  WAL_SEG_SIZE,
} from "../wal/index.js";
import { ProgressTracker } from "./fetch.js";
import { loadSiteArchive, type SiteArchive } from "./site_archive.js";
import type { TimelineSummary } from "./wal_chain.js";
import { runVerifyTasks, type VerifyProblem } from "./verify.js";

export interface InfoBackup {
  name: string;
  site: string;
  format: string | null;
  basebackup_mode: string | null;
  start_time: string | null;
  end_time: string | null;
  start_wal_segment: string | null;
  end_wal_segment: string | null;
  /** Where start_wal_segment begins (pghoard records segments, not exact LSNs). */
  start_lsn: string | null;
  /** Where end_wal_segment ends: the backup is consistent by then. */
  end_lsn: string | null;
  timeline: number | null;
  stored_size: number;
  original_size: number | null;
  compression: string | null;
  encryption_key_id: string | null;
  preserve_until: string | null;
  pg_version: string | null;
  /** Every WAL segment from its start to the newest archived one is stored. */
  wal_chain_complete: boolean;
  /** The first segment missing from that chain, if any. */
  first_missing_segment: string | null;
}

export interface SiteInfo {
  site: string;
  basebackups: InfoBackup[];
  wal: {
    timelines: TimelineSummary[];
    /** The timelines recovery follows to the newest one, oldest first. */
    chain: number[];
    newest_segment: string | null;
    /** First LSN after the newest archived segment on the chain. */
    end_lsn: string | null;
  };
  recoverable_window: {
    earliest: { time: string; backup: string };
    latest: { time: string | null; lsn: string | null; segment: string | null };
  } | null;
  problems: VerifyProblem[];
}

function num(value: string | undefined): number | null {
  if (value === undefined || value === "") return null;
  const n = Number(value);
  return Number.isFinite(n) ? n : null;
}

/** `end-time` is written with a space by upstream (`str(datetime)`); shown as ISO 8601. */
function isoTime(value: string | undefined): string | null {
  return value ? value.replace(" ", "T") : null;
}

function backupInfo(archive: SiteArchive, b: SiteArchive["backups"][number]): InfoBackup {
  const md = b.metadata;
  const start = md["start-wal-segment"] && isWalName(md["start-wal-segment"]) ? md["start-wal-segment"] : null;
  const end = md["end-wal-segment"] && isWalName(md["end-wal-segment"]) ? md["end-wal-segment"] : null;
  const walk = start ? archive.chain.chainFrom(start) : null;
  const basename = b.name.split("/").pop()!;
  const preserve = archive.preserveUntil.get(basename);
  return {
    name: b.name,
    site: b.site,
    format: md.format || null,
    basebackup_mode: md["basebackup-mode"] ?? null,
    start_time: isoTime(md["start-time"]),
    end_time: isoTime(md["end-time"]),
    start_wal_segment: start,
    end_wal_segment: end,
    start_lsn: start ? formatLsn(walNameToLsn(start)) : null,
    end_lsn: end ? formatLsn(walNameToLsn(end) + BigInt(WAL_SEG_SIZE)) : null,
    timeline: start ? parseWalName(start).timeline : null,
    stored_size: num(md["total-size-enc"]) ?? b.size,
    original_size: num(md["total-size-plain"]) ?? num(md["original-file-size"]),
    compression: md["compression-algorithm"] || null,
    encryption_key_id: md["encryption-key-id"] || null,
    preserve_until: preserve ? pyJsonUtc(preserve) : null,
    pg_version: md["pg-version"] ?? null,
    wal_chain_complete: walk !== null && walk.missing.length === 0,
    first_missing_segment: walk ? (walk.missing[0] ?? null) : start,
  };
}

/** How many of the newest segments are decoded, newest first, looking for a transaction. */
const MAX_SEGMENTS_FOR_LATEST = 16;

export async function siteInfo(config: PghoardConfig, site: string): Promise<SiteInfo> {
  const archive = await loadSiteArchive(config, site);
  try {
    const problems: VerifyProblem[] = [...archive.problems];
    const backups = archive.backups.filter((b) => b.metadata["start-time"]).map((b) => backupInfo(archive, b));
    const newest = archive.chain.newestPosition();
    const newestSegment = newest === null ? null : archive.chain.resolve(newest).name;
    let window: SiteInfo["recoverable_window"] = null;
    const complete = backups.find((b) => b.wal_chain_complete);
    if (complete && newest !== null) {
      const source = archive.backups.find((b) => b.name === complete.name)!;
      const earliest = complete.end_time ?? pyJsonUtc(source.lastModified);
      let latest: { time: string | null; lsn: string | null; segment: string | null } = {
        time: null,
        lsn: null,
        segment: null,
      };
      const stop = walNameToSegmentNumber(complete.start_wal_segment!);
      const concurrency = 1;
      for (let seg = newest, n = 0; seg >= stop && n < MAX_SEGMENTS_FOR_LATEST; seg -= 1n, n += 1) {
        const { name, object } = archive.chain.resolve(seg);
        if (!object) break;
        const store = archive.storeOf.get(object) ?? archive.stores[0];
        const task = {
          job: { kind: "wal" as const, key: object.name, name },
          store,
          size: object.size,
          backups: new Set<string>(),
        };
        const run = await runVerifyTasks(archive, [task], concurrency, new ProgressTracker([task]), null);
        problems.push(...run.problems);
        const wal = run.results.get(object.name)?.wal;
        if (wal?.lastXactTimeUs) {
          latest = {
            time: formatPgTimestampUs(BigInt(wal.lastXactTimeUs)),
            lsn: formatLsn(BigInt(wal.lastXactLsn!)),
            segment: name,
          };
          break;
        }
      }
      window = { earliest: { time: earliest, backup: complete.name }, latest };
    }
    return {
      site,
      basebackups: backups,
      wal: {
        timelines: archive.chain.summaries(),
        chain: archive.chain.timelines,
        newest_segment: newestSegment,
        end_lsn: newest === null ? null : formatLsn((newest + 1n) * BigInt(WAL_SEG_SIZE)),
      },
      recoverable_window: window,
      problems,
    };
  } finally {
    await archive.close();
  }
}

const MIB = 1024 * 1024;

function mib(n: number | null): string {
  return n === null ? "n/a" : `${(n / MIB).toFixed(1)} MiB`;
}

export function formatSiteInfo(info: SiteInfo): string {
  const out: string[] = [`Site '${info.site}'`, "", `Basebackups (${info.basebackups.length}):`];
  for (const b of info.basebackups) {
    out.push(`  ${b.name}`);
    out.push(
      `    mode ${b.basebackup_mode ?? "?"}, format ${b.format ?? "single object"}, timeline ${b.timeline ?? "?"}, PostgreSQL ${b.pg_version ?? "?"}`,
    );
    out.push(`    start ${b.start_time ?? "?"}  WAL ${b.start_wal_segment ?? "?"}  LSN ${b.start_lsn ?? "?"}`);
    out.push(`    end   ${b.end_time ?? "?"}  WAL ${b.end_wal_segment ?? "?"}  LSN ${b.end_lsn ?? "?"}`);
    out.push(
      `    size ${mib(b.stored_size)} stored, ${mib(b.original_size)} original; compression ${b.compression ?? "none"}; encryption key ${b.encryption_key_id ?? "none"}; preserved until ${b.preserve_until ?? "-"}`,
    );
    out.push(
      `    WAL chain to the newest segment: ${b.wal_chain_complete ? "complete" : `broken at ${b.first_missing_segment ?? "?"}`}`,
    );
  }
  out.push("", "WAL archive:");
  if (info.wal.timelines.length === 0) out.push("  no segments");
  for (const t of info.wal.timelines) {
    out.push(`  timeline ${t.timeline}: ${t.segments} segments, ${t.oldest} .. ${t.newest}`);
    for (const g of t.gaps) out.push(`    gap: ${g.first} .. ${g.last} (${g.count} missing)`);
  }
  out.push(
    `  recovery follows timelines ${info.wal.chain.join(" -> ")}; newest segment ${info.wal.newest_segment ?? "-"}`,
  );
  out.push("", "Recoverable window (recovery_target_time strictly between the two):");
  const w = info.recoverable_window;
  if (!w) out.push("  none: no backup has a complete WAL chain to the newest archived segment");
  else {
    out.push(`  earliest ${w.earliest.time}  (end of ${w.earliest.backup})`);
    out.push(
      w.latest.time
        ? `  latest   ${w.latest.time}  (last transaction, LSN ${w.latest.lsn} in ${w.latest.segment})`
        : "  latest   unknown: no transaction found in the newest segments",
    );
  }
  if (info.problems.length) {
    out.push("", "Problems:");
    for (const p of info.problems) out.push(`  ${p.object}: ${p.problem}`);
  }
  return out.join("\n") + "\n";
}
