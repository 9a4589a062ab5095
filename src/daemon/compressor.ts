/**
 * Compressor workers (upstream CompressorThread, operations.md §6.5): `compression.thread_count`
 * loops take CompressionEvents, verify WAL headers, compress+encrypt in the FileFormatPool's
 * worker threads (to memory or to the spool with a `.metadata` sidecar) and queue the upload.
 * A failing event is retried 3 times 3 s apart, then the daemon is told to stop (critical failure).
 * A full spool disk is not a failure of the event: it is retried until space returns, with the
 * `disk_full_error` alert file present meanwhile, so the daemon stays up and resumes by itself.
 */
import { existsSync } from "node:fs";
import { unlink } from "node:fs/promises";
import path from "node:path";
import type { Logger } from "pino";
import { siteLogger } from "../common/logger.js";
import { writeFileAtomic } from "../common/fs.js";
import { isPartialName, verifyWalFile, verifyWalHeader } from "../wal/index.js";
import type { EncodeOptions } from "../fileformat/index.js";
import { siteEncodeOptions, walObjectMetadata } from "../catalog/index.js";
import type { DaemonContext } from "./context.js";
import { deferred, sleep } from "../common/async.js";
import { isDiskFull } from "../common/errors.js";
import { compressedDir, writeSpoolMetadata, type SpoolMetadata, type WalFileType } from "./spool.js";
import type { CompressionEvent, TransferResult, UploadOp } from "./types.js";

export interface CompressorTypeState {
  original_data: number;
  compressed_data: number;
  count: number;
}
export type CompressorState = Record<string, Record<"basebackup" | "xlog" | "timeline", CompressorTypeState>>;

const MAX_FAILED_ATTEMPTS = 3;
/** The compressors' name as a reporter of the shared disk_full_error alert. */
const REPORTER = "compressor";

/** Keeps the newest uncompressed segment per directory: pg_receivewal resumes from it (operations.md §6.5). */
export class WalFileDeleter {
  private pending = new Map<string, Set<string>>();

  constructor(private readonly ctx: DaemonContext) {}

  async add(filePath: string): Promise<void> {
    try {
      await this.deleteUnneeded(filePath);
    } catch (err) {
      // Upstream's WALFileDeleter keeps running; at worst files accumulate.
      this.ctx.log.error({ err }, `Problem handling WAL file deletion of ${filePath}`);
      this.ctx.metrics.unexpectedException(err, "wal_file_deleter_run");
    }
  }

  private async deleteUnneeded(filePath: string): Promise<void> {
    const dir = path.dirname(filePath);
    let files = this.pending.get(dir);
    if (!files) {
      files = new Set();
      this.pending.set(dir, files);
    }
    files.add(filePath);
    const sorted = [...files].sort();
    const keep = sorted[sorted.length - 1];
    for (const file of sorted.slice(0, -1)) {
      try {
        await unlink(file);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOENT") {
          this.ctx.log.error({ err }, `Problem deleting ${file}`);
          this.ctx.metrics.unexpectedException(err, "wal_file_deleter_delete_unneeded_files");
          continue;
        }
      }
      files.delete(file);
    }
    if (!files.has(keep)) files.add(keep);
  }
}

export class Compressors {
  /** One state object per worker, as upstream has one per compressor thread. */
  readonly states: CompressorState[] = [];
  private running = 0;
  private workers: Array<Promise<void>> = [];
  private stopped = false;
  readonly walDeleter: WalFileDeleter;
  private readonly log: Logger;

  constructor(
    private readonly ctx: DaemonContext,
    private readonly retryIntervalMs = 3000,
  ) {
    this.log = ctx.log.child({ name: "pghoard.compressor" });
    this.walDeleter = new WalFileDeleter(ctx);
  }

  start(count: number): void {
    for (let i = 0; i < count; i++) {
      const state: CompressorState = {};
      this.states.push(state);
      this.workers.push(this.workerLoop(state));
    }
  }

  /** Events being worked on right now (for graceful shutdown). */
  get inProgress(): number {
    return this.running;
  }

  /** Stop taking new events; resolves when every worker finished its current one. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.ctx.compressionQueue.close();
    await Promise.all(this.workers);
  }

  private async workerLoop(state: CompressorState): Promise<void> {
    while (!this.stopped) {
      const event = await this.ctx.compressionQueue.get();
      if (!event) break;
      this.running++;
      try {
        await this.handleWithRetries(event, state);
      } finally {
        this.running--;
      }
    }
  }

  private async handleWithRetries(event: CompressionEvent, state: CompressorState): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await this.handleEvent(event, state);
        await this.diskSpaceBack();
        return;
      } catch (err) {
        if (isDiskFull(err)) {
          attempt--; // waiting for space is not a failed attempt
          // pg_receivewal takes any space freed for its next segment: wait for space, and the spool
          // may stay full for ever. Compressing in memory needs none, and the upload frees some.
          if (await this.storeFromMemory(event, state, err)) return;
          await this.waitForDiskSpace(event, err);
          if (this.ctx.criticalFailure.signal.aborted || this.stopped) {
            event.callback?.resolve({ success: false, error: err });
            return;
          }
          continue;
        }
        const suffix = attempt < MAX_FAILED_ATTEMPTS ? ` (attempt ${attempt} of ${MAX_FAILED_ATTEMPTS})` : "";
        siteLogger(this.log, event.site).error(
          { err },
          `Problem handling${suffix}: ${event.site} ${event.filetype} ${event.fullPath}`,
        );
        this.ctx.metrics.unexpectedException(err, "compressor_run");
        if (attempt >= MAX_FAILED_ATTEMPTS) {
          // Continuing could lose or corrupt WAL: stop the daemon (upstream's critical failure).
          event.callback?.resolve({ success: false, error: err });
          this.ctx.metrics.unexpectedException(err, "compressor_run_critical");
          this.ctx.criticalFailure.abort(err);
          return;
        }
        await sleep(this.retryIntervalMs, this.ctx.criticalFailure.signal);
        if (this.ctx.criticalFailure.signal.aborted) {
          event.callback?.resolve({ success: false, error: err });
          return;
        }
      }
    }
  }

  private async waitForDiskSpace(event: CompressionEvent, err: unknown): Promise<void> {
    const message = err instanceof Error ? err.message : String(err);
    // The alert directory may be on the full disk itself: best effort.
    const first = await this.ctx.diskFullAlert.raise(REPORTER).catch((alertErr: unknown) => {
      this.log.error(`Could not create alert file disk_full_error: ${(alertErr as Error).message}`);
      return true;
    });
    if (first) {
      siteLogger(this.log, event.site).error(
        `Disk full while compressing ${event.site} ${event.filetype} ${event.fullPath}: ${message}; created alert file disk_full_error, retrying until space returns`,
      );
      this.ctx.metrics.increase("pghoard.disk_full");
    } else {
      siteLogger(this.log, event.site).warn(`Disk still full, retrying ${event.fullPath}: ${message}`);
    }
    await sleep(this.retryIntervalMs, this.ctx.criticalFailure.signal);
  }

  /**
   * A spool file that cannot be compressed into the full spool: compressed in memory and uploaded
   * from there; the source is deleted only once the upload succeeded. False when that failed too.
   */
  private async storeFromMemory(event: CompressionEvent, state: CompressorState, err: unknown): Promise<boolean> {
    if (event.compressToMemory || event.inputData || this.stopped) return false;
    const message = err instanceof Error ? err.message : String(err);
    siteLogger(this.log, event.site).warn(
      `No space in the spool for ${event.fullPath} (${message}); compressing it in memory instead`,
    );
    const uploaded = deferred<TransferResult>();
    try {
      await this.handleEvent(
        { ...event, compressToMemory: true, deleteFileAfterCompression: false, callback: uploaded },
        state,
      );
    } catch (memoryErr) {
      siteLogger(this.log, event.site).error(
        `Compressing ${event.fullPath} in memory failed too: ${(memoryErr as Error).message}`,
      );
      return false;
    }
    const result = await uploaded.promise;
    if (!result.success) return false;
    if (event.deleteFileAfterCompression) {
      if (event.filetype === "xlog") await this.walDeleter.add(event.fullPath);
      else await unlink(event.fullPath).catch(() => undefined);
    }
    event.callback?.resolve(result);
    return true;
  }

  /** A compression succeeded: the compressors' full disk (or one an earlier run left) is over. */
  private async diskSpaceBack(): Promise<void> {
    if (await this.ctx.diskFullAlert.clear(REPORTER).catch(() => false))
      this.log.info("Compression succeeds again after a full disk, removed alert file disk_full_error");
  }

  private encodeOptions(site: string): EncodeOptions {
    const opts = siteEncodeOptions(this.ctx.config, this.ctx.site(site));
    if (opts.encryptionKeyId && !opts.publicKeyPem)
      throw new Error(`Site '${site}': no public key for encryption key id '${opts.encryptionKeyId}'`);
    return opts;
  }

  private async handleEvent(event: CompressionEvent, state: CompressorState): Promise<void> {
    const { site, filetype } = event;
    const started = process.hrtime.bigint();
    const name = path.basename(event.fullPath);
    const opts = this.encodeOptions(site);
    // A `<SEG>.partial` PostgreSQL archives at promotion: a whole segment file of the old timeline,
    // stored under its own name without a hash, as the walreceiver's partial segments are.
    const promotionPartial = isPartialName(name);
    const hashAlgorithm =
      filetype === "xlog" && !event.partial && !promotionPartial ? this.ctx.config.hash_algorithm : undefined;
    if (filetype === "xlog" && !event.partial && !event.headerVerified) {
      const segment = promotionPartial ? name.slice(0, -".partial".length) : name;
      if (event.inputData) verifyWalHeader(event.inputData, segment);
      else await verifyWalFile(event.fullPath, segment);
    }

    let blob: Buffer | undefined;
    let compressedPath: string | undefined;
    let result: { originalSize: number; storedSize: number; hash?: string };
    if (event.compressToMemory) {
      const encoded = event.inputData
        ? await this.encodeBufferInWorker(event.inputData, { ...opts, hashAlgorithm })
        : await this.ctx.pool.encodeFileToBuffer(event.fullPath, { ...opts, hashAlgorithm });
      blob = encoded.data;
      result = encoded;
    } else {
      compressedPath = path.join(compressedDir(this.ctx.spoolPaths(site), filetype), name);
      if (existsSync(compressedPath)) {
        // The same file arrived twice; wait until the earlier copy is uploaded (upstream re-queues).
        siteLogger(this.log, site).info(`Compressed file ${compressedPath} already exists, retrying after its upload`);
        await sleep(1000);
        this.ctx.compressionQueue.put(event);
        return;
      }
      if (event.inputData) {
        const encoded = await this.encodeBufferInWorker(event.inputData, { ...opts, hashAlgorithm });
        await writeFileAtomic(compressedPath, encoded.data);
        result = encoded;
      } else {
        result = await this.ctx.pool.encodeFile(event.fullPath, compressedPath, { ...opts, hashAlgorithm });
      }
    }

    const siteConfig = this.ctx.site(site);
    const compression = this.ctx.config.compression;
    const metadata: SpoolMetadata = {
      ...(event.metadata ?? {}),
      ...walObjectMetadata({
        pgVersion: siteConfig.pg_version ?? null,
        compression,
        originalSize: result.originalSize,
        host: this.ctx.hostname,
        hash: hashAlgorithm && result.hash ? { algorithm: hashAlgorithm, hexdigest: result.hash } : undefined,
        encryptionKeyId: opts.encryptionKeyId,
      }),
    };
    if (compressedPath) await writeSpoolMetadata(compressedPath, metadata);

    this.recordState(state, site, filetype, result.originalSize, result.storedSize);
    if (result.originalSize) {
      this.ctx.metrics.gauge("pghoard.compressed_size_ratio", result.storedSize / result.originalSize, {
        algorithm: compression.algorithm,
        site,
        type: filetype,
      });
    }
    siteLogger(this.log, site).info(
      `Compressed ${result.originalSize} byte ${filetype} ${name} of site ${site} to ${result.storedSize} bytes` +
        (compressedPath ? ` in ${compressedPath}` : " in memory") +
        `, took ${(Number(process.hrtime.bigint() - started) / 1e9).toFixed(3)}s`,
    );

    const upload: UploadOp = {
      type: "UPLOAD",
      site,
      filetype,
      localPath: compressedPath ?? event.fullPath,
      objectName: event.partial ? `${name}.partial` : undefined,
      blob,
      metadata,
      fileSize: result.storedSize,
      callback: event.callback,
    };
    if (event.deleteFileAfterCompression && !event.inputData) {
      if (filetype === "xlog") await this.walDeleter.add(event.fullPath);
      else await unlink(event.fullPath).catch(() => undefined);
    }
    this.ctx.transferQueue.put(upload);
  }

  private async encodeBufferInWorker(
    data: Buffer,
    opts: EncodeOptions & { hashAlgorithm?: string },
  ): Promise<{ originalSize: number; storedSize: number; hash?: string; data: Buffer }> {
    const stream = this.ctx.pool.createEncodeStream(opts);
    const chunks: Buffer[] = [];
    const done = new Promise<void>((resolve, reject) => {
      stream.on("data", (chunk: Buffer) => chunks.push(chunk));
      stream.on("end", () => resolve());
      stream.on("error", reject);
    });
    stream.end(data);
    await done;
    const result = await stream.result();
    return { ...result, data: Buffer.concat(chunks) };
  }

  private recordState(
    state: CompressorState,
    site: string,
    filetype: WalFileType,
    original: number,
    compressed: number,
  ): void {
    if (!state[site]) {
      const empty = (): CompressorTypeState => ({ original_data: 0, compressed_data: 0, count: 0 });
      state[site] = { basebackup: empty(), xlog: empty(), timeline: empty() };
    }
    const entry = state[site][filetype];
    entry.original_data += original;
    entry.compressed_data += compressed;
    entry.count += 1;
  }
}
