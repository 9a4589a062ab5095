/**
 * `delta` mode (format `pghoard-delta-v2`, storage-layout.md §5.5/§5.7): every file of $PGDATA is
 * described in a manifest; files ≤ 150 bytes are embedded, files below
 * `basebackup_delta_mode_min_delta_file_size` go into bundle tars, bigger ones become objects named
 * by the BLAKE2s-256 of their content, uploaded only when no existing delta backup has them.
 *
 * Differences from upstream: no hard-link snapshot directory (a file that vanishes before it is
 * read is dropped from the manifest instead — WAL replay recreates or deletes it, as for
 * pg_basebackup), and user tablespaces are supported (upstream's snapshotter cannot express paths
 * outside $PGDATA): tablespace files always go into bundles with the archive names
 * `tablespaces/<name>/...` (plus directory entries), which every restore — upstream's included —
 * rewrites to the tablespace's target directory as for local-tar chunks. Their manifest entries
 * (`pg_tblspc/<oid>/...`, `should_be_bundled`) are informational only.
 */
import { createHash } from "node:crypto";
import { lstat, open } from "node:fs/promises";
import path from "node:path";
import { removeIfExists } from "../common/fs.js";
import { hashLocalFile } from "../fileformat/hash.js";
import type { StorageBackend } from "../storage/types.js";
import { StorageNotFoundError } from "../storage/types.js";
import {
  basebackupKey,
  chunkObjectName,
  dataObjectMetadata,
  DELTA_FORMATS,
  manifestFiles,
  readControlMetadata,
  type BasebackupInfo,
  type ChunkRecord,
  type TablespaceInfo,
} from "../catalog/index.js";
import { privateKeyLookup } from "../config/sites.js";
import { BackupFailure, encodeOptions, hostnameOf, objectKey, uploaderOf } from "./common.js";
import { runChunkedBackup, type ChunkedBackupRun } from "./chunked.js";
import { createAndUploadChunks } from "./chunks.js";
import { EMBEDDED_FILE_SIZE } from "./control.js";
import { findFilesToBackup, type ChunkEntry } from "./files.js";
import { pyIsoformatUtc } from "../common/pycompat.js";
import { listBasebackups } from "./retention.js";
import { siteConfigOf, type BasebackupContext, type BasebackupResult } from "./types.js";

export { EMBEDDED_FILE_SIZE };

export const EMPTY_FILE_HASH = createHash("blake2s256").digest("hex");

/** rohmu's SnapshotFile, fields in its declaration order (upstream rejects unknown fields). */
export interface SnapshotFile {
  relative_path: string;
  file_size: number;
  stored_file_size: number;
  mtime_ns: bigint | number;
  hexdigest: string;
  content_b64: string | null;
  should_be_bundled: boolean;
  missing_ok: boolean;
}

interface SnapshotEntry {
  file: SnapshotFile;
  localPath: string;
  /** Tar member name inside a bundle (`tablespaces/<name>/...` for tablespace files). */
  archiveName: string;
  inTablespace: boolean;
}

function makeSnapshotFile(relativePath: string, size: number, mtimeNs: bigint, missingOk: boolean): SnapshotFile {
  return {
    relative_path: relativePath,
    file_size: size,
    stored_file_size: 0,
    mtime_ns: mtimeNs,
    hexdigest: "",
    content_b64: null,
    should_be_bundled: false,
    missing_ok: missingOk,
  };
}

/** Python PurePosixPath ordering: by path components, not by the raw string. */
export function comparePaths(a: string, b: string): number {
  const pa = a.split("/");
  const pb = b.split("/");
  for (let i = 0; i < Math.min(pa.length, pb.length); i++) {
    if (pa[i] !== pb[i]) return pa[i] < pb[i] ? -1 : 1;
  }
  return pa.length - pb.length;
}

/** Reads at most `size` bytes and returns their BLAKE2s-256 (upstream's SizeLimitedFile + hash). */
function hashFile(localPath: string, size: number): Promise<string> {
  return hashLocalFile(localPath, "blake2s256", size);
}

async function readSmallFile(localPath: string, size: number): Promise<Buffer> {
  const handle = await open(localPath, "r");
  try {
    const buf = Buffer.alloc(size);
    let position = 0;
    while (position < size) {
      const { bytesRead } = await handle.read(buf, position, size - position, position);
      if (bytesRead === 0) break;
      position += bytesRead;
    }
    return buf.subarray(0, position);
  } finally {
    await handle.close();
  }
}

function isEnoent(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException)?.code;
  return code === "ENOENT" || code === "ENOTDIR";
}

/** Runs `fn` over `items` with at most `parallel` in flight; stops at the first error. */
async function parallelEach<T>(
  items: readonly T[],
  parallel: number,
  fn: (item: T, index: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  let failure: unknown;
  const worker = async (): Promise<void> => {
    while (failure === undefined && next < items.length) {
      const index = next++;
      try {
        await fn(items[index], index);
      } catch (err) {
        if (failure === undefined) failure = err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(parallel, items.length)) }, worker));
  if (failure !== undefined) throw failure;
}

/** hexdigest → manifest entry of every existing delta backup of the site. */
export async function listExistingDeltaFiles(
  ctx: BasebackupContext,
  backups: BasebackupInfo[],
): Promise<Map<string, Record<string, unknown>>> {
  const site = siteConfigOf(ctx);
  const result = new Map<string, Record<string, unknown>>();
  for (const backup of backups) {
    if (!DELTA_FORMATS.has(backup.metadata.format ?? "")) continue;
    if (backup.site !== ctx.site) continue;
    const key = basebackupKey(site.prefix, backup.name);
    const meta = await readControlMetadata(ctx.storage, key, backup.metadata, privateKeyLookup(site));
    for (const file of manifestFiles(meta)) {
      const hexdigest = file.hexdigest;
      if (typeof hexdigest === "string" && hexdigest) result.set(hexdigest, file);
    }
  }
  return result;
}

/** Maps an archive path of the walk to the manifest's path relative to $PGDATA. */
function relativePathFor(archivePath: string, tablespaces: Record<string, TablespaceInfo>): string {
  if (archivePath.startsWith("pgdata/")) return archivePath.slice("pgdata/".length);
  const m = /^tablespaces\/([^/]+)(\/.*)?$/.exec(archivePath);
  if (m) {
    const info = tablespaces[m[1]];
    if (!info) throw new Error(`Unknown tablespace in ${archivePath}`);
    return `pg_tblspc/${info.oid}${m[2] ?? ""}`;
  }
  throw new Error(`Unexpected archive path ${archivePath}`);
}

async function deleteQuietly(storage: StorageBackend, key: string, ctx: BasebackupContext): Promise<void> {
  try {
    ctx.log.info(`Removing object from the storage: ${key}`);
    await storage.deleteKey(key);
  } catch (err) {
    if (!(err instanceof StorageNotFoundError)) ctx.log.warn(`Could not delete ${key}: ${(err as Error).message}`);
  }
}

export async function runDeltaBasebackup(ctx: BasebackupContext): Promise<BasebackupResult> {
  const site = siteConfigOf(ctx);
  const parallel = Math.max(1, site.basebackup_threads ?? 1);
  const minDeltaSize = site.basebackup_delta_mode_min_delta_file_size ?? 10 * 1024 * 1024;
  const bundleSize = site.basebackup_delta_mode_chunk_size ?? 500 * 1024 * 1024;
  const backups = ctx.listBasebackups
    ? await ctx.listBasebackups()
    : await listBasebackups(ctx.storage, site, ctx.site);
  const tracked = await listExistingDeltaFiles(ctx, backups);
  return await runChunkedBackup(ctx, async (run) => {
    const { name, workDir, progress } = run;
    const newObjects: string[] = [];
    // a failed attempt removes what it uploaded (hash objects only it references, its bundles)
    run.onFailure(async () => {
      ctx.log.info("Cleaning up already uploaded new backup files");
      for (const key of newObjects) await deleteQuietly(ctx.storage, key, ctx);
    });
    const startTime = new Date();
    progress.setPhase("snapshot");
    // without earlier delta backups nothing can be skipped: the digest computed while uploading suffices
    const { files, emptyDirs, tablespaceDirs } = await snapshot(ctx, run, minDeltaSize, parallel, tracked.size > 0);
    const snapshotEnd = new Date();

    // bundles of small files (tablespace directory entries first), then big files not stored yet
    const bundles: ChunkEntry[][] = [];
    let current: ChunkEntry[] = tablespaceDirs.slice();
    let currentSize = 0;
    const todo = new Map<string, SnapshotEntry[]>();
    let unhashed = 0;
    for (const entry of files) {
      const f = entry.file;
      if (f.should_be_bundled) {
        if (currentSize > 0 && currentSize + f.file_size > bundleSize) {
          bundles.push(current);
          current = [];
          currentSize = 0;
        }
        current.push({ archivePath: entry.archiveName, localPath: entry.localPath, missingOk: f.missing_ok });
        currentSize += f.file_size;
      } else if (f.content_b64 === null && !f.hexdigest) {
        todo.set(`unhashed:${unhashed++}`, [entry]);
      } else if (f.hexdigest && !tracked.has(f.hexdigest)) {
        const list = todo.get(f.hexdigest) ?? [];
        list.push(entry);
        todo.set(f.hexdigest, list);
      }
    }
    if (current.length > 0) bundles.push(current);
    const todoBytes = [...todo.values()].reduce((a, l) => a + l[0].file.file_size, 0);
    const bundleFileBytes = files.reduce((a, e) => a + (e.file.should_be_bundled ? e.file.file_size : 0), 0);
    ctx.log.info(
      `Submitting ${bundles.length} delta chunks with ${bundles.reduce((a, b) => a + b.length, 0)} entries and ${todo.size} hashes (${todoBytes} bytes) for upload`,
    );
    progress.setTotal(progress.snapshot.bytes_done + todoBytes + bundleFileBytes);
    progress.setPhase(`uploading ${bundles.length} bundles and ${todo.size} delta files`);
    for (let i = 0; i < bundles.length; i++)
      newObjects.push(objectKey(ctx, "basebackup_delta_chunk", chunkObjectName(name, i + 1)));
    // bundles and big files go up side by side: one big relation segment is a single encode
    // stream, so overlapping it with the bundles keeps both cores busy
    const bundlesDone = createAndUploadChunks(ctx, bundles, {
      filetype: "basebackup_delta_chunk",
      backupName: name,
      workDir,
      progress,
      delta: true,
      tarOptions: { checkAlive: run.checkAlive, onProgress: (n) => progress.addDone(n) },
    });
    bundlesDone.catch(() => undefined); // settled below; never an unhandled rejection meanwhile

    const uploadedDigests = new Map<string, number>();
    const vanished = new Set<SnapshotEntry>();
    const opts = encodeOptions(ctx);
    const uploader = uploaderOf(ctx);
    let tmpCounter = 0;
    const order = [...todo.values()].sort((a, b) => b[0].file.file_size - a[0].file.file_size);
    const filesDone = parallelEach(order, parallel, async (entries) => {
      for (const entry of entries) {
        run.checkAlive();
        const tmp = path.join(workDir, `delta_${tmpCounter++}.tmp`);
        let result;
        try {
          // the digest is computed again from what is actually uploaded (the file may have changed)
          result = await ctx.pool.encodeFile(entry.localPath, tmp, { ...opts, hashAlgorithm: "blake2s" });
        } catch (err) {
          await removeIfExists(tmp).catch(() => undefined);
          if (
            isEnoent(err) ||
            isEnoent((err as { cause?: unknown }).cause) ||
            /ENOENT/.test(String((err as Error).message))
          ) {
            if (entry.file.missing_ok) {
              ctx.log.warn(`File disappeared while uploading: ${entry.localPath}`);
              vanished.add(entry);
              continue;
            }
            throw new BackupFailure(`Required file disappeared while uploading: ${entry.localPath}`, { cause: err });
          }
          throw err;
        }
        const digest = result.hash as string;
        entry.file.hexdigest = digest;
        entry.file.file_size = result.originalSize;
        entry.file.stored_file_size = result.storedSize;
        progress.addDone(result.originalSize);
        if (uploadedDigests.has(digest) || tracked.has(digest)) {
          await removeIfExists(tmp);
          continue;
        }
        uploadedDigests.set(digest, result.storedSize);
        newObjects.push(objectKey(ctx, "basebackup_delta", digest));
        if (result.originalSize > 0) {
          ctx.metrics?.gauge("pghoard.compressed_size_ratio", result.storedSize / result.originalSize, {
            algorithm: opts.algorithm,
            site: ctx.site,
            type: "basebackup_delta",
          });
        }
        await uploader.upload({
          filetype: "basebackup_delta",
          objectName: digest,
          localPath: tmp,
          fileSize: result.storedSize,
          metadata: dataObjectMetadata({
            encoding: opts,
            format: "pghoard-delta-v2",
            originalSize: result.originalSize,
            host: hostnameOf(ctx),
          }),
          onProgress: (n) => {
            progress.addUploaded(n);
            ctx.metrics?.increase("pghoard.basebackup_bytes_uploaded", n, { delta: "True" });
          },
        });
      }
    });
    const [bundleResult, filesResult] = await Promise.allSettled([bundlesDone, filesDone]);
    if (bundleResult.status === "rejected") throw bundleResult.reason;
    if (filesResult.status === "rejected") throw filesResult.reason;
    const chunkFiles = bundleResult.value;
    const kept = files.filter((e) => !vanished.has(e)).map((e) => e.file);
    const manifest = buildManifest({
      files: kept,
      emptyDirs,
      chunkFiles,
      tracked,
      uploadedDigests,
      startTime,
      snapshotStart: startTime,
      snapshotEnd,
      metrics: ctx.metrics,
    });
    return {
      extra: { chunks: chunkFiles, manifest: manifest.manifest },
      format: "pghoard-delta-v2",
      totalSizePlain: manifest.totalSize,
      totalSizeEnc: manifest.totalStoredSize,
      uploadedBytes: manifest.uploadedSize,
    };
  });
}

/** Lists and classifies the files: embedded, bundled or hashed (rohmu `Snapshotter.snapshot`). */
async function snapshot(
  ctx: BasebackupContext,
  run: ChunkedBackupRun,
  minDeltaSize: number,
  parallel: number,
  prehash: boolean,
): Promise<{ files: SnapshotEntry[]; emptyDirs: string[]; tablespaceDirs: ChunkEntry[] }> {
  const dirs = new Set<string>();
  const tablespaceDirs: ChunkEntry[] = [];
  const candidates: Array<{ rel: string; localPath: string; missingOk: boolean; archivePath: string }> = [];
  for await (const item of findFilesToBackup(run.pgdata, run.tablespaces, ctx.log)) {
    if (item.op === "leave") continue;
    if (item.localPath.endsWith(".pem")) continue; // e.g. dh1024.pem, as upstream
    const inTablespace = item.archivePath.startsWith("tablespaces/");
    const rel = relativePathFor(item.archivePath, run.tablespaces);
    if (item.op === "enter") {
      if (inTablespace)
        tablespaceDirs.push({ archivePath: item.archivePath, localPath: item.localPath, missingOk: item.missingOk });
      else dirs.add(rel);
    } else {
      candidates.push({ rel, localPath: item.localPath, missingOk: item.missingOk, archivePath: item.archivePath });
    }
  }
  let totalToHash = 0;
  const snap: SnapshotEntry[] = [];
  for (const c of candidates) {
    let st;
    try {
      st = await lstat(c.localPath, { bigint: true });
    } catch (err) {
      if (c.missingOk && isEnoent(err)) continue;
      throw new BackupFailure(`Required file disappeared during the backup: ${c.localPath}`, { cause: err });
    }
    if (!st.isFile()) continue; // delta snapshots hold regular files only
    const file = makeSnapshotFile(c.rel, Number(st.size), st.mtimeNs, c.missingOk);
    const inTablespace = c.archivePath.startsWith("tablespaces/");
    if (!inTablespace) dirs.add(path.posix.dirname(c.rel));
    snap.push({ file, localPath: c.localPath, archiveName: inTablespace ? c.archivePath : c.rel, inTablespace });
    if (
      prehash &&
      !inTablespace &&
      file.file_size > EMBEDDED_FILE_SIZE &&
      !(minDeltaSize && file.file_size < minDeltaSize)
    )
      totalToHash += file.file_size;
  }
  run.progress.setTotal(totalToHash);
  const vanished = new Set<SnapshotEntry>();
  await parallelEach(snap, parallel, async (entry) => {
    run.checkAlive();
    const f = entry.file;
    try {
      if (entry.inTablespace) {
        f.should_be_bundled = true;
      } else if (f.file_size <= EMBEDDED_FILE_SIZE) {
        f.content_b64 = (await readSmallFile(entry.localPath, f.file_size)).toString("base64");
      } else if (minDeltaSize && f.file_size < minDeltaSize) {
        f.should_be_bundled = true;
      } else if (prehash) {
        f.hexdigest = await hashFile(entry.localPath, f.file_size);
        run.progress.addDone(f.file_size);
      }
    } catch (err) {
      if (f.missing_ok && isEnoent(err)) vanished.add(entry);
      else throw err;
    }
  });
  return { files: snap.filter((e) => !vanished.has(e)), emptyDirs: [...dirs].sort(comparePaths), tablespaceDirs };
}

/** The manifest (rohmu `BackupManifest.jsondict()`), sizes and the delta_backup_* metrics. */
function buildManifest(args: {
  files: SnapshotFile[];
  emptyDirs: string[];
  chunkFiles: ChunkRecord[];
  tracked: Map<string, Record<string, unknown>>;
  uploadedDigests: Map<string, number>;
  startTime: Date;
  snapshotStart: Date;
  snapshotEnd: Date;
  metrics: BasebackupContext["metrics"];
}): { manifest: unknown; totalSize: number; totalStoredSize: number; uploadedSize: number } {
  const { files, chunkFiles, tracked, uploadedDigests, metrics } = args;
  // stored sizes of reused objects come from the manifests that have them
  let digestsInput = 0;
  let digestsStored = 0;
  let embedInput = 0;
  for (const file of files) {
    if (file.should_be_bundled) continue;
    if (file.hexdigest) {
      if (file.stored_file_size === 0 && file.hexdigest !== EMPTY_FILE_HASH) {
        file.stored_file_size = Number(tracked.get(file.hexdigest)?.stored_file_size ?? 0);
      }
      digestsInput += file.file_size;
      digestsStored += file.stored_file_size;
    } else if (file.content_b64) {
      embedInput += file.file_size;
    }
  }
  const chunksInput = chunkFiles.reduce((a, c) => a + c.input_size, 0);
  const chunksStored = chunkFiles.reduce((a, c) => a + c.result_size, 0);
  const sorted = files.slice().sort((a, b) => comparePaths(a.relative_path, b.relative_path));
  const totalSize = chunksInput + digestsInput + embedInput;
  const totalStoredSize = chunksStored + digestsStored + embedInput;
  const uploadedSize = chunksStored + [...uploadedDigests.values()].reduce((a, b) => a + b, 0);
  const uploadedCount = chunkFiles.length + uploadedDigests.size;
  metrics?.increase("pghoard.delta_backup_total_size", uploadedSize);
  metrics?.gauge("pghoard.delta_backup_upload_size", uploadedSize);
  metrics?.increase("pghoard.delta_backup_total_files", uploadedCount);
  metrics?.gauge("pghoard.delta_backup_upload_files", uploadedCount);
  if (tracked.size > 0) {
    const digestCount = sorted.filter((f) => f.hexdigest && !f.should_be_bundled).length;
    if (digestCount)
      metrics?.gauge(
        "pghoard.delta_backup_changed_data_files_ratio",
        uploadedCount / (digestCount + chunkFiles.length),
      );
    if (digestsStored)
      metrics?.gauge("pghoard.delta_backup_changed_data_size_ratio", uploadedSize / (digestsStored + chunksStored));
    metrics?.gauge("pghoard.delta_backup_remained_data_size", digestsStored - (uploadedSize - chunksStored));
  }
  const manifest = {
    start: pyIsoformatUtc(args.startTime),
    end: pyIsoformatUtc(new Date()),
    snapshot_result: {
      start: pyIsoformatUtc(args.snapshotStart),
      end: pyIsoformatUtc(args.snapshotEnd),
      state: { root_globs: ["**/*"], files: sorted, empty_dirs: args.emptyDirs },
      files: sorted.length,
      total_size: sorted.reduce((a, f) => a + f.file_size, 0),
      hashes: sorted.filter((f) => f.hexdigest).map((f) => ({ hexdigest: f.hexdigest, size: f.file_size })),
    },
    upload_result: { total_size: totalSize, total_stored_size: totalStoredSize },
  };
  return { manifest, totalSize, totalStoredSize, uploadedSize };
}
