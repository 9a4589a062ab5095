/**
 * Progress of the running backup: fed by the modes, logged at a sensible rate (every 10 s or
 * 10 % step) and handed to the daemon's state through `onProgress`.
 */
import type { BasebackupLogger, ProgressState } from "./types.js";

export type { ProgressState };

export class BackupProgress {
  private state: ProgressState;
  private lastLogTime = 0;
  private lastLogStep = -1;
  private lastPublish = 0;

  constructor(
    name: string,
    mode: string,
    private readonly log: BasebackupLogger,
    private readonly publish?: (state: ProgressState) => void,
    private readonly logIntervalMs = 10_000,
  ) {
    const now = new Date().toISOString();
    this.state = {
      name,
      mode,
      phase: "starting",
      bytes_done: 0,
      bytes_total: 0,
      bytes_uploaded: 0,
      percent: null,
      started_at: now,
      updated_at: now,
    };
    this.emit(true);
  }

  get snapshot(): ProgressState {
    return { ...this.state };
  }

  setPhase(phase: string): void {
    this.state.phase = phase;
    this.log.info(`Basebackup ${this.state.name}: ${phase}`);
    this.emit(true);
  }

  setTotal(bytes: number): void {
    this.state.bytes_total = bytes;
    this.emit(false);
  }

  addDone(bytes: number): void {
    this.state.bytes_done += bytes;
    this.emit(false);
  }

  addUploaded(bytes: number): void {
    this.state.bytes_uploaded += bytes;
    this.emit(false);
  }

  private emit(force: boolean): void {
    const now = Date.now();
    const s = this.state;
    s.percent = s.bytes_total > 0 ? Math.min(100, Math.round((1000 * s.bytes_done) / s.bytes_total) / 10) : null;
    s.updated_at = new Date(now).toISOString();
    const step = s.percent === null ? -1 : Math.floor(s.percent / 10);
    if (force || now - this.lastLogTime >= this.logIntervalMs || step > this.lastLogStep) {
      if (!force) {
        const pct = s.percent === null ? "" : ` (${s.percent.toFixed(1)}%)`;
        this.log.info(
          `Basebackup ${s.name} ${s.phase}: ${(s.bytes_done / 1048576).toFixed(1)} MiB of ` +
            `${s.bytes_total ? (s.bytes_total / 1048576).toFixed(1) : "?"} MiB${pct}, ${(s.bytes_uploaded / 1048576).toFixed(1)} MiB uploaded`,
        );
      }
      this.lastLogTime = now;
      this.lastLogStep = step;
    }
    // the daemon's state is written every loop iteration; a few updates a second are plenty
    if (force || now - this.lastPublish >= 250) {
      this.lastPublish = now;
      this.publish?.(this.snapshot);
    }
  }

  finish(): void {
    const s = this.state;
    const seconds = (Date.now() - Date.parse(s.started_at)) / 1000;
    this.setPhase(
      `done: ${(s.bytes_done / 1048576).toFixed(1)} MiB read, ${(s.bytes_uploaded / 1048576).toFixed(1)} MiB uploaded in ${seconds.toFixed(1)} s`,
    );
    s.phase = "done";
    this.emit(true);
  }
}
