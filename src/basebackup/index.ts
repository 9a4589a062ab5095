/**
 * Basebackups: the four modes, scheduling and retention. The daemon calls `decideNewBackup`
 * (+ `deltaBackoffAllows`) each loop, starts `runBasebackup` when it says so, and runs
 * `refreshAndApplyRetention` after a backup finished or every 300 s while none runs.
 */
import { BackupFailure } from "./common.js";
import { runDeltaBasebackup } from "./delta.js";
import { runLocalTarBasebackup } from "./localtar.js";
import { runBasicBasebackup, runPipeBasebackup } from "./pgbasebackup.js";
import { siteConfigOf, type BasebackupContext, type BasebackupResult } from "./types.js";

export { BackupFailure, DirectUploader, createBackupWorkDir, incomingDir } from "./common.js";
export { runDeltaBasebackup } from "./delta.js";
export { runLocalTarBasebackup } from "./localtar.js";
export { runBasicBasebackup, runPipeBasebackup } from "./pgbasebackup.js";
export * from "./schedule.js";
export * from "./retention.js";
export type * from "./types.js";
export type { ProgressState } from "./progress.js";
export { parseBackupLabel } from "./label.js";

/** Runs one basebackup of `ctx.site` in the configured `basebackup_mode`. */
export async function runBasebackup(ctx: BasebackupContext): Promise<BasebackupResult> {
  const mode = siteConfigOf(ctx).basebackup_mode;
  const started = Date.now();
  let result: BasebackupResult;
  try {
    switch (mode) {
      case "basic":
        result = await runBasicBasebackup(ctx);
        break;
      case "pipe":
        result = await runPipeBasebackup(ctx);
        break;
      case "local-tar":
        result = await runLocalTarBasebackup(ctx, { withDeltaStats: false });
        break;
      case "local-tar-delta-stats":
        result = await runLocalTarBasebackup(ctx, { withDeltaStats: true });
        break;
      case "delta":
        result = await runDeltaBasebackup(ctx);
        break;
      default:
        throw new BackupFailure(`Unsupported basebackup_mode '${String(mode)}'`);
    }
  } catch (err) {
    ctx.metrics?.increase("pghoard.basebackup_failed");
    ctx.log.error(`Basebackup failed: ${err instanceof Error ? err.message : String(err)}`);
    throw err;
  }
  ctx.metrics?.gauge("pghoard.backup_time", (Date.now() - started) / 1000, { basebackup_mode: mode });
  ctx.metrics?.increase("pghoard.basebackup_completed");
  ctx.log.info(
    `Basebackup ${result.name} completed: ${result.plainBytes} bytes read, ${result.uploadedBytes} bytes uploaded`,
  );
  return result;
}
