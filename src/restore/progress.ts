/**
 * Progress output of `get-basebackup`: a `\rDownload progress: ...` bar on a TTY (once a
 * second, as upstream), plain lines every 10 s otherwise, and the `--status-output-file` JSON.
 */
import { writeFileAtomic } from "../common/fs.js";
import type { ProgressSnapshot, ProgressTracker } from "./fetch.js";

const MIB = 1024 * 1024;

/** `Download progress: 12.34% (5 / 40 MiB)` (Python `{:.2%}` and `{:.0f}`). */
export function formatProgress(p: ProgressSnapshot): string {
  return `Download progress: ${(p.fraction * 100).toFixed(2)}% (${(p.downloaded / MIB).toFixed(0)} / ${(p.total / MIB).toFixed(0)} MiB)`;
}

/** `1:02:03` / `2:03`. */
function duration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
}

/**
 * The terminal's line: upstream's text plus the average rate and the time left, e.g.
 * `Download progress: 12.50% (5 / 40 MiB), 2.5 MiB/s, ETA 0:14`.
 */
export function formatTerminalProgress(p: ProgressSnapshot, elapsedSeconds: number): string {
  const base = formatProgress(p);
  if (elapsedSeconds <= 0 || p.downloaded <= 0) return base;
  const rate = p.downloaded / elapsedSeconds;
  const eta = p.total > p.downloaded ? `, ETA ${duration((p.total - p.downloaded) / rate)}` : "";
  return `${base}, ${(rate / MIB).toFixed(1)} MiB/s${eta}`;
}

/** The closing summary: `Downloaded 40.0 MiB in 0:16 (2.5 MiB/s)`. */
export function formatSummary(p: ProgressSnapshot, elapsedSeconds: number): string {
  const rate = elapsedSeconds > 0 ? p.downloaded / elapsedSeconds : 0;
  return `Downloaded ${(p.downloaded / MIB).toFixed(1)} MiB in ${duration(elapsedSeconds)} (${(rate / MIB).toFixed(1)} MiB/s)`;
}

/** Python `repr(float)` for the fractions we write (never huge, never negative). */
function pyFloat(value: number): string {
  if (Number.isInteger(value)) return `${value}.0`;
  const text = String(value);
  // JS writes 1e-7 as "1e-7", Python as "1e-07".
  return text.replace(/e([+-])(\d)$/, "e$10$2");
}

/** The status file as upstream's `write_json_file` writes it (indent 4, sorted keys, newline). */
export function formatStatusJson(p: ProgressSnapshot): string {
  const fraction = p.total > 0 ? pyFloat(p.fraction) : "0";
  return `{\n    "downloaded_bytes": ${Math.round(p.downloaded)},\n    "progress_percent": ${fraction},\n    "total_bytes": ${p.total}\n}\n`;
}

export interface ProgressReporterOptions {
  tracker: ProgressTracker;
  out: NodeJS.WriteStream | NodeJS.WritableStream;
  statusOutputFile?: string;
  isTTY?: boolean;
}

export class ProgressReporter {
  private timer: NodeJS.Timeout | undefined;
  private lastPlain = 0;
  private writingStatus: Promise<void> = Promise.resolve();
  private readonly isTTY: boolean;
  private startedAt = Date.now();

  constructor(private readonly opts: ProgressReporterOptions) {
    this.isTTY = opts.isTTY ?? Boolean((opts.out as NodeJS.WriteStream).isTTY);
  }

  start(): void {
    this.startedAt = Date.now();
    this.tick();
    this.timer = setInterval(() => this.tick(), 1000);
    this.timer.unref();
  }

  private tick(): void {
    const snapshot = this.opts.tracker.snapshot();
    if (this.isTTY) {
      // Padded: a shorter line (the ETA shrinks) must not leave the end of the previous one.
      this.opts.out.write(`\r${formatTerminalProgress(snapshot, this.elapsed()).padEnd(79)}\r`);
    } else if (Date.now() - this.lastPlain >= 10_000) {
      this.lastPlain = Date.now();
      this.opts.out.write(`${formatProgress(snapshot)}\n`);
    }
    this.writeStatus(snapshot);
  }

  private writeStatus(snapshot: ProgressSnapshot): void {
    const file = this.opts.statusOutputFile;
    if (!file) return;
    // One write at a time; a failing status file must not break the restore.
    this.writingStatus = this.writingStatus
      .then(() => writeFileAtomic(file, formatStatusJson(snapshot)))
      .catch((err: Error) => {
        process.stderr.write(`Could not write status output file '${file}': ${err.message}\n`);
      });
  }

  private elapsed(): number {
    return (Date.now() - this.startedAt) / 1000;
  }

  /** Stops the timer and prints the final state (with a newline); on a terminal, also the summary. */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    const snapshot = this.opts.tracker.snapshot();
    // Non-terminal output stays upstream's lines (scripts parse them).
    this.opts.out.write(
      this.isTTY
        ? `\r${formatProgress(snapshot).padEnd(79)}\r\n${formatSummary(snapshot, this.elapsed())}\n`
        : `${formatProgress(snapshot)}\n`,
    );
    this.writeStatus(snapshot);
    await this.writingStatus;
  }
}
