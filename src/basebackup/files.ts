/**
 * Which files a local-tar/delta backup reads (upstream `find_files_to_backup`), how local-tar
 * splits them into chunks (`find_and_split_files_to_backup`), and writing one chunk's tar.
 */
import {
  closeSync,
  constants as fsConstants,
  fstatSync,
  lstatSync,
  openSync,
  read,
  readFileSync,
  readlinkSync,
  readSync,
} from "node:fs";
import { lstat, readdir } from "node:fs/promises";
import path from "node:path";
import type { TablespaceInfo } from "../catalog/index.js";
import { isErrno } from "../common/errors.js";
import { EMPTY_DIRS } from "./control.js";
import { TarBuffer, type FileReader } from "./tar.js";

/** Files up to this size are read synchronously (a few hundred microseconds at most from cache). */
const SYNC_READ_LIMIT = 256 * 1024;

function readAsync(fd: number, buf: Buffer, offset: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) =>
    read(fd, buf, offset, length, position, (err, n) => (err ? reject(err) : resolve(n))),
  );
}

export interface WalkItem {
  archivePath: string;
  localPath: string;
  missingOk: boolean;
  op: "add" | "enter" | "leave";
  /** lstat size at walk time (used only to split chunks). */
  size: number;
}

export interface ChunkEntry {
  archivePath: string;
  localPath: string;
  missingOk: boolean;
}

/** Top-level $PGDATA names never copied (runtime files, temp files, directories recreated empty). */
export function isExcludedTopLevel(name: string): boolean {
  return (
    EMPTY_DIRS.includes(name) ||
    name === "postmaster.opts" ||
    name === "postmaster.pid" ||
    name === "backup_label" ||
    name === "tablespace_map" ||
    name.endsWith(".old") ||
    name.endsWith(".tmp") ||
    name.endsWith("~") ||
    name.startsWith(".s.") ||
    name.startsWith("pgsql_tmp")
  );
}

type Logger = { warn(msg: string): void };

async function* addEntry(
  archivePath: string,
  localPath: string,
  missingOk: boolean,
  log: Logger,
): AsyncGenerator<WalkItem> {
  let st;
  try {
    st = await lstat(localPath);
  } catch (err) {
    if (missingOk && isErrno(err, "ENOENT")) {
      log.warn(`File ${localPath} went away while scanning, ignoring`);
      return;
    }
    throw err;
  }
  if (st.isFile() || st.isSymbolicLink()) {
    yield { archivePath, localPath, missingOk, op: "add", size: st.size };
  } else if (st.isDirectory()) {
    yield { archivePath, localPath, missingOk, op: "enter", size: st.size };
    // below the top level everything may vanish (dropped relations, finished temp files)
    yield* addDirectory(archivePath, localPath, true, log);
    yield { archivePath, localPath, missingOk, op: "leave", size: 0 };
  } else {
    log.warn(`File ${localPath} is not a directory, file or symlink, ignoring`);
  }
}

async function* addDirectory(
  archiveParent: string,
  localParent: string,
  missingOk: boolean,
  log: Logger,
): AsyncGenerator<WalkItem> {
  let names: string[];
  try {
    names = await readdir(localParent);
  } catch (err) {
    if (missingOk && isErrno(err, "ENOENT")) {
      log.warn(`Directory ${localParent} went away while scanning, ignoring`);
      return;
    }
    throw err;
  }
  names.sort();
  for (const name of names) {
    // the newest pg_control is taken after all data files; temp files are never needed
    if (name === "pg_control" || name.startsWith("pgsql_tmp")) continue;
    yield* addEntry(`${archiveParent}/${name}`, path.join(localParent, name), missingOk, log);
  }
}

/** Walks $PGDATA (directory order at the top level, sorted below) and every tablespace. */
export async function* findFilesToBackup(
  pgdata: string,
  tablespaces: Record<string, TablespaceInfo>,
  log: Logger,
): AsyncGenerator<WalkItem> {
  for (const name of await readdir(pgdata)) {
    if (isExcludedTopLevel(name)) continue;
    yield* addEntry(`pgdata/${name}`, path.join(pgdata, name), false, log);
  }
  for (const [spcname, info] of Object.entries(tablespaces)) {
    const archivePath = `tablespaces/${spcname}`;
    const st = await lstat(info.path);
    yield { archivePath, localPath: info.path, missingOk: false, op: "enter", size: st.size };
    yield* addDirectory(archivePath, info.path, false, log);
    yield { archivePath, localPath: info.path, missingOk: false, op: "leave", size: 0 };
  }
}

/**
 * Splits the walk into chunks: a new chunk starts when the current one holds more than 20 % of
 * `targetChunkSize` and the next entry would exceed it; it begins with the still-open directories.
 */
export async function splitFilesToChunks(
  items: AsyncIterable<WalkItem>,
  targetChunkSize: number,
): Promise<{ totalFileCount: number; chunks: ChunkEntry[][] }> {
  const chunks: ChunkEntry[][] = [];
  let current: ChunkEntry[] = [];
  let currentSize = 0;
  const openDirs: ChunkEntry[] = [];
  let totalFileCount = 0;
  for await (const item of items) {
    if (item.op === "leave") {
      openDirs.pop();
      continue;
    }
    if (currentSize > targetChunkSize / 5 && currentSize + item.size > targetChunkSize) {
      chunks.push(current);
      currentSize = 0;
      current = openDirs.slice();
    }
    totalFileCount += 1;
    currentSize += item.size;
    const entry = { archivePath: item.archivePath, localPath: item.localPath, missingOk: item.missingOk };
    if (item.op === "enter") openDirs.push(entry);
    current.push(entry);
  }
  chunks.push(current);
  return { totalFileCount, chunks };
}

let idNames: { users: Map<number, string>; groups: Map<number, string> } | undefined;

/** uid/gid → name from /etc/passwd and /etc/group (what Python's tarfile stores as uname/gname). */
function ownerNames(): { users: Map<number, string>; groups: Map<number, string> } {
  if (idNames) return idNames;
  const parse = (file: string): Map<number, string> => {
    const map = new Map<number, string>();
    try {
      for (const line of readFileSync(file, "utf8").split("\n")) {
        const parts = line.split(":");
        if (parts.length >= 3 && /^\d+$/.test(parts[2]) && !map.has(Number(parts[2])))
          map.set(Number(parts[2]), parts[0]);
      }
    } catch {
      // no such database: names stay empty, numeric ids still go into the header
    }
    return map;
  };
  idNames = { users: parse("/etc/passwd"), groups: parse("/etc/group") };
  return idNames;
}

export interface TarChunkStats {
  /** Archive paths actually written. */
  files: string[];
  /** Files skipped because they vanished. */
  vanished: number;
  /** Bytes read from data files (for progress). */
  dataBytes: number;
}

export interface TarChunkOptions {
  /** Called for every regular file written: archive path, bytes as read, total size in the header. */
  onFile?: (archivePath: string, size: number) => ((data: Buffer) => void) | undefined;
  onFileDone?: (archivePath: string, size: number) => void;
  onProgress?: (bytes: number) => void;
  log: Logger;
  /** Throws to abort (e.g. the database session died). */
  checkAlive?: () => void;
  bufferSize?: number;
  /** Supplies output buffers of `bufferSize` bytes (for recycling). */
  allocate?: (size: number) => Buffer;
}

/**
 * Produces the tar stream of one chunk as large buffers. Files are opened before their header is
 * written so a vanished file is skipped cleanly; the header carries the size from fstat of the
 * open descriptor and exactly that many bytes follow.
 */
export async function* tarChunk(
  entries: readonly ChunkEntry[],
  opts: TarChunkOptions,
  stats: TarChunkStats,
): AsyncGenerator<Buffer> {
  const tar = new TarBuffer(opts.bufferSize ?? 1024 * 1024, opts.allocate);
  const names = ownerNames();
  for (const entry of entries) {
    opts.checkAlive?.();
    try {
      const st = lstatSync(entry.localPath);
      const common = {
        name: entry.archivePath,
        mode: st.mode & 0o7777,
        uid: st.uid,
        gid: st.gid,
        mtime: Math.floor(st.mtimeMs / 1000),
        uname: names.users.get(st.uid),
        gname: names.groups.get(st.gid),
      };
      if (st.isDirectory()) {
        tar.addEntry({ ...common, type: "directory" });
      } else if (st.isSymbolicLink()) {
        tar.addEntry({ ...common, type: "symlink", linkname: readlinkSync(entry.localPath) });
      } else if (st.isFile()) {
        // metadata calls and small files synchronously (page-cache speed, no thread-pool round
        // trips per file); big files are read asynchronously so the event loop stays responsive
        const fd = openSync(entry.localPath, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
        try {
          const fst = fstatSync(fd);
          const size = fst.size;
          tar.addEntry({
            ...common,
            type: "file",
            size,
            mode: fst.mode & 0o7777,
            mtime: Math.floor(fst.mtimeMs / 1000),
          });
          const onData = opts.onFile?.(entry.archivePath, size);
          const reader: FileReader =
            size <= SYNC_READ_LIMIT
              ? (buf, off, len, pos) => readSync(fd, buf, off, len, pos)
              : (buf, off, len, pos) => readAsync(fd, buf, off, len, pos);
          yield* tar.fileData(reader, size, onData);
          opts.onFileDone?.(entry.archivePath, size);
          stats.dataBytes += size;
          opts.onProgress?.(size);
        } finally {
          closeSync(fd);
        }
      } else {
        opts.log.warn(`File ${entry.localPath} is not a directory, file or symlink, ignoring`);
        continue;
      }
      stats.files.push(entry.archivePath);
    } catch (err) {
      if (entry.missingOk && (isErrno(err, "ENOENT") || isErrno(err, "ENOTDIR"))) {
        opts.log.warn(`File ${entry.localPath} went away while writing to tar, ignoring`);
        stats.vanished += 1;
        continue;
      }
      throw err;
    }
    for (const buf of tar.takeFull()) yield buf;
  }
  for (const buf of tar.finish()) yield buf;
}
