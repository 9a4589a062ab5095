/**
 * Alert files (operations.md §8): `<alert_file_dir>/<name>` containing `alert`. Upstream never
 * removes them; we additionally remove `upload_retries_warning` once uploads succeed again, since
 * that condition clears itself (the others need an operator to fix the cause), and
 * `restore_drill_error` once a later restore drill succeeds, and `disk_full_error` (ours) once the
 * spool has room again.
 */
import { existsSync } from "node:fs";
import path from "node:path";
import { removeIfExists, writeFileAtomic } from "../common/fs.js";

export type AlertName =
  | "authentication_error"
  | "configuration_error"
  | "version_unsupported_error"
  | "version_mismatch_error"
  | "upload_retries_warning"
  | "restore_drill_error"
  | "disk_full_error";

export function alertFilePath(alertFileDir: string, name: AlertName): string {
  return path.join(alertFileDir, name);
}

export async function createAlertFile(alertFileDir: string, name: AlertName): Promise<void> {
  await writeFileAtomic(alertFilePath(alertFileDir, name), "alert");
}

export async function removeAlertFile(alertFileDir: string, name: AlertName): Promise<boolean> {
  const file = alertFilePath(alertFileDir, name);
  if (!existsSync(file)) return false;
  return removeIfExists(file);
}

/**
 * An alert file for one condition that several parts of the daemon see (the spool disk is full:
 * pg_receivewal and the compressors). The file is there while any reporter's last word was
 * "raised"; one left by an earlier run (a crash, a restart while the disk was full) goes at the
 * first report that all is well, whoever makes it. File operations run one at a time, each making
 * the file match the state at that moment, so a slow create can never land after a later clear.
 */
export class ConditionAlert {
  private readonly reporters = new Set<string>();
  private inherited: boolean;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly dir: () => string,
    readonly name: AlertName,
  ) {
    this.inherited = existsSync(alertFilePath(dir(), name));
  }

  /** Resolves true when this reporter had not reported the condition yet (log it once). */
  raise(reporter: string): Promise<boolean> {
    if (this.reporters.has(reporter)) return Promise.resolve(false);
    this.reporters.add(reporter);
    return this.sync().then(() => true);
  }

  /** Resolves true when this call removed the alert file. */
  clear(reporter: string): Promise<boolean> {
    // The common case (nothing raised) touches no file: it runs for every segment.
    if (!this.reporters.delete(reporter) && !this.inherited) return Promise.resolve(false);
    this.inherited = false;
    return this.sync();
  }

  private sync(): Promise<boolean> {
    const run = this.queue.then(async () => {
      if (this.reporters.size > 0 || this.inherited) {
        await createAlertFile(this.dir(), this.name);
        return false;
      }
      return removeAlertFile(this.dir(), this.name);
    });
    this.queue = run.catch(() => undefined);
    return run;
  }
}
