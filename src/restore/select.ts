/**
 * Choosing the basebackup to restore (cli.md §2.3 step 2): by exact name, `latest`, or the newest
 * one that ended before `--recovery-target-time`.
 */
import { RestoreError } from "./errors.js";
import { formatBasebackupList, type BasebackupEntry } from "./list.js";
import { basebackupListTime, compareTimestamps, parseTimestamp, type ParsedTimestamp } from "../common/pycompat.js";

export interface Selection {
  backup: BasebackupEntry;
  /** Text printed while selecting (candidate list, `Selecting '<name>' for restore`). */
  output: string;
}

function pyQuote(text: string): string {
  return text.includes("'") && !text.includes('"')
    ? `"${text}"`
    : `'${text.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`;
}

/** Backups named in the "no applicable basebackup" error; more would not fit one readable line. */
const LISTED_BACKUPS = 10;

/** Start time as epoch ms (offsets differ between backups, so raw strings do not sort); -Infinity if none. */
function startEpoch(backup: BasebackupEntry): number {
  const start = backup.metadata["start-time"];
  try {
    return start === undefined ? -Infinity : parseTimestamp(start).epochMs;
  } catch {
    return -Infinity;
  }
}

function startTimeOf(backup: BasebackupEntry): string {
  const start = backup.metadata["start-time"];
  if (start === undefined) return "no start time";
  try {
    return basebackupListTime(parseTimestamp(start));
  } catch {
    return start;
  }
}

/**
 * The rest of the "no applicable basebackup" line: which backups exist (newest first) and the
 * name `--basebackup` expects, so the next attempt can succeed without another command.
 */
function whatExists(backups: BasebackupEntry[]): string {
  if (backups.length === 0) return "The site has no basebackups.";
  const newestFirst = [...backups].sort((a, b) => startEpoch(b) - startEpoch(a) || (a.name < b.name ? 1 : -1));
  const shown = newestFirst.slice(0, LISTED_BACKUPS).map((b) => `${b.name} (started ${startTimeOf(b)})`);
  const more = backups.length > LISTED_BACKUPS ? ` and ${backups.length - LISTED_BACKUPS} older` : "";
  return (
    `Existing basebackups, newest first: ${shown.join(", ")}${more}. ` +
    `--basebackup takes a name exactly as list-basebackups prints it (e.g. '${newestFirst[0].name}') or 'latest'.`
  );
}

export function selectBasebackup(
  backups: BasebackupEntry[],
  request: { name: string; recoveryTargetTime?: ParsedTimestamp | null },
): Selection {
  if (!request.recoveryTargetTime && request.name !== "latest") {
    const found = backups.find((b) => b.name === request.name);
    if (!found) throw new RestoreError(`No applicable basebackup found, exiting. ${whatExists(backups)}`);
    return { backup: found, output: `\nSelecting ${pyQuote(found.name)} for restore\n` };
  }
  const target = request.recoveryTargetTime ?? null;
  const applicable = backups.filter((b) => {
    if (b.metadata["start-time"] === undefined) return false;
    if (!target) return true;
    // The end time is what matters; backups of pg_basebackup modes only have a start time.
    const stamp = parseTimestamp(b.metadata["end-time"] ?? b.metadata["start-time"]);
    return compareTimestamps(stamp, target) < 0;
  });
  if (applicable.length === 0) {
    throw new RestoreError(`No applicable basebackups found, exiting. ${whatExists(backups)}`);
  }
  // Upstream sorts the raw start-time strings (stable sort); they are ISO timestamps.
  applicable.sort((a, b) => {
    const x = a.metadata["start-time"];
    const y = b.metadata["start-time"];
    return x < y ? -1 : x > y ? 1 : 0;
  });
  const caption = `Found ${applicable.length} applicable basebackup${applicable.length === 1 ? "" : "s"}`;
  const selected = applicable[applicable.length - 1];
  return {
    backup: selected,
    output:
      formatBasebackupList(applicable, { caption, verbose: true }) +
      `\nSelecting ${pyQuote(selected.name)} for restore\n`,
  };
}
