/**
 * Timeline history files (`0000000N.history`): one line per ancestor timeline,
 * `<parent tli>\t<switchpoint LSN>\t<reason>`, comments start with `#`.
 * A file for timeline N lists timelines 1..N-1 with the LSN where each one ended.
 */
import { InvalidLsnError, parseLsn } from "./lsn.js";

export interface TimelineHistoryEntry {
  /** The ancestor timeline. */
  tli: number;
  /** First LSN that is no longer on `tli` (where the next timeline branched off). */
  switchpoint: bigint;
  /** Free text PostgreSQL wrote, e.g. `no recovery target specified`. */
  reason: string;
}

export class TimelineHistoryError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TimelineHistoryError";
  }
}

const ENTRY_RE = /^(\d+)\s+([0-9A-Fa-f]{1,8}\/[0-9A-Fa-f]{1,8})(?:\s+(.*))?$/;

/** Parses a history file the way PostgreSQL's readTimeLineHistory does (strict about order). */
export function parseTimelineHistory(text: string | Buffer): TimelineHistoryEntry[] {
  const content = typeof text === "string" ? text : text.toString("utf8");
  const entries: TimelineHistoryEntry[] = [];
  for (const [index, rawLine] of content.split("\n").entries()) {
    const line = rawLine.trim();
    if (line === "" || line.startsWith("#")) continue;
    const match = ENTRY_RE.exec(line);
    if (!match)
      throw new TimelineHistoryError(`syntax error in timeline history line ${index + 1}: ${JSON.stringify(rawLine)}`);
    const tli = Number(match[1]);
    if (!Number.isSafeInteger(tli) || tli < 1 || tli > 0xffffffff) {
      throw new TimelineHistoryError(`invalid timeline id on line ${index + 1}: ${match[1]}`);
    }
    const previous = entries.at(-1);
    if (previous && tli <= previous.tli) {
      throw new TimelineHistoryError(
        `timeline ids must be in increasing sequence (line ${index + 1}: ${tli} after ${previous.tli})`,
      );
    }
    let switchpoint: bigint;
    try {
      switchpoint = parseLsn(match[2] ?? "");
    } catch (err) {
      if (err instanceof InvalidLsnError) throw new TimelineHistoryError(`line ${index + 1}: ${err.message}`);
      throw err;
    }
    entries.push({ tli, switchpoint, reason: (match[3] ?? "").trim() });
  }
  return entries;
}

/**
 * The timeline that produced WAL at `lsn`, given the history of `currentTli`: the first
 * ancestor whose switchpoint lies beyond `lsn`, else `currentTli` itself.
 */
export function timelineForLsn(history: readonly TimelineHistoryEntry[], currentTli: number, lsn: bigint): number {
  for (const entry of history) {
    if (lsn < entry.switchpoint) return entry.tli;
  }
  return currentTli;
}
