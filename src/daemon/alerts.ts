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
