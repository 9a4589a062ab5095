/**
 * Pieces every remote backend (s3, google, azure, swift, sftp) shares: the backend prefix rules of
 * rohmu's BaseTransfer, metadata sanitising, stream helpers and a base class
 * that derives the convenience operations from the primitive ones.
 */
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createAtomicWriteStream } from "../common/fs.js";
import type { ErrorFactory } from "./errors.js";
import { StorageError, type ListOptions, type Metadata, type StorageBackend, type StoredObject } from "./types.js";

/**
 * The backend prefix (`object_storage.prefix`) as rohmu applies it: a trailing `/` is added, keys
 * lose a trailing `/`, cloud backends also drop a leading `/` (`format_key_for_backend`).
 */
export class KeyMapper {
  readonly prefix: string;

  constructor(
    prefix: string | null | undefined,
    private readonly stripLeadingSlash = true,
  ) {
    let p = prefix ?? "";
    if (stripLeadingSlash) p = p.replace(/^\/+/, "");
    if (p && !p.endsWith("/")) p += "/";
    this.prefix = p;
  }

  /** Full backend name of an object key. */
  key(key: string): string {
    let path = (this.prefix + key).replace(/\/+$/, "");
    if (this.stripLeadingSlash) path = path.replace(/^\/+/, "");
    return path;
  }

  /** Backend listing prefix for a "directory" (always ends in `/`, or is empty for the root). */
  directory(prefix: string): string {
    let path = this.prefix + prefix;
    if (!path.endsWith("/")) path += "/";
    if (this.stripLeadingSlash) path = path.replace(/^\/+/, "");
    return path;
  }

  /** Key relative to the backend prefix of a name returned by the backend. */
  fromBackend(name: string): string {
    if (!this.prefix) return name;
    if (!name.startsWith(this.prefix))
      throw new StorageError(`Key ${name} does not start with the prefix ${this.prefix}`);
    return name.slice(this.prefix.length);
  }
}

/** Values become strings and null/undefined entries are dropped (rohmu `sanitize_metadata`). */
export function sanitizeMetadata(metadata: Metadata | undefined, replaceHyphenWith = "-"): Metadata {
  const out: Metadata = {};
  for (const [k, v] of Object.entries(metadata ?? {})) {
    if (v === undefined || v === null) continue;
    out[k.replaceAll("-", replaceHyphenWith)] = String(v);
  }
  return out;
}

/** Reads a whole stream into one Buffer. */
export async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as Uint8Array));
  return Buffer.concat(chunks);
}

/**
 * Cuts one source stream into consecutive pieces without buffering more than one source chunk:
 * `take(n)` is a Readable of the next (at most) n bytes; `ended()` tells whether the source is done.
 */
export class StreamCutter {
  private readonly iterator: AsyncIterator<Buffer>;
  private pending: Buffer | null = null;
  private done = false;

  constructor(source: Readable) {
    this.iterator = (source as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  }

  private async fill(): Promise<void> {
    while (!this.done && (this.pending === null || this.pending.length === 0)) {
      const next = await this.iterator.next();
      if (next.done) this.done = true;
      else this.pending = Buffer.isBuffer(next.value) ? next.value : Buffer.from(next.value as Uint8Array);
    }
  }

  /** True when every byte of the source has been handed out. */
  async ended(): Promise<boolean> {
    await this.fill();
    return this.done && (this.pending === null || this.pending.length === 0);
  }

  /** Up to `limit` bytes into memory (shorter only at the end of the source). */
  async read(limit: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    for await (const part of this.pieces(limit)) parts.push(part);
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  }

  /** The next `limit` bytes as a stream; consume it fully before calling take/read again. */
  take(limit: number): Readable {
    return Readable.from(this.pieces(limit), { objectMode: false });
  }

  private async *pieces(limit: number): AsyncGenerator<Buffer> {
    let remaining = limit;
    while (remaining > 0) {
      await this.fill();
      const buf = this.pending;
      if (buf === null || buf.length === 0) return;
      if (buf.length <= remaining) {
        this.pending = null;
        remaining -= buf.length;
        yield buf;
      } else {
        this.pending = buf.subarray(remaining);
        yield buf.subarray(0, remaining);
        remaining = 0;
      }
    }
  }

  /** Stops reading the source (after an error elsewhere). */
  async close(): Promise<void> {
    await this.iterator.return?.().catch(() => undefined);
  }
}

/** Runs `fn` over `items` with at most `limit` calls in flight; results keep the input order. */
export async function mapLimit<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  let failed = false;
  const worker = async (): Promise<void> => {
    while (!failed && next < items.length) {
      const index = next++;
      try {
        results[index] = await fn(items[index]!, index);
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

export function byName(a: StoredObject, b: StoredObject): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

/**
 * Base class of the remote backends: memory, disk and file variants are built on
 * `storeFileObject` / `getReadStream`; backends override them where their client does better.
 */
export abstract class RemoteBackend implements StorageBackend {
  abstract readonly storageType: string;
  protected abstract readonly errors: ErrorFactory;

  abstract storeFileObject(key: string, source: Readable, metadata: Metadata): Promise<void>;
  abstract getReadStream(key: string): Promise<{ stream: Readable; metadata: Metadata; size: number }>;
  abstract getMetadataForKey(key: string): Promise<Metadata>;
  abstract list(prefix: string, options?: ListOptions): Promise<StoredObject[]>;
  abstract deleteKey(key: string): Promise<void>;
  abstract deleteTree(prefix: string): Promise<void>;
  abstract copyFile(sourceKey: string, destinationKey: string, metadata?: Metadata): Promise<void>;
  abstract close(): Promise<void>;

  async storeFileFromMemory(key: string, data: Buffer, metadata: Metadata): Promise<void> {
    await this.storeFileObject(key, Readable.from([data]), metadata);
  }

  async storeFileFromDisk(key: string, filePath: string, metadata: Metadata): Promise<void> {
    await this.storeFileObject(key, createReadStream(filePath), metadata);
  }

  async getContentsToMemory(key: string): Promise<{ data: Buffer; metadata: Metadata }> {
    const { stream, metadata } = await this.getReadStream(key);
    try {
      return { data: await readAll(stream), metadata };
    } catch (err) {
      throw this.errors.wrap(err, "download", key);
    }
  }

  async getContentsToFile(key: string, filePath: string): Promise<Metadata> {
    const { stream, metadata } = await this.getReadStream(key);
    const out = createAtomicWriteStream(filePath);
    try {
      await pipeline(stream, out);
      await out.commit();
    } catch (err) {
      await out.abort().catch(() => undefined);
      throw this.errors.wrap(err, "download", key);
    }
    return metadata;
  }
}

/** Size of a local file, for uploads that need to know it up front. */
export async function fileSize(filePath: string): Promise<number> {
  return (await stat(filePath)).size;
}
