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

  constructor(private readonly opts: ProgressReporterOptions) {
    this.isTTY = opts.isTTY ?? Boolean((opts.out as NodeJS.WriteStream).isTTY);
  }

  start(): void {
    this.tick();
    this.timer = setInterval(() => this.tick(), 1000);
    this.timer.unref();
  }

  private tick(): void {
    const snapshot = this.opts.tracker.snapshot();
    if (this.isTTY) {
      this.opts.out.write(`\r${formatProgress(snapshot)}\r`);
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

  /** Stops the timer and prints the final state (with a newline). */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    const snapshot = this.opts.tracker.snapshot();
    this.opts.out.write(this.isTTY ? `\r${formatProgress(snapshot)}\r\n` : `${formatProgress(snapshot)}\n`);
    this.writeStatus(snapshot);
    await this.writingStatus;
  }
}
