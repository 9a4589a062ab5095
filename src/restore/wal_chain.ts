/**
 * The WAL archive of a site as recovery sees it: segments per timeline, gaps, and the chain
 * PostgreSQL follows from a backup's start to the newest archived segment: on each segment
 * position the newest timeline of the newest timeline's history that had begun there (the
 * segment holding a switchpoint may also come from the parent timeline, as restore_command
 * falls back to it).
 */
import type { StoredObject } from "../storage/types.js";
import {
  isWalName,
  parseTimelineHistory,
  segmentNumberToWalName,
  timelineOfHistoryName,
  isHistoryName,
  parseWalName,
  walNameToSegmentNumber,
  WAL_SEG_SIZE,
  type TimelineHistoryEntry,
} from "../wal/index.js";

export interface TimelineSummary {
  timeline: number;
  oldest: string;
  newest: string;
  segments: number;
  /** Missing ranges between oldest and newest, inclusive (`first`..`last`). */
  gaps: Array<{ first: string; last: string; count: number }>;
}

interface TimelineEntry {
  tli: number;
  beginSeg: bigint;
}

export class WalChain {
  /** segment name → stored object. */
  readonly segments = new Map<string, StoredObject>();
  readonly histories = new Map<number, StoredObject>();
  /** Timelines of the newest timeline's history, oldest first, each with its first segment. */
  private entries: TimelineEntry[] = [{ tli: 1, beginSeg: 0n }];
  newestTimeline = 1;

  constructor(xlog: StoredObject[], timeline: StoredObject[]) {
    for (const obj of xlog) {
      const name = obj.name.split("/").pop()!;
      if (isWalName(name)) this.segments.set(name, obj);
    }
    for (const obj of timeline) {
      const name = obj.name.split("/").pop()!;
      if (isHistoryName(name)) this.histories.set(timelineOfHistoryName(name), obj);
    }
    for (const name of this.segments.keys())
      this.newestTimeline = Math.max(this.newestTimeline, parseWalName(name).timeline);
    for (const tli of this.histories.keys()) this.newestTimeline = Math.max(this.newestTimeline, tli);
  }

  /** Applies the newest timeline's history (call with its contents before asking for the chain). */
  setHistory(history: TimelineHistoryEntry[] | string | Buffer): void {
    const parsed = Array.isArray(history) ? history : parseTimelineHistory(history);
    const entries: TimelineEntry[] = [];
    let begin = 0n;
    for (const entry of parsed) {
      entries.push({ tli: entry.tli, beginSeg: begin / BigInt(WAL_SEG_SIZE) });
      begin = entry.switchpoint;
    }
    entries.push({ tli: this.newestTimeline, beginSeg: begin / BigInt(WAL_SEG_SIZE) });
    this.entries = entries;
  }

  /** The timelines recovery follows, oldest first. */
  get timelines(): number[] {
    return this.entries.map((e) => e.tli);
  }

  summaries(): TimelineSummary[] {
    const byTli = new Map<number, bigint[]>();
    for (const name of this.segments.keys()) {
      const tli = parseWalName(name).timeline;
      if (!byTli.has(tli)) byTli.set(tli, []);
      byTli.get(tli)!.push(walNameToSegmentNumber(name));
    }
    return [...byTli.entries()]
      .sort(([a], [b]) => a - b)
      .map(([tli, segs]) => {
        segs.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
        const gaps: TimelineSummary["gaps"] = [];
        for (let i = 1; i < segs.length; i += 1) {
          if (segs[i] - segs[i - 1] > 1n) {
            gaps.push({
              first: segmentNumberToWalName(tli, segs[i - 1] + 1n),
              last: segmentNumberToWalName(tli, segs[i] - 1n),
              count: Number(segs[i] - segs[i - 1] - 1n),
            });
          }
        }
        return {
          timeline: tli,
          oldest: segmentNumberToWalName(tli, segs[0]),
          newest: segmentNumberToWalName(tli, segs.at(-1)!),
          segments: segs.length,
          gaps,
        };
      });
  }

  /** Candidate names for a segment position, newest timeline first (what restore_command tries). */
  private candidates(segNo: bigint): string[] {
    const result: string[] = [];
    for (let i = this.entries.length - 1; i >= 0; i -= 1) {
      const e = this.entries[i];
      if (e.beginSeg > segNo) continue;
      result.push(segmentNumberToWalName(e.tli, segNo));
      // Only the switchpoint's own segment may come from the parent timeline.
      if (e.beginSeg < segNo) break;
    }
    return result;
  }

  /** The newest segment position on the chain, or null when no segment is on it. */
  newestPosition(): bigint | null {
    let newest: bigint | null = null;
    for (const name of this.segments.keys()) {
      const segNo = walNameToSegmentNumber(name);
      if (!this.candidates(segNo).includes(name)) continue;
      if (newest === null || segNo > newest) newest = segNo;
    }
    return newest;
  }

  /** The stored segment recovery would use at a position, or the name it would ask for. */
  resolve(segNo: bigint): { name: string; object?: StoredObject } {
    const names = this.candidates(segNo);
    for (const name of names) {
      const object = this.segments.get(name);
      if (object) return { name, object };
    }
    return { name: names[0] ?? segmentNumberToWalName(this.newestTimeline, segNo) };
  }

  /** Whether a segment (e.g. a backup's start) lies on the chain: its timeline was current there. */
  onChain(name: string): boolean {
    return this.candidates(walNameToSegmentNumber(name)).includes(name);
  }

  /**
   * The chain from `startName` to the newest archived position: present objects and missing
   * names in order. Null when `startName` is not on the chain.
   */
  chainFrom(startName: string): { present: Array<{ name: string; object: StoredObject }>; missing: string[] } | null {
    if (!this.onChain(startName)) return null;
    const newest = this.newestPosition();
    const present: Array<{ name: string; object: StoredObject }> = [];
    const missing: string[] = [];
    if (newest === null) return { present, missing: [startName] };
    for (let seg = walNameToSegmentNumber(startName); seg <= newest; seg += 1n) {
      const { name, object } = this.resolve(seg);
      if (object) present.push({ name, object });
      else missing.push(name);
    }
    return { present, missing };
  }
}
