/**
 * Tar + compress + encrypt + upload of chunks (local-tar data chunks and delta bundles), with at
 * most `basebackup_threads` chunks being built and at most `basebackup_chunks_in_progress` built
 * but not yet uploaded. The tar is produced on the main thread (I/O only); compression and
 * encryption run in the FileFormatPool's workers; each chunk is uploaded as soon as it is ready.
 */
import path from "node:path";
import { once } from "node:events";
import { finished } from "node:stream/promises";
import { removeIfExists } from "../common/fs.js";
import { chunkFileName, chunkObjectName, dataObjectMetadata, type ChunkRecord } from "../catalog/index.js";
import { encodeOptions, hostnameOf, throwIfAborted, uploaderOf } from "./common.js";
import { tarChunk, type ChunkEntry, type TarChunkOptions, type TarChunkStats } from "./files.js";
import type { BackupProgress } from "./progress.js";
import { siteConfigOf, type BasebackupContext, type BasebackupFileType } from "./types.js";

/** = the pool's TRANSFER_CHUNK: whole tar buffers are moved to the worker and come back for reuse. */
const TAR_BUFFER_SIZE = 1024 * 1024;

/** A counting semaphore with FIFO waiters. */
class Limiter {
  private waiters: Array<() => void> = [];
  constructor(private available: number) {}
  async acquire(): Promise<void> {
    if (this.available > 0) {
      this.available -= 1;
      return;
    }
    await new Promise<void>((resolve) => this.waiters.push(resolve));
  }
  release(): void {
    const next = this.waiters.shift();
    if (next) next();
    else this.available += 1;
  }
}

export interface ChunkJobOptions {
  filetype: Extract<BasebackupFileType, "basebackup_chunk" | "basebackup_delta_chunk">;
  backupName: string;
  workDir: string;
  progress: BackupProgress;
  tarOptions: Omit<TarChunkOptions, "log">;
  /** delta: `true` in the bytes-uploaded metric tag. */
  delta: boolean;
  /** Called once the data of every chunk has been read (uploads may still be running). */
  onDataRead?: () => void;
}

/** Builds one chunk file: returns plaintext (tar) and stored sizes. */
async function buildChunk(
  ctx: BasebackupContext,
  entries: readonly ChunkEntry[],
  localPath: string,
  opts: ChunkJobOptions,
  /** Called when the chunk's files have all been read, before the encoder is flushed. */
  onRead: () => void,
): Promise<{ inputSize: number; resultSize: number }> {
  const stats: TarChunkStats = { files: [], vanished: 0, dataBytes: 0 };
  // Whole tar buffers move to the worker without a copy (the main thread's largest cost after reading).
  // Striped: a chunk that is mostly one large file still keeps two cores compressing (snappy).
  // The worker writes the chunk file itself: no output crosses back to this thread.
  const encoder = ctx.pool.createEncodeStream(encodeOptions(ctx), {
    transferInput: true,
    striped: true,
    outputPath: localPath,
  });
  const output = finished(encoder.resume());
  let outputError: unknown;
  output.catch((err: unknown) => {
    outputError = err;
  });
  // Buffers the encoder copied (rather than moved) are recycled for the tar once written; moved
  // ones are detached (length 0) and not reused.
  const free: Buffer[] = [];
  const allocate = (size: number): Buffer => {
    const buf = free.pop();
    if (buf && buf.length === size) return buf;
    // a buffer the workers gave back after compressing it (TAR_BUFFER_SIZE is their batch size)
    return size === TAR_BUFFER_SIZE ? ctx.pool.takeBuffer() : Buffer.allocUnsafeSlow(size);
  };
  let inputSize = 0;
  try {
    for await (const buf of tarChunk(
      entries,
      { ...opts.tarOptions, allocate, bufferSize: TAR_BUFFER_SIZE, log: ctx.log },
      stats,
    )) {
      if (outputError !== undefined) throw outputError;
      inputSize += buf.length;
      const recyclable =
        buf.length === TAR_BUFFER_SIZE && buf.byteOffset === 0 && buf.buffer.byteLength === TAR_BUFFER_SIZE;
      const flowing = encoder.write(buf, () => {
        if (recyclable && buf.length === TAR_BUFFER_SIZE) free.push(buf);
      });
      // the output pipeline settles (rejects) if the encoder fails or closes while we wait
      if (!flowing) await Promise.race([once(encoder, "drain"), output]);
    }
    onRead();
    encoder.end();
    await output;
  } catch (err) {
    encoder.destroy(err instanceof Error ? err : new Error(String(err)));
    await output.catch(() => undefined);
    await removeIfExists(localPath).catch(() => undefined);
    throw err;
  }
  const result = await encoder.result();
  return { inputSize, resultSize: result.storedSize };
}

/**
 * Creates and uploads chunks 1..n of `chunks`; returns their control-JSON records in order.
 * Waits for every started upload before returning or throwing.
 */
export async function createAndUploadChunks(
  ctx: BasebackupContext,
  chunks: ChunkEntry[][],
  opts: ChunkJobOptions,
): Promise<ChunkRecord[]> {
  const site = siteConfigOf(ctx);
  const threads = Math.max(1, site.basebackup_threads ?? 1);
  const maxOnDisk = Math.max(1, site.basebackup_chunks_in_progress ?? 5);
  const building = new Limiter(threads);
  const onDisk = new Limiter(Math.max(threads, maxOnDisk));
  const uploader = uploaderOf(ctx);
  const records: ChunkRecord[] = new Array(chunks.length);
  const tasks: Promise<void>[] = [];
  let failure: unknown;
  const encoding = encodeOptions(ctx);
  const algorithm = encoding.algorithm;
  let chunksRead = 0;
  const chunkRead = (): void => {
    chunksRead += 1;
    if (chunksRead === chunks.length) opts.onDataRead?.();
  };

  for (let i = 0; i < chunks.length && failure === undefined; i++) {
    await onDisk.acquire();
    await building.acquire();
    if (failure !== undefined) {
      building.release();
      onDisk.release();
      break;
    }
    const index = i + 1;
    const fileName = chunkFileName(opts.backupName, index);
    const localPath = path.join(opts.workDir, fileName);
    const objectName = chunkObjectName(opts.backupName, index);
    const task = (async () => {
      let built = false;
      try {
        throwIfAborted(ctx);
        const started = Date.now();
        const { inputSize, resultSize } = await buildChunk(ctx, chunks[i], localPath, opts, chunkRead);
        built = true;
        building.release();
        ctx.log.info(
          `Compressed ${chunks[i].length} $PGDATA entries into ${objectName}: ${inputSize} -> ${resultSize} bytes ` +
            `in ${((Date.now() - started) / 1000).toFixed(2)} s`,
        );
        if (inputSize > 0) {
          ctx.metrics?.gauge("pghoard.compressed_size_ratio", resultSize / inputSize, {
            algorithm,
            site: ctx.site,
            type: "basebackup",
          });
        }
        records[i] = {
          chunk_filename: objectName,
          input_size: inputSize,
          result_size: resultSize,
          files: chunks[i].map((e) => e.archivePath),
        };
        throwIfAborted(ctx);
        await uploader.upload({
          filetype: opts.filetype,
          objectName,
          localPath,
          fileSize: resultSize,
          metadata: dataObjectMetadata({
            encoding,
            format: "pghoard-bb-v2",
            originalSize: inputSize,
            host: hostnameOf(ctx),
          }),
          onProgress: (n) => {
            opts.progress.addUploaded(n);
            ctx.metrics?.increase("pghoard.basebackup_bytes_uploaded", n, { delta: opts.delta ? "True" : "False" });
          },
        });
        const done = records.filter(Boolean).length;
        ctx.metrics?.gauge("pghoard.basebackup_estimated_progress", (done * 100) / chunks.length, { site: ctx.site });
      } catch (err) {
        if (failure === undefined) failure = err;
        await removeIfExists(localPath).catch(() => undefined);
      } finally {
        if (!built) building.release();
        onDisk.release();
      }
    })();
    tasks.push(task);
  }
  await Promise.all(tasks);
  if (failure !== undefined) throw failure;
  return records;
}
