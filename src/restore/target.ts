/**
 * The restore destination: `$PGDATA` plus the tablespace directories, shared by every object
 * extracted in one restore. It owns the safety rules (nothing is written outside these roots,
 * archive symlinks are created only after all data is written so no write can follow one) and
 * the deferred work: symlinks, directory modes and mtimes, and `global/pg_control`, which is
 * written under a temporary name and renamed into place last, so an interrupted restore never
 * leaves a directory PostgreSQL would start from.
 *
 * In delta mode (`--delta`) files are written in place: each batch is compared with what the
 * existing file holds at that offset and only differing batches are written, then the file is
 * cut to the member's length, so identical files cost a read instead of a write. Every path the
 * backup supplies is remembered, so the rest can be pruned afterwards (delta_restore.ts).
 */
import { constants as fsConstants } from "node:fs";
import {
  lstat,
  mkdir,
  open,
  readdir,
  readlink,
  rename,
  rm,
  rmdir,
  symlink,
  chmod,
  utimes,
  type FileHandle,
} from "node:fs/promises";
import path from "node:path";
import type { Readable } from "node:stream";

import { fsyncDirectory } from "../common/fs.js";
import { writeFileDurable, type WriteFileDurable } from "../common/native_addon.js";
import { RestoreError } from "./errors.js";

/** Name `global/pg_control` is written under until the restore has fully succeeded. */
export const PG_CONTROL_INCOMPLETE = "global/pg_control.pghoard_restore_incomplete";
const PG_CONTROL = "global/pg_control";

/** Flush file data to disk in pieces of this size: fewer syscalls, bounded memory. */
const WRITE_BATCH_BYTES = 1024 * 1024;
/** A large file's data is flushed (fdatasync, in the background) every this many bytes. */
const EARLY_FLUSH_BYTES = 64 * 1024 * 1024;
/** Batches of one large file being written at the same time. */
const WRITES_IN_FLIGHT = 4;
/**
 * Tar members up to this size are collected in memory and written in the background, several at
 * a time: a data directory is mostly small files, and creating a file costs several thread-pool
 * round trips (open, write, chmod, utimes, close) that are slow on busy disks when done serially.
 */
export const SMALL_FILE_BYTES = 256 * 1024;
/** Directory fsyncs in flight at the end of a restore (each is a thread-pool round trip). */
const DIRECTORY_SYNCS_IN_FLIGHT = 16;
const WRITE_FLAGS = fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_TRUNC | fsConstants.O_NOFOLLOW;
/** Delta mode: read and write the existing file, keep its content until a batch differs. */
const PATCH_FLAGS = fsConstants.O_RDWR | fsConstants.O_CREAT | fsConstants.O_NOFOLLOW;

export interface TablespaceTarget {
  name: string;
  oid: number;
  /** Absolute directory the tablespace is restored into. */
  path: string;
}

interface DeferredAttributes {
  mode: number;
  mtime: number;
}

function within(root: string, candidate: string): boolean {
  return candidate === root || candidate.startsWith(root.endsWith(path.sep) ? root : root + path.sep);
}

export class RestoreTarget {
  readonly pgdata: string;
  readonly tablespaces: TablespaceTarget[];
  private readonly roots: string[];
  private readonly knownDirs = new Set<string>();
  /** Absolute link path → link target, created by `finish()`. */
  private readonly pendingSymlinks = new Map<string, string>();
  private readonly directoryAttributes = new Map<string, DeferredAttributes>();
  private pgControlWritten = false;
  /** Delta mode: compare with existing files and write only what differs. */
  readonly delta: boolean;
  /** Delta mode: every file and directory path the backup supplied (the rest gets pruned). */
  private readonly produced = new Set<string>();
  /** Delta mode: files whose content had to be written (created, patched or cut) and files kept as they were. */
  private deltaCounts = { written: 0, unchanged: 0 };

  /** Small files in one native call where the addon is built (null: Node's fs; tests compare both). */
  private readonly writeWhole: WriteFileDurable | null;

  constructor(
    pgdata: string,
    tablespaces: TablespaceTarget[] = [],
    options: { delta?: boolean; writeFileDurable?: WriteFileDurable | null } = {},
  ) {
    this.delta = options.delta ?? false;
    this.writeWhole = options.writeFileDurable === undefined ? writeFileDurable : options.writeFileDurable;
    this.pgdata = path.resolve(pgdata);
    this.tablespaces = tablespaces.map((ts) => ({ ...ts, path: path.resolve(ts.path) }));
    this.roots = [this.pgdata, ...this.tablespaces.map((ts) => ts.path)];
    for (const root of this.roots) this.knownDirs.add(root);
  }

  /** The tablespace root a mapped absolute path lies in, if any. */
  private tablespaceRootOf(absolute: string): string | undefined {
    return this.tablespaces.map((ts) => ts.path).find((root) => within(root, absolute));
  }

  /**
   * Resolves a member path that is relative to `$PGDATA` (or absolute inside a tablespace
   * target) to an absolute destination, or throws when it would land anywhere else.
   */
  resolve(memberName: string, context: string): string {
    const isAbsolute = memberName.startsWith("/");
    const parts: string[] = [];
    for (const part of memberName.split("/")) {
      if (part === "" || part === ".") continue;
      if (part === "..") {
        throw new RestoreError(
          `Refusing to extract '${memberName}' from ${context}: '..' in a member name could escape the target directory`,
        );
      }
      parts.push(part);
    }
    let absolute: string;
    if (isAbsolute) {
      absolute = path.resolve("/", ...parts);
      if (!this.tablespaceRootOf(absolute)) {
        throw new RestoreError(
          `Refusing to extract absolute member name '${memberName}' from ${context}: it is outside the target directory and every tablespace directory`,
        );
      }
    } else {
      absolute = path.resolve(this.pgdata, ...parts);
    }
    if (!this.roots.some((root) => within(root, absolute))) {
      throw new RestoreError(
        `Refusing to extract '${memberName}' from ${context}: it resolves outside the target directory`,
      );
    }
    this.checkNoSymlinkAbove(absolute, memberName, context);
    if (absolute === path.join(this.pgdata, PG_CONTROL)) {
      this.pgControlWritten = true;
      return path.join(this.pgdata, PG_CONTROL_INCOMPLETE);
    }
    return absolute;
  }

  private checkNoSymlinkAbove(absolute: string, memberName: string, context: string): void {
    if (this.pendingSymlinks.size === 0) return;
    for (let dir = absolute; ; dir = path.dirname(dir)) {
      if (this.pendingSymlinks.has(dir)) {
        throw new RestoreError(
          `Refusing to extract '${memberName}' from ${context}: its path goes through the symlink '${dir}' from the archive`,
        );
      }
      if (this.roots.includes(dir) || path.dirname(dir) === dir) return;
    }
  }

  /** mkdir -p, remembering what exists so the hot path makes no syscalls. */
  async ensureDirectory(absolute: string): Promise<void> {
    if (this.knownDirs.has(absolute)) return;
    try {
      await mkdir(absolute, { recursive: true, mode: 0o700 });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (!this.delta || (code !== "EEXIST" && code !== "ENOTDIR")) throw err;
      // An old file where the backup has a directory: replace it.
      await this.clearNonDirectories(absolute);
      await mkdir(absolute, { recursive: true, mode: 0o700 });
    }
    for (let dir = absolute; !this.knownDirs.has(dir); dir = path.dirname(dir)) {
      this.knownDirs.add(dir);
      if (this.delta) this.produced.add(dir);
      if (path.dirname(dir) === dir) break;
    }
  }

  /** Delta mode: removes whatever non-directory lies on the way from a root down to `absolute`. */
  private async clearNonDirectories(absolute: string): Promise<void> {
    const root = this.roots.find((r) => within(r, absolute)) ?? this.pgdata;
    let dir = root;
    for (const part of path.relative(root, absolute).split(path.sep)) {
      dir = path.join(dir, part);
      const st = await lstat(dir).catch(() => undefined);
      if (st === undefined) return;
      if (!st.isDirectory()) await rm(dir, { force: true });
    }
  }

  async addDirectory(absolute: string, mode: number | undefined, mtime: number | undefined): Promise<void> {
    await this.ensureDirectory(absolute);
    if (mode !== undefined || mtime !== undefined) {
      this.directoryAttributes.set(absolute, { mode: mode ?? 0o700, mtime: mtime ?? Date.now() / 1000 });
    }
  }

  /** Records an archive symlink after checking its target stays inside the restore roots. */
  addSymlink(absolute: string, linkTarget: string, memberName: string, context: string): void {
    const resolved = path.resolve(path.dirname(absolute), linkTarget);
    if (!this.roots.some((root) => within(root, resolved))) {
      throw new RestoreError(
        `Refusing to create symlink '${memberName}' -> '${linkTarget}' from ${context}: it points outside the target directory`,
      );
    }
    if (this.knownDirs.has(absolute)) {
      throw new RestoreError(
        `Refusing to create symlink '${memberName}' from ${context}: a directory of that name was already restored`,
      );
    }
    this.pendingSymlinks.set(absolute, linkTarget);
  }

  /**
   * Writes a whole file from a stream (tar member or decoded object). Returns the byte count.
   */
  async writeFile(
    absolute: string,
    source: AsyncIterable<Uint8Array> | Readable,
    mode: number,
    mtime?: number,
  ): Promise<number> {
    const { written, completion } = await this.streamFile(absolute, source, mode, mtime);
    await completion;
    return written;
  }

  /**
   * Like writeFile, but resolves as soon as `source` has been read to its end: `completion`
   * settles once the last writes, mode, mtime and fsync are done. A tar extractor can go on
   * decoding the next members while a large file is flushed to disk.
   */
  async streamFile(
    absolute: string,
    source: AsyncIterable<Uint8Array> | Readable,
    mode: number,
    mtime?: number,
  ): Promise<{ written: number; completion: Promise<void> }> {
    if (this.pendingSymlinks.has(absolute)) {
      throw new RestoreError(`Refusing to write '${absolute}': the archive also has a symlink of that name`);
    }
    await this.ensureDirectory(path.dirname(absolute));
    if (this.delta) {
      const written = await this.patchFile(absolute, source as AsyncIterable<Uint8Array>, mode, mtime);
      return { written, completion: Promise.resolve() };
    }
    const handle = await open(absolute, WRITE_FLAGS, 0o600);
    let written = 0;
    // Several positional writes in flight, so the disk works while the next batch is decoded.
    const inFlight = new Set<Promise<void>>();
    let writeError: unknown;
    const track = (work: Promise<void>): void => {
      const tracked = work.then(
        () => {
          inFlight.delete(tracked);
        },
        (err: unknown) => {
          inFlight.delete(tracked);
          writeError ??= err;
        },
      );
      inFlight.add(tracked);
    };
    // Start writeback of a large file while it is still being written, so its final fsync (and
    // the disk) does not wait for everything at the end; one such flush at a time.
    let flushedUpTo = 0;
    let flushing = false;
    const maybeFlushEarly = (): void => {
      if (flushing || written - flushedUpTo < EARLY_FLUSH_BYTES) return;
      flushing = true;
      flushedUpTo = written;
      track(handle.datasync().finally(() => (flushing = false)));
    };
    const complete = async (): Promise<void> => {
      try {
        await Promise.all(inFlight);
        if (writeError) throw writeError;
        await handle.chmod(mode & 0o7777);
        if (mtime !== undefined) await handle.utimes(mtime, mtime);
        await handle.sync();
      } finally {
        await Promise.all(inFlight);
        await handle.close();
      }
    };
    try {
      let batch: Uint8Array[] = [];
      let batchBytes = 0;
      for await (const chunk of source as AsyncIterable<Uint8Array>) {
        batch.push(chunk);
        batchBytes += chunk.byteLength;
        if (batchBytes >= WRITE_BATCH_BYTES) {
          while (inFlight.size >= WRITES_IN_FLIGHT) await Promise.race(inFlight);
          if (writeError) throw writeError;
          track(writeAll(handle, batch, written));
          written += batchBytes;
          batch = [];
          batchBytes = 0;
          maybeFlushEarly();
        }
      }
      if (batchBytes > 0) {
        track(writeAll(handle, batch, written));
        written += batchBytes;
      }
    } catch (err) {
      await Promise.all(inFlight);
      await handle.close();
      throw err;
    }
    return { written, completion: complete() };
  }

  /** Writes a file whose content is already in memory (small tar members, embedded files). */
  async writeChunks(absolute: string, chunks: Uint8Array[], mode: number, mtime?: number): Promise<void> {
    if (this.pendingSymlinks.has(absolute)) {
      throw new RestoreError(`Refusing to write '${absolute}': the archive also has a symlink of that name`);
    }
    await this.ensureDirectory(path.dirname(absolute));
    if (this.delta) {
      await this.patchFile(absolute, chunks, mode, mtime);
      return;
    }
    const fileMode = mode & 0o7777;
    if (this.writeWhole !== null) {
      const data = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
      await this.writeWhole(absolute, data, WRITE_FLAGS, { mode: fileMode !== 0o600 ? fileMode : undefined, mtime });
      return;
    }
    const handle = await open(absolute, WRITE_FLAGS, 0o600);
    try {
      if (chunks.length > 0) await writeAll(handle, chunks);
      if (fileMode !== 0o600) await handle.chmod(fileMode);
      if (mtime !== undefined) await handle.utimes(mtime, mtime);
      await handle.sync();
    } finally {
      await handle.close();
    }
  }

  async writeBuffer(absolute: string, data: Uint8Array, mode = 0o600, mtime?: number): Promise<void> {
    await this.writeChunks(absolute, [data], mode, mtime);
  }

  /**
   * Delta mode: makes the existing file (if any) equal to `source`, writing only the batches that
   * differ, then the length, mode and mtime a fresh restore gives. Returns the byte count.
   */
  private async patchFile(
    absolute: string,
    source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
    mode: number,
    mtime: number | undefined,
  ): Promise<number> {
    let handle: FileHandle;
    try {
      handle = await open(absolute, PATCH_FLAGS, 0o600);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== "EISDIR" && code !== "ELOOP") throw err;
      // An old directory (or symlink) where the backup has a file.
      await rm(absolute, { recursive: true, force: true });
      handle = await open(absolute, PATCH_FLAGS, 0o600);
    }
    this.produced.add(absolute);
    let position = 0;
    try {
      const st = await handle.stat();
      let scratch = Buffer.alloc(0);
      let batch: Uint8Array[] = [];
      let batchBytes = 0;
      let wrote = false;
      const flush = async (): Promise<void> => {
        if (batchBytes === 0) return;
        let same = position + batchBytes <= st.size;
        if (same) {
          if (scratch.byteLength < batchBytes) scratch = Buffer.allocUnsafe(Math.max(batchBytes, WRITE_BATCH_BYTES));
          const { bytesRead } = await handle.read(scratch, 0, batchBytes, position);
          same = bytesRead === batchBytes && sameBytes(batch, scratch);
        }
        if (!same) {
          await writeAll(handle, batch, position);
          wrote = true;
        }
        position += batchBytes;
        batch = [];
        batchBytes = 0;
      };
      for await (const chunk of source) {
        batch.push(chunk);
        batchBytes += chunk.byteLength;
        if (batchBytes >= WRITE_BATCH_BYTES) await flush();
      }
      await flush();
      if (st.size !== position) {
        await handle.truncate(position);
        wrote = true;
      }
      if (wrote) this.deltaCounts.written += 1;
      else this.deltaCounts.unchanged += 1;
      if ((st.mode & 0o7777) !== (mode & 0o7777)) await handle.chmod(mode & 0o7777);
      if (mtime !== undefined) await handle.utimes(mtime, mtime);
      // also when unchanged: an earlier, interrupted run may have left it only in the page cache
      await handle.sync();
    } finally {
      await handle.close();
    }
    return position;
  }

  /**
   * Delta mode: records a file that already has the backup's content (checked by hash) and gives
   * it the mode a fresh restore would.
   */
  async keepFile(absolute: string, mode: number): Promise<void> {
    const st = await lstat(absolute);
    if ((st.mode & 0o7777) !== (mode & 0o7777)) await chmod(absolute, mode & 0o7777);
    await syncPath(absolute, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
    this.produced.add(absolute);
    this.deltaCounts.unchanged += 1;
    await this.ensureDirectory(path.dirname(absolute));
  }

  /** Delta mode: how many files were written and how many already had the backup's content. */
  get deltaStats(): { written: number; unchanged: number } {
    return { ...this.deltaCounts };
  }

  /** Delta mode: true when `absolute` was supplied by the backup (file, directory or symlink). */
  supplies(absolute: string): boolean {
    return this.produced.has(absolute) || this.knownDirs.has(absolute) || this.pendingSymlinks.has(absolute);
  }

  /** Delta mode: true when the archive gave `absolute` a directory mode (else a fresh restore made it 0700). */
  hasDirectoryMode(absolute: string): boolean {
    return this.directoryAttributes.has(absolute);
  }

  /**
   * Completes a successful extraction: archive symlinks, tablespace links in `pg_tblspc`,
   * removal of the leftover `pgdata`/`tablespaces` directories, directory modes and mtimes.
   * `global/pg_control` is published separately by `publishPgControl()` as the very last step.
   */
  async finish(): Promise<void> {
    for (const [absolute, linkTarget] of this.pendingSymlinks) {
      await this.ensureDirectory(path.dirname(absolute));
      try {
        await symlink(linkTarget, absolute);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "EEXIST" && (await sameSymlink(absolute, linkTarget))) continue;
        throw new RestoreError(`Could not create symlink '${absolute}' -> '${linkTarget}': ${(err as Error).message}`);
      }
    }
    if (this.tablespaces.length > 0) {
      const tblspc = path.join(this.pgdata, "pg_tblspc");
      await this.ensureDirectory(tblspc);
      for (const ts of this.tablespaces) {
        const link = path.join(tblspc, String(ts.oid));
        try {
          await symlink(ts.path, link);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === "EEXIST" && (await sameSymlink(link, ts.path))) continue;
          throw new RestoreError(
            `Could not create tablespace link '${link}' -> '${ts.path}': ${(err as Error).message}`,
          );
        }
      }
    }
    // Upstream's tar transforms leave these directories behind; remove them when empty.
    const leftovers = [...this.tablespaces.map((ts) => path.join("tablespaces", ts.name)), "tablespaces", "pgdata"];
    for (const rel of leftovers) {
      await rmdir(path.join(this.pgdata, rel)).catch(() => undefined);
    }
    // Deepest first, so setting a parent's mtime is not undone by changes below it.
    const dirs = [...this.directoryAttributes.entries()].sort((a, b) => b[0].length - a[0].length);
    for (const [dir, attrs] of dirs) {
      try {
        await chmod(dir, attrs.mode & 0o7777);
        await utimes(dir, attrs.mtime, attrs.mtime);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
      }
    }
  }

  /** Deferred work recorded while extracting in another thread, in a structured-clone friendly form. */
  exportDeferred(): {
    symlinks: Array<[string, string]>;
    directories: Array<[string, number, number]>;
    pgControl: boolean;
    produced: string[];
    deltaCounts: { written: number; unchanged: number };
    /** Every directory this thread created or wrote into (fsync'd by `syncDirectories()`). */
    knownDirs: string[];
  } {
    return {
      knownDirs: [...this.knownDirs],
      symlinks: [...this.pendingSymlinks.entries()],
      directories: [...this.directoryAttributes.entries()].map(([dir, a]) => [dir, a.mode, a.mtime]),
      pgControl: this.pgControlWritten,
      produced: [...this.produced],
      deltaCounts: this.deltaCounts,
    };
  }

  /** Takes over what an object worker recorded (see exportDeferred). */
  adoptDeferred(deferred: ReturnType<RestoreTarget["exportDeferred"]>): void {
    for (const [link, linkTarget] of deferred.symlinks) {
      if (this.pendingSymlinks.has(link) && this.pendingSymlinks.get(link) !== linkTarget) {
        throw new RestoreError(`Two objects of the backup have different symlinks '${link}'`);
      }
      this.pendingSymlinks.set(link, linkTarget);
    }
    for (const [dir, mode, mtime] of deferred.directories) {
      this.directoryAttributes.set(dir, { mode, mtime });
      this.knownDirs.add(dir);
    }
    for (const dir of deferred.knownDirs) this.knownDirs.add(dir);
    if (deferred.pgControl) this.pgControlWritten = true;
    for (const produced of deferred.produced) this.produced.add(produced);
    this.deltaCounts.written += deferred.deltaCounts.written;
    this.deltaCounts.unchanged += deferred.deltaCounts.unchanged;
  }

  /** True when the backup supplied `global/pg_control` (every complete backup does). */
  get hasPgControl(): boolean {
    return this.pgControlWritten;
  }

  /**
   * Makes every restored directory entry durable: each directory that was created or written into
   * (and the roots' parents, which may have gained the root) is fsync'd, several at a time. Files
   * are fsync'd as they are written; so after this, and before `publishPgControl()`, everything
   * the restore wrote is on disk (pgBackRest fsyncs likewise), not only in the page cache.
   */
  async syncDirectories(): Promise<void> {
    const dirs = new Set(this.knownDirs);
    for (const link of this.pendingSymlinks.keys()) dirs.add(path.dirname(link));
    const parents = new Set(this.roots.map((root) => path.dirname(root)).filter((p) => !dirs.has(p)));
    const queue = [...dirs].map((dir) => ({ dir, optional: false }));
    for (const dir of parents) queue.push({ dir, optional: true });
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < queue.length) {
        const { dir, optional } = queue[next++];
        try {
          await fsyncDirectory(dir);
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code;
          // A directory removed since (leftover pgdata/, tablespaces/), or a parent we may not open.
          if (code === "ENOENT" || (optional && code === "EACCES")) continue;
          throw err;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(DIRECTORY_SYNCS_IN_FLIGHT, queue.length) }, () => worker()));
  }

  /** Renames the held-back `global/pg_control` into place: from now on the directory is startable. */
  async publishPgControl(): Promise<void> {
    if (!this.pgControlWritten) return;
    const held = path.join(this.pgdata, PG_CONTROL_INCOMPLETE);
    const final = path.join(this.pgdata, PG_CONTROL);
    await syncPath(held, fsConstants.O_RDONLY);
    await rename(held, final);
    await fsyncDirectory(path.dirname(final));
  }
}

async function syncPath(absolute: string, flags: number): Promise<void> {
  const handle = await open(absolute, flags);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Whether the chunks equal the start of `existing` (their total length is known to fit). */
function sameBytes(chunks: Uint8Array[], existing: Buffer): boolean {
  let offset = 0;
  for (const chunk of chunks) {
    if (existing.compare(chunk, 0, chunk.byteLength, offset, offset + chunk.byteLength) !== 0) return false;
    offset += chunk.byteLength;
  }
  return true;
}

function dropBytes(chunks: Uint8Array[], count: number): Uint8Array[] {
  let skip = count;
  const rest: Uint8Array[] = [];
  for (const chunk of chunks) {
    if (skip >= chunk.byteLength) {
      skip -= chunk.byteLength;
      continue;
    }
    rest.push(skip > 0 ? chunk.subarray(skip) : chunk);
    skip = 0;
  }
  return rest;
}

/** Writes all of `chunks` at `position` (or the current offset), retrying short writes. */
async function writeAll(handle: FileHandle, chunks: Uint8Array[], position?: number): Promise<void> {
  let pending = chunks;
  let at = position;
  while (pending.length > 0) {
    const total = pending.reduce((n, c) => n + c.byteLength, 0);
    const { bytesWritten } = await handle.writev(pending, at);
    if (bytesWritten >= total) return;
    pending = dropBytes(pending, bytesWritten);
    if (at !== undefined) at += bytesWritten;
  }
}

async function sameSymlink(link: string, target: string): Promise<boolean> {
  try {
    const st = await lstat(link);
    return st.isSymbolicLink() && (await readlink(link)) === target;
  } catch {
    return false;
  }
}

/** Entries of a directory other than `lost+found` (an ext* mount point counts as empty). */
export async function meaningfulEntries(dir: string): Promise<string[]> {
  const entries = await readdir(dir);
  return entries.filter((e) => e !== "lost+found");
}
