/**
 * Crash-safe file writes: data goes to a temp file in the destination directory, is fsynced,
 * then renamed over the final name and the directory is fsynced. A reader therefore sees
 * either the old file, nothing, or the complete new file — never a half-written one.
 */
import { randomBytes } from "node:crypto";
import { constants as fsConstants } from "node:fs";
import { copyFile, lstat, mkdir, open, rename, rm, stat, unlink, type FileHandle } from "node:fs/promises";
import path from "node:path";
import { Writable } from "node:stream";
import { isErrno } from "./errors.js";

export interface AtomicWriteOptions {
  /** Permission bits of the created file (default 0o644, subject to umask). */
  mode?: number;
  /**
   * Temp file to use instead of the default `.<name>.tmp-<random>`; must be in the same
   * directory as the destination (rename is only atomic within one filesystem).
   */
  tempPath?: string;
  /** Owner to give the file before it is published (root rewriting a file another user owns). */
  owner?: { uid: number; gid: number };
}

/** Default temp name: hidden (leading dot) so directory listings skip it, random so writers don't collide. */
export function defaultTempPath(finalPath: string): string {
  const dir = path.dirname(finalPath);
  return path.join(dir, `.${path.basename(finalPath)}.tmp-${randomBytes(6).toString("hex")}`);
}

/** Makes a completed rename (or create/unlink) in `dir` durable. */
export async function fsyncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY);
  try {
    await handle.sync();
  } catch (err) {
    // Some filesystems (e.g. certain network/overlay mounts) refuse fsync on directories.
    if (!isErrno(err, "EINVAL", "ENOTSUP", "EBADF")) throw err;
  } finally {
    await handle.close();
  }
}

/** fsyncs a file written earlier (by a stream that did not). */
export async function fsyncFile(file: string): Promise<void> {
  const handle = await open(file, "r+");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Whether anything is at `target` (any error counts as "no", like Python's os.path.exists);
 * `noFollow` checks the link itself rather than what it points to (os.path.lexists).
 */
export async function exists(target: string, options: { noFollow?: boolean } = {}): Promise<boolean> {
  try {
    await (options.noFollow ? lstat(target) : stat(target));
    return true;
  } catch {
    return false;
  }
}

export async function mkdirp(dir: string, mode?: number): Promise<void> {
  await mkdir(dir, { recursive: true, mode });
}

/** Removes a file (or, with `recursive`, a directory tree). Returns false when nothing was there. */
export async function removeIfExists(target: string, options: { recursive?: boolean } = {}): Promise<boolean> {
  try {
    if (options.recursive) {
      await rm(target, { recursive: true });
    } else {
      await unlink(target);
    }
    return true;
  } catch (err) {
    if (isErrno(err, "ENOENT")) return false;
    throw err;
  }
}

/** rename(2) followed by fsync of the destination directory (and the source one when different). */
export async function renameAtomic(source: string, destination: string): Promise<void> {
  await rename(source, destination);
  const destinationDir = path.dirname(path.resolve(destination));
  const sourceDir = path.dirname(path.resolve(source));
  await fsyncDirectory(destinationDir);
  if (sourceDir !== destinationDir) await fsyncDirectory(sourceDir);
}

async function syncAndPublish(handle: FileHandle, tempPath: string, finalPath: string): Promise<void> {
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rename(tempPath, finalPath);
  await fsyncDirectory(path.dirname(path.resolve(finalPath)));
}

export async function writeFileAtomic(
  finalPath: string,
  data: string | Uint8Array,
  options: AtomicWriteOptions = {},
): Promise<void> {
  const tempPath = options.tempPath ?? defaultTempPath(finalPath);
  const handle = await open(tempPath, "wx", options.mode ?? 0o644);
  try {
    await handle.writeFile(data);
    if (options.owner) await handle.chown(options.owner.uid, options.owner.gid);
    await syncAndPublish(handle, tempPath, finalPath);
  } catch (err) {
    await handle.close().catch(() => undefined);
    await removeIfExists(tempPath).catch(() => undefined);
    throw err;
  }
}

/** Copies `source` to `destination` so that `destination` appears only complete. */
export async function copyFileAtomic(
  source: string,
  destination: string,
  options: AtomicWriteOptions = {},
): Promise<void> {
  const tempPath = options.tempPath ?? defaultTempPath(destination);
  try {
    await copyFile(source, tempPath, fsConstants.COPYFILE_EXCL);
    const handle = await open(tempPath, "r+");
    if (options.mode !== undefined) await handle.chmod(options.mode);
    await syncAndPublish(handle, tempPath, destination);
  } catch (err) {
    await removeIfExists(tempPath).catch(() => undefined);
    throw err;
  }
}

/**
 * A Writable whose bytes land in a temp file. Nothing appears under `finalPath` until
 * `commit()` (which ends the stream if needed, fsyncs and renames). `abort()` — or the stream
 * being destroyed, e.g. by `pipeline()` when the source fails — removes the temp file.
 */
export class AtomicWriteStream extends Writable {
  readonly finalPath: string;
  readonly tempPath: string;
  private readonly mode: number;
  private handle: FileHandle | undefined;
  private state: "open" | "committing" | "committed" | "aborted" = "open";
  /** Bytes written so far. */
  bytesWritten = 0;

  constructor(finalPath: string, options: AtomicWriteOptions = {}) {
    super({ highWaterMark: 1024 * 1024 });
    this.finalPath = finalPath;
    this.tempPath = options.tempPath ?? defaultTempPath(finalPath);
    this.mode = options.mode ?? 0o644;
  }

  override _construct(callback: (error?: Error | null) => void): void {
    open(this.tempPath, "wx", this.mode).then(
      (handle) => {
        this.handle = handle;
        callback();
      },
      (err: Error) => callback(err),
    );
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.writeAll([chunk]).then(() => callback(), callback);
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, callback: (error?: Error | null) => void): void {
    this.writeAll(chunks.map((c) => c.chunk)).then(() => callback(), callback);
  }

  private async writeAll(buffers: Buffer[]): Promise<void> {
    const handle = this.handle;
    if (!handle) throw new Error("atomic write stream is not open");
    // writev may write partially; loop until everything is on disk.
    let pending = buffers.filter((b) => b.length > 0);
    while (pending.length > 0) {
      const { bytesWritten } = await handle.writev(pending);
      this.bytesWritten += bytesWritten;
      let remaining = bytesWritten;
      const next: Buffer[] = [];
      for (const buf of pending) {
        if (remaining >= buf.length) {
          remaining -= buf.length;
        } else {
          next.push(remaining > 0 ? buf.subarray(remaining) : buf);
          remaining = 0;
        }
      }
      pending = next;
    }
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    // After a clean finish (autoDestroy) the temp file is kept for commit(); anything else aborts.
    if (this.state !== "open" || (!error && this.writableFinished)) {
      callback(error);
      return;
    }
    this.discard().then(
      () => callback(error),
      () => callback(error),
    );
  }

  private async discard(): Promise<void> {
    this.state = "aborted";
    const handle = this.handle;
    this.handle = undefined;
    if (handle) await handle.close().catch(() => undefined);
    await removeIfExists(this.tempPath).catch(() => undefined);
  }

  /** Ends the stream (if not yet ended), fsyncs and publishes the file under `finalPath`. */
  async commit(): Promise<void> {
    if (this.state !== "open") throw new Error(`cannot commit ${this.finalPath}: stream is ${this.state}`);
    if (this.errored) throw this.errored;
    await new Promise<void>((resolve, reject) => {
      if (this.writableFinished) {
        resolve();
        return;
      }
      if (this.destroyed) {
        reject(new Error(`cannot commit ${this.finalPath}: stream was destroyed`));
        return;
      }
      const cleanup = (): void => {
        this.off("finish", onFinish);
        this.off("error", onError);
        this.off("close", onClose);
      };
      const onFinish = (): void => {
        cleanup();
        resolve();
      };
      const onError = (err: Error): void => {
        cleanup();
        reject(err);
      };
      const onClose = (): void => {
        cleanup();
        reject(new Error(`cannot commit ${this.finalPath}: stream was destroyed`));
      };
      this.once("finish", onFinish);
      this.once("error", onError);
      this.once("close", onClose);
      if (!this.writableEnded) this.end();
    });
    if (this.state !== "open" || !this.handle) throw new Error(`cannot commit ${this.finalPath}: stream was aborted`);
    this.state = "committing";
    const handle = this.handle;
    this.handle = undefined;
    try {
      await syncAndPublish(handle, this.tempPath, this.finalPath);
      this.state = "committed";
    } catch (err) {
      this.state = "aborted";
      await removeIfExists(this.tempPath).catch(() => undefined);
      throw err;
    }
  }

  /** Discards everything written; nothing is left on disk. Safe to call repeatedly. */
  async abort(): Promise<void> {
    if (this.state === "committed" || this.state === "committing") {
      throw new Error(`cannot abort ${this.finalPath}: already ${this.state}`);
    }
    if (!this.closed) {
      const closed = new Promise<void>((resolve) => this.once("close", () => resolve()));
      this.destroy();
      await closed;
    }
    // Also covers a stream that finished cleanly and was waiting for commit().
    await this.discard();
  }
}

export function createAtomicWriteStream(finalPath: string, options: AtomicWriteOptions = {}): AtomicWriteStream {
  return new AtomicWriteStream(finalPath, options);
}

export interface AtomicFileWrite {
  finalPath: string;
  data: string | Uint8Array;
  /** Temp file in the destination directory (default `.<name>.tmp-<random>`). */
  tempPath?: string;
}

/**
 * Several files published together, in the given order, each appearing only complete: every temp
 * file is written and fsync'd (all at once), then renamed in order, then each directory is fsync'd
 * once. Two files in one directory cost 3 fsyncs (2 of them in parallel) instead of 4 in a row
 * with writeFileAtomic; the directory fsync at the end makes all the renames durable together.
 * A crash before it may leave any prefix of the renames (readers must treat a later file
 * without an earlier one as absent, as the local store treats a sidecar without its data file).
 */
export async function writeFilesAtomic(files: AtomicFileWrite[]): Promise<void> {
  const temps = files.map((f) => f.tempPath ?? defaultTempPath(f.finalPath));
  const created: string[] = [];
  try {
    // allSettled: on a failure, wait for the other writes before removing their temp files.
    const written = await Promise.allSettled(
      files.map(async (file, i) => {
        const handle = await open(temps[i], "wx", 0o644);
        created.push(temps[i]);
        try {
          await handle.writeFile(file.data);
          await handle.sync();
        } finally {
          await handle.close();
        }
      }),
    );
    for (const outcome of written) if (outcome.status === "rejected") throw outcome.reason;
    for (let i = 0; i < files.length; i++) {
      await rename(temps[i], files[i].finalPath);
      created.splice(created.indexOf(temps[i]), 1);
    }
  } catch (err) {
    await Promise.all(created.map((t) => removeIfExists(t).catch(() => undefined)));
    throw err;
  }
  const dirs = new Set(files.map((f) => path.dirname(path.resolve(f.finalPath))));
  await Promise.all([...dirs].map((dir) => fsyncDirectory(dir)));
}
