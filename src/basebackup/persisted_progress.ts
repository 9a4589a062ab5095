/**
 * `persisted_progress_file.json` in the daemon's working directory (operations.md §3.5, cli.md):
 * `{"progress": {"<key>": {"current_progress": n, "last_updated_time": unix seconds}}}` with the
 * keys `total_bytes_uploaded` (bytes of basebackup uploads) and `snapshot_progress` (bytes the
 * delta snapshot has hashed). It outlives a restart, so the age of the last progress
 * (`pghoard.seconds_since_backup_progress_stalled`) keeps counting from before it; it is reset
 * when a backup completes.
 */
import { readFile } from "node:fs/promises";
import path from "node:path";
import { writeFileAtomic } from "../common/fs.js";

export const PROGRESS_FILE = "persisted_progress_file.json";

export type ProgressKey = "total_bytes_uploaded" | "snapshot_progress";

export interface ProgressData {
  current_progress: number;
  /** Unix seconds (float); 0 = never updated. */
  last_updated_time: number;
}

export class PersistedProgress {
  private constructor(
    readonly file: string,
    readonly progress: Record<string, ProgressData>,
  ) {}

  /** The file in `dir` (default: the working directory, as upstream). */
  static path(dir: string = process.cwd()): string {
    return path.join(dir, PROGRESS_FILE);
  }

  /**
   * Reads the file; a missing file is empty progress. A file that cannot be read or parsed is
   * reported through `onError` (upstream's `read_persisted_progress` exception) and treated as empty.
   */
  static async read(file: string, onError: (err: unknown) => void): Promise<PersistedProgress> {
    let text: string;
    try {
      text = await readFile(file, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") onError(err);
      return new PersistedProgress(file, {});
    }
    try {
      const parsed = JSON.parse(text) as { progress?: unknown };
      const progress: Record<string, ProgressData> = {};
      if (typeof parsed.progress !== "object" || parsed.progress === null) throw new Error("no progress object");
      for (const [key, value] of Object.entries(parsed.progress as Record<string, Partial<ProgressData>>)) {
        progress[key] = {
          current_progress: Number(value?.current_progress ?? 0) || 0,
          last_updated_time: Number(value?.last_updated_time ?? 0) || 0,
        };
      }
      return new PersistedProgress(file, progress);
    } catch (err) {
      onError(err);
      return new PersistedProgress(file, {});
    }
  }

  get(key: ProgressKey): ProgressData {
    this.progress[key] ??= { current_progress: 0, last_updated_time: 0 };
    return this.progress[key];
  }

  /** Records `value` as the key's progress now; false (and no change) when it did not grow. */
  advance(key: ProgressKey, value: number, nowMs: number = Date.now()): boolean {
    const info = this.get(key);
    if (!(value > info.current_progress)) return false;
    info.current_progress = value;
    info.last_updated_time = nowMs / 1000;
    return true;
  }

  /** Seconds since the key last grew, or null when it never did. */
  stalledSeconds(key: ProgressKey, nowMs: number = Date.now()): number | null {
    const info = this.progress[key];
    if (!info || !info.last_updated_time) return null;
    return Math.max(0, nowMs / 1000 - info.last_updated_time);
  }

  /** The key last updated, if any (what a restarted daemon reports as stalled). */
  latest(): { key: ProgressKey; data: ProgressData } | null {
    let best: { key: ProgressKey; data: ProgressData } | null = null;
    for (const [key, data] of Object.entries(this.progress)) {
      if (data.last_updated_time && (!best || data.last_updated_time > best.data.last_updated_time)) {
        best = { key: key as ProgressKey, data };
      }
    }
    return best;
  }

  get isEmpty(): boolean {
    return Object.keys(this.progress).length === 0;
  }

  resetAll(): void {
    for (const key of Object.keys(this.progress)) delete this.progress[key];
  }

  async write(): Promise<void> {
    await writeFileAtomic(this.file, JSON.stringify({ progress: this.progress }));
  }
}
