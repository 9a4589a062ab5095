/**
 * The `local` backend: a directory tree laid out exactly like rohmu's LocalTransfer, so stores
 * written by upstream pghoard are readable here and vice versa.
 *
 * An object `<key>` is the file `<directory>/<prefix>/<key>` plus a JSON sidecar
 * `<file>.metadata`. The data file is written first (atomically, via a hidden
 * `.concurrent_upload_*` temp file), then the sidecar (atomically, via `*.metadata_tmp`): the
 * sidecar's appearance publishes the object, and a file without one is invisible.
 */
import { createHash, randomBytes } from "node:crypto";
import { lstat, open, readdir, readFile, rm, rmdir, stat, unlink } from "node:fs/promises";
import path from "node:path";
import { Transform, type Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { isErrno } from "../common/errors.js";
import {
  copyFileAtomic,
  createAtomicWriteStream,
  exists,
  mkdirp,
  removeIfExists,
  writeFileAtomic,
  writeFilesAtomic,
} from "../common/fs.js";
import { ErrorFactory } from "./errors.js";
import { mapLimit, sanitizeMetadata } from "./shared.js";
import {
  StorageError,
  StorageNotFoundError,
  type ListOptions,
  type Metadata,
  type StorageBackend,
  type StoredObject,
} from "./types.js";

export interface LocalStorageConfig {
  storage_type?: string;
  /** Root of the store (`object_storage.directory`). */
  directory: string;
  /** Backend prefix (`object_storage.prefix`), joined below `directory`. */
  prefix?: string | null;
  [key: string]: unknown;
}

/** Sidecar key holding the SHA-256 of the stored bytes; hidden from callers, shown as `md5` in listings. */
export const HASH_METADATA_KEY = "_hash";
const SIDECAR_SUFFIX = ".metadata";
const LIST_CONCURRENCY = 32;

const DATA_TEMP_PREFIX = ".concurrent_upload_";
const SIDECAR_TEMP_SUFFIX = ".metadata_tmp";

/** Names rohmu's listing ignores (`_skip_file_name`): temp files, sidecars, hidden entries. */
export function isSkippedName(name: string): boolean {
  return name.startsWith(".") || name.endsWith(SIDECAR_SUFFIX) || name.includes(SIDECAR_TEMP_SUFFIX);
}

function pythonJsonString(value: string): string {
  // Python's json.dump escapes everything outside printable ASCII (ensure_ascii=True).
  return JSON.stringify(value).replace(
    /[\u007f-\uffff]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}

/** Sidecar bytes as Python's `json.dump(metadata, fp)` writes them: `{"k": "v", "k2": "v2"}`. */
export function encodeSidecar(metadata: Metadata): string {
  const fields = Object.entries(metadata).map(([k, v]) => `${pythonJsonString(k)}: ${pythonJsonString(v)}`);
  return `{${fields.join(", ")}}`;
}

/** Parses a sidecar; values are returned as strings (upstream only ever writes strings). */
export function decodeSidecar(text: string): Metadata {
  const parsed: unknown = JSON.parse(text);
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    throw new Error("metadata sidecar is not a JSON object");
  }
  const out: Metadata = {};
  for (const [k, v] of Object.entries(parsed as Record<string, unknown>)) {
    if (v === null || v === undefined) continue;
    out[k] = typeof v === "string" ? v : typeof v === "object" ? JSON.stringify(v) : String(v);
  }
  return out;
}

function withoutInternalKeys(raw: Metadata): Metadata {
  const { [HASH_METADATA_KEY]: _hash, ...rest } = raw;
  return rest;
}

/** Local errors carry no configured secrets; their messages keep the filesystem's wording. */
const errors = new ErrorFactory("local", []);

function randomSuffix(): string {
  return randomBytes(8).toString("hex");
}

export class LocalStorage implements StorageBackend {
  readonly storageType = "local";
  /** `<directory>/<prefix>`: every key resolves below this directory. */
  readonly root: string;

  constructor(config: LocalStorageConfig) {
    if (typeof config.directory !== "string" || config.directory === "") {
      throw new StorageError("local storage requires 'directory'");
    }
    const prefix = (config.prefix ?? "").replace(/^\/+|\/+$/g, "");
    this.root = path.resolve(config.directory, prefix);
  }

  /** Validated key components. Keys are relative: no absolute paths, no `.`/`..`, no NUL. */
  private keyParts(key: string, { forWrite = false, allowEmpty = false } = {}): string[] {
    if (typeof key !== "string") throw new StorageError(`invalid key ${String(key)}`);
    if (key.includes("\0")) throw new StorageError(`invalid key ${JSON.stringify(key)}: contains NUL`);
    if (key.startsWith("/"))
      throw new StorageError(`invalid key ${JSON.stringify(key)}: absolute keys are not allowed`);
    const parts = key.split("/").filter((p) => p !== "");
    for (const part of parts) {
      if (part === "." || part === "..") {
        throw new StorageError(`invalid key ${JSON.stringify(key)}: '.' and '..' components are not allowed`);
      }
      // Such names would collide with sidecars/temp files or be hidden from listings.
      if (forWrite && isSkippedName(part)) {
        throw new StorageError(`invalid key ${JSON.stringify(key)}: component ${JSON.stringify(part)} is reserved`);
      }
    }
    if (parts.length === 0 && !allowEmpty) throw new StorageError(`invalid key ${JSON.stringify(key)}: empty`);
    return parts;
  }

  /** Filesystem path of the object stored under `key`. */
  objectPath(key: string, forWrite = false): string {
    return path.join(this.root, ...this.keyParts(key, { forWrite }));
  }

  private async readRawMetadata(key: string, objectPath: string): Promise<Metadata> {
    let text: string;
    try {
      text = await readFile(objectPath + SIDECAR_SUFFIX, "utf8");
    } catch (err) {
      if (isErrno(err, "ENOENT", "ENOTDIR")) throw new StorageNotFoundError(key);
      throw errors.because(`reading metadata of ${key} failed`, err);
    }
    try {
      return decodeSidecar(text);
    } catch (err) {
      throw errors.because(`metadata of ${key} is not valid JSON`, err);
    }
  }

  /** Raw sidecar of a visible object (data file and sidecar both present). */
  private async visibleObject(key: string): Promise<{ objectPath: string; raw: Metadata }> {
    const objectPath = this.objectPath(key);
    const raw = await this.readRawMetadata(key, objectPath);
    try {
      const st = await stat(objectPath);
      if (!st.isFile()) throw new StorageNotFoundError(key);
    } catch (err) {
      if (err instanceof StorageError) throw err;
      if (isErrno(err, "ENOENT", "ENOTDIR")) throw new StorageNotFoundError(key);
      throw err;
    }
    return { objectPath, raw };
  }

  private async writeSidecar(objectPath: string, raw: Metadata): Promise<void> {
    const sidecar = objectPath + SIDECAR_SUFFIX;
    await writeFileAtomic(sidecar, encodeSidecar(raw), {
      tempPath: `${sidecar}${randomSuffix()}${SIDECAR_TEMP_SUFFIX}`,
    });
  }

  private dataTempPath(objectPath: string): string {
    return path.join(path.dirname(objectPath), `${DATA_TEMP_PREFIX}${randomSuffix()}`);
  }

  private async prepareWrite(key: string): Promise<string> {
    const objectPath = this.objectPath(key, true);
    try {
      await mkdirp(path.dirname(objectPath));
    } catch (err) {
      throw errors.because(`cannot create directory for ${key}`, err);
    }
    return objectPath;
  }

  async storeFileFromMemory(key: string, data: Buffer, metadata: Metadata): Promise<void> {
    const objectPath = await this.prepareWrite(key);
    const hash = createHash("sha256").update(data).digest("hex");
    // Data before sidecar (the sidecar publishes the object), made durable together: 3 fsyncs.
    const sidecar = objectPath + SIDECAR_SUFFIX;
    await writeFilesAtomic([
      { finalPath: objectPath, data, tempPath: this.dataTempPath(objectPath) },
      {
        finalPath: sidecar,
        data: encodeSidecar({ ...sanitizeMetadata(metadata), [HASH_METADATA_KEY]: hash }),
        tempPath: `${sidecar}${randomSuffix()}${SIDECAR_TEMP_SUFFIX}`,
      },
    ]);
  }

  async storeFileFromDisk(key: string, filePath: string, metadata: Metadata): Promise<void> {
    // Opened first so a missing source fails before anything is created in the store.
    const handle = await open(filePath, "r");
    await this.storeFileObject(key, handle.createReadStream(), metadata);
  }

  async storeFileObject(key: string, source: Readable, metadata: Metadata): Promise<void> {
    let objectPath: string;
    try {
      objectPath = await this.prepareWrite(key);
    } catch (err) {
      source.destroy();
      throw err;
    }
    const hash = createHash("sha256");
    const hashing = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        hash.update(chunk);
        callback(null, chunk);
      },
    });
    const out = createAtomicWriteStream(objectPath, { tempPath: this.dataTempPath(objectPath) });
    try {
      await pipeline(source, hashing, out);
      await out.commit();
    } catch (err) {
      await out.abort().catch(() => undefined);
      throw err;
    }
    await this.writeSidecar(objectPath, { ...sanitizeMetadata(metadata), [HASH_METADATA_KEY]: hash.digest("hex") });
  }

  async getMetadataForKey(key: string): Promise<Metadata> {
    return withoutInternalKeys((await this.visibleObject(key)).raw);
  }

  async getContentsToMemory(key: string): Promise<{ data: Buffer; metadata: Metadata }> {
    const { objectPath, raw } = await this.visibleObject(key);
    try {
      return { data: await readFile(objectPath), metadata: withoutInternalKeys(raw) };
    } catch (err) {
      if (isErrno(err, "ENOENT")) throw new StorageNotFoundError(key);
      throw errors.because(`reading ${key} failed`, err);
    }
  }

  async getContentsToFile(key: string, filePath: string): Promise<Metadata> {
    const { objectPath, raw } = await this.visibleObject(key);
    try {
      await copyFileAtomic(objectPath, filePath);
    } catch (err) {
      if (isErrno(err, "ENOENT") && !(await exists(objectPath))) throw new StorageNotFoundError(key);
      throw errors.because(`downloading ${key} to ${filePath} failed`, err);
    }
    return withoutInternalKeys(raw);
  }

  async getReadStream(key: string): Promise<{ stream: Readable; metadata: Metadata; size: number }> {
    const { objectPath, raw } = await this.visibleObject(key);
    let handle;
    try {
      handle = await open(objectPath, "r");
    } catch (err) {
      if (isErrno(err, "ENOENT")) throw new StorageNotFoundError(key);
      throw errors.because(`opening ${key} failed`, err);
    }
    let size: number;
    try {
      size = (await handle.stat()).size;
    } catch (err) {
      await handle.close();
      throw errors.because(`reading ${key} failed`, err);
    }
    // 1 MiB reads: a 64 KiB default costs a thread-pool round trip per 64 KiB of a multi-GB chunk.
    return {
      stream: handle.createReadStream({ highWaterMark: 1024 * 1024 }),
      metadata: withoutInternalKeys(raw),
      size,
    };
  }

  async list(prefix: string, options: ListOptions = {}): Promise<StoredObject[]> {
    const parts = this.keyParts(prefix, { allowEmpty: true });
    const objects: StoredObject[] = [];
    await this.listInto(objects, parts, options.recursive ?? false);
    return objects.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  private async listInto(objects: StoredObject[], parts: string[], recursive: boolean): Promise<void> {
    const dir = path.join(this.root, ...parts);
    let entries;
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch (err) {
      if (isErrno(err, "ENOENT", "ENOTDIR")) return;
      throw errors.because(`listing ${parts.join("/") || "/"} failed`, err);
    }
    const visible = entries.filter((e) => !isSkippedName(e.name));
    const subdirs: string[] = [];
    const found = await mapLimit(visible, LIST_CONCURRENCY, async (entry): Promise<StoredObject | null> => {
      const fullPath = path.join(dir, entry.name);
      let isDir = entry.isDirectory();
      if (entry.isSymbolicLink())
        isDir = await stat(fullPath).then(
          (s) => s.isDirectory(),
          () => false,
        );
      if (isDir) {
        subdirs.push(entry.name);
        return null;
      }
      return await this.describeObject([...parts, entry.name].join("/"), fullPath);
    });
    for (const object of found) if (object) objects.push(object);
    if (recursive) {
      for (const name of subdirs) await this.listInto(objects, [...parts, name], true);
    }
  }

  /** The listing entry of one file, or null when it is not (or no longer) a published object. */
  private async describeObject(key: string, fullPath: string): Promise<StoredObject | null> {
    let raw: Metadata;
    try {
      raw = await this.readRawMetadata(key, fullPath);
    } catch (err) {
      if (err instanceof StorageNotFoundError) return null;
      throw err;
    }
    let st;
    try {
      st = await stat(fullPath);
    } catch (err) {
      if (isErrno(err, "ENOENT")) return null; // deleted while listing
      throw err;
    }
    if (!st.isFile()) return null;
    const object: StoredObject = {
      name: key,
      size: st.size,
      lastModified: st.mtime,
      metadata: withoutInternalKeys(raw),
    };
    const hash = raw[HASH_METADATA_KEY];
    if (hash) object.md5 = hash;
    return object;
  }

  async deleteKey(key: string): Promise<void> {
    const objectPath = this.objectPath(key);
    // The sidecar goes first: the object disappears at once even if the data unlink fails.
    await removeIfExists(objectPath + SIDECAR_SUFFIX).catch((err: unknown) => {
      if (!isErrno(err, "ENOTDIR")) throw err;
    });
    try {
      const st = await lstat(objectPath);
      if (st.isDirectory()) throw new StorageNotFoundError(key);
      await unlink(objectPath);
    } catch (err) {
      if (err instanceof StorageError) throw err;
      if (isErrno(err, "ENOENT", "ENOTDIR")) throw new StorageNotFoundError(key);
      throw errors.because(`deleting ${key} failed`, err);
    }
  }

  async deleteTree(prefix: string): Promise<void> {
    const parts = this.keyParts(prefix, { allowEmpty: true });
    const dir = path.join(this.root, ...parts);
    try {
      // Only directories: a key naming a single object is not a tree (and would lose just its data).
      if (!(await lstat(dir)).isDirectory()) return;
      if (parts.length > 0) {
        await rm(dir, { recursive: true, force: true });
      } else {
        // The whole store below the backend prefix: empty the root but keep it (it may be a mount point).
        for (const name of await readdir(dir)) await rm(path.join(dir, name), { recursive: true, force: true });
      }
    } catch (err) {
      if (isErrno(err, "ENOENT", "ENOTDIR")) return;
      throw errors.because(`deleting tree ${prefix} failed`, err);
    }
  }

  async copyFile(sourceKey: string, destinationKey: string, metadata?: Metadata): Promise<void> {
    const { objectPath: sourcePath, raw } = await this.visibleObject(sourceKey);
    const destinationPath = await this.prepareWrite(destinationKey);
    try {
      await copyFileAtomic(sourcePath, destinationPath, { tempPath: this.dataTempPath(destinationPath) });
    } catch (err) {
      if (isErrno(err, "ENOENT") && !(await exists(sourcePath))) throw new StorageNotFoundError(sourceKey);
      throw errors.because(`copying ${sourceKey} to ${destinationKey} failed`, err);
    }
    // Like rohmu: new metadata replaces the caller-visible keys, the content hash carries over.
    const hash = raw[HASH_METADATA_KEY];
    const newRaw =
      metadata === undefined ? raw : { ...sanitizeMetadata(metadata), ...(hash ? { [HASH_METADATA_KEY]: hash } : {}) };
    await this.writeSidecar(destinationPath, newRaw);
  }

  async removeInterruptedWrites(prefix: string, olderThan: Date): Promise<string[]> {
    const removed: string[] = [];
    const walk = async (parts: string[]): Promise<void> => {
      let entries;
      try {
        entries = await readdir(path.join(this.root, ...parts), { withFileTypes: true });
      } catch (err) {
        if (isErrno(err, "ENOENT", "ENOTDIR")) return;
        throw errors.because(`listing ${parts.join("/") || "/"} failed`, err);
      }
      let removedHere = false;
      for (const entry of entries) {
        const full = path.join(this.root, ...parts, entry.name);
        if (entry.isDirectory()) {
          await walk([...parts, entry.name]);
          continue;
        }
        if (!entry.name.startsWith(DATA_TEMP_PREFIX) && !entry.name.endsWith(SIDECAR_TEMP_SUFFIX)) continue;
        const st = await lstat(full).catch(() => null);
        if (!st || st.mtimeMs >= olderThan.getTime()) continue;
        if (await removeIfExists(full)) {
          removed.push([...parts, entry.name].join("/"));
          removedHere = true;
        }
      }
      // A directory that held nothing but leftovers (a chunk directory of an interrupted backup) goes
      // too; the prefix's own type directories (`<prefix>/xlog`) stay.
      if (removedHere && parts.length > top.length + 1) {
        await rmdir(path.join(this.root, ...parts)).catch(() => undefined);
      }
    };
    const top = this.keyParts(prefix, { allowEmpty: true });
    await walk(top);
    return removed;
  }

  async removeUnpublishedObjects(
    prefix: string,
    olderThan: Date,
    accept: (name: string) => boolean,
  ): Promise<Array<{ key: string; size: number }>> {
    const parts = this.keyParts(prefix);
    let entries;
    try {
      entries = await readdir(path.join(this.root, ...parts), { withFileTypes: true });
    } catch (err) {
      if (isErrno(err, "ENOENT", "ENOTDIR")) return [];
      throw errors.because(`listing ${prefix} failed`, err);
    }
    const names = new Set(entries.map((e) => e.name));
    const removed: Array<{ key: string; size: number }> = [];
    for (const entry of entries) {
      const name = entry.name;
      if (!entry.isFile() || name.startsWith(DATA_TEMP_PREFIX) || name.endsWith(SIDECAR_TEMP_SUFFIX)) continue;
      if (name.endsWith(SIDECAR_SUFFIX) || names.has(name + SIDECAR_SUFFIX) || !accept(name)) continue;
      const full = path.join(this.root, ...parts, name);
      const st = await lstat(full).catch(() => null);
      if (!st || st.mtimeMs >= olderThan.getTime()) continue;
      if (await exists(full + SIDECAR_SUFFIX)) continue; // published since the listing
      if (await removeIfExists(full)) removed.push({ key: [...parts, name].join("/"), size: st.size });
    }
    return removed;
  }

  async close(): Promise<void> {
    // Nothing is held open between calls.
  }
}

export async function createBackend(config: LocalStorageConfig): Promise<LocalStorage> {
  return new LocalStorage(config);
}
