/**
 * Start-up walk of the spool (operations.md §6.6): files a crash left behind are queued again, so
 * nothing that was received or compressed is lost.
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { readdir, stat, unlink } from "node:fs/promises";
import path from "node:path";
import { exists } from "../common/fs.js";
import { isHistoryName, isPartialName, isWalName } from "../wal/index.js";
import { repairPartialFiles } from "../wal/receivexlog.js";
import type { DaemonContext } from "./context.js";
import { objectKey } from "../catalog/index.js";
import { createSiteSpoolDirs, readSpoolMetadata, type WalFileType } from "./spool.js";

function fileTypeOf(name: string): WalFileType | null {
  if (isWalName(name)) return "xlog";
  if (isHistoryName(name)) return "timeline";
  return null;
}

async function listFiles(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).sort();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
}

/**
 * pg_receivewal resumes from the newest completed segment, so it stays in xlog_incoming after its
 * upload and the start-up walk finds it again: true when storage already holds it with the same
 * plaintext hash (then it is not compressed and uploaded again at every restart).
 */
async function alreadyStored(ctx: DaemonContext, site: string, name: string, fullPath: string): Promise<boolean> {
  try {
    const storage = await ctx.getStorage(site);
    const metadata = await storage.getMetadataForKey(objectKey(ctx.site(site).prefix, "xlog", name));
    const algorithm = metadata["hash-algorithm"];
    if (!metadata.hash || !algorithm) return false;
    const hash = createHash(algorithm);
    for await (const chunk of createReadStream(fullPath)) hash.update(chunk as Buffer);
    return hash.digest("hex") === metadata.hash;
  } catch {
    // Not stored, unreadable, or an unknown algorithm: upload it (the safe side).
    return false;
  }
}

export async function recoverSpool(ctx: DaemonContext, site: string): Promise<void> {
  const paths = ctx.spoolPaths(site);
  await createSiteSpoolDirs(paths);
  const log = ctx.log;

  const repaired = await repairPartialFiles(paths.xlogIncoming, log);
  for (let i = 0; i < repaired.length; i++) ctx.metrics.increase("pghoard.incomplete_partial_wal_segment");
  for (const name of await listFiles(paths.xlogIncoming)) {
    const fullPath = path.join(paths.xlogIncoming, name);
    if (isPartialName(name) || name.endsWith(".partial_incomplete")) continue;
    const filetype = fileTypeOf(name);
    if (!filetype) {
      log.warn(`Found invalid file ${fullPath} from incoming xlog directory`);
      continue;
    }
    const compressedPath = path.join(filetype === "xlog" ? paths.xlog : paths.timeline, name);
    const hasCompressed = await exists(compressedPath);
    if (hasCompressed && (await exists(`${compressedPath}.metadata`))) {
      // Already compressed; the upload is re-queued below. Only the source needs cleaning up.
      log.info(`${fullPath} was already compressed, scheduling it for deletion`);
      if (filetype === "xlog") ctx.compressionDeleter?.(fullPath);
      else await unlink(fullPath).catch(() => undefined);
      continue;
    }
    if (hasCompressed) await unlink(compressedPath).catch(() => undefined);
    if (filetype === "xlog" && (await alreadyStored(ctx, site, name, fullPath))) {
      log.info(`${fullPath} is already in storage with the same hash, not uploading it again`);
      ctx.compressionDeleter?.(fullPath);
      continue;
    }
    log.debug(`Found ${fullPath} when starting up, adding to compression queue`);
    ctx.compressionQueue.put({ site, filetype, fullPath, compressToMemory: false, deleteFileAfterCompression: true });
  }

  for (const filetype of ["xlog", "timeline"] as const) {
    const dir = filetype === "xlog" ? paths.xlog : paths.timeline;
    for (const name of await listFiles(dir)) {
      if (name.endsWith(".metadata")) continue;
      const fullPath = path.join(dir, name);
      if (name.startsWith(".") && name.includes(".tmp-")) {
        // Our own atomic-write temp file from an interrupted compression.
        await unlink(fullPath).catch(() => undefined);
        continue;
      }
      if (fileTypeOf(name) !== filetype || !(await exists(`${fullPath}.metadata`))) {
        log.warn(`Found invalid file ${fullPath} from compressed ${filetype} directory`);
        continue;
      }
      if (ctx.localObjectPath(site, objectKey(ctx.site(site).prefix, filetype, name)) === path.resolve(fullPath)) {
        continue; // legacy local store rooted at backup_location: this is a stored object, not a pending upload
      }
      const metadata = await readSpoolMetadata(fullPath);
      log.debug(`Found ${fullPath} when starting up, adding to transfer queue`);
      ctx.transferQueue.put({
        type: "UPLOAD",
        site,
        filetype,
        localPath: fullPath,
        metadata,
        fileSize: (await stat(fullPath)).size,
      });
    }
  }
}
