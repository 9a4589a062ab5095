/**
 * OpenStack Swift backend on our own small client (swift_client.ts; pkgcloud is unmaintained, has
 * no large-object support and drags in EOL dependencies). Objects larger than
 * `segment_size` are stored as rohmu does: dynamic large objects with segments at
 * `<dirname>_segments/<basename>/<%08x from 1>` and a zero-byte manifest carrying
 * `X-Object-Manifest` (storage-layout.md §2).
 */
import { createReadStream } from "node:fs";
import { Readable } from "node:stream";
import { ErrorFactory } from "./errors.js";
import { byName, fileSize, KeyMapper, mapLimit, RemoteBackend, sanitizeMetadata, StreamCutter } from "./shared.js";
import { SwiftClient, type SwiftConfig } from "./swift_client.js";
import { StorageNotFoundError, type ListOptions, type Metadata, type StoredObject } from "./types.js";

export type { SwiftConfig } from "./swift_client.js";

export const DEFAULT_SEGMENT_SIZE = 3 * 1024 ** 3;
/** Streams of unknown length up to this size are buffered and sent in one retryable PUT. */
const MEMORY_UPLOAD_LIMIT = 16 * 1024 * 1024;
const META_PREFIX = "x-object-meta-";

function encodePath(name: string): string {
  return name.split("/").map(encodeURIComponent).join("/");
}

function headersToMetadata(headers: Headers): Metadata {
  const out: Metadata = {};
  headers.forEach((value, name) => {
    if (name.startsWith(META_PREFIX)) out[name.slice(META_PREFIX.length)] = value;
  });
  return out;
}

function metadataToHeaders(metadata: Metadata): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(sanitizeMetadata(metadata))) out[`${META_PREFIX}${k}`] = v;
  return out;
}

interface ListingItem {
  name?: string;
  subdir?: string;
  bytes?: number;
  hash?: string;
  last_modified?: string;
}

export class SwiftBackend extends RemoteBackend {
  readonly storageType = "swift";
  protected readonly errors: ErrorFactory;
  private readonly keys: KeyMapper;
  private readonly client: SwiftClient;
  private readonly container: string;
  readonly segmentSize: number;
  private readonly pageSize: number;

  constructor(config: SwiftConfig) {
    super();
    this.errors = new ErrorFactory("swift", [config.key]);
    for (const name of ["user", "key", "auth_url", "container_name"] as const) {
      if (!config[name]) throw this.errors.error(`object_storage.${name} is required`);
    }
    this.keys = new KeyMapper(config.prefix);
    this.client = new SwiftClient(config, this.errors);
    this.container = config.container_name;
    this.segmentSize = config.segment_size ?? DEFAULT_SEGMENT_SIZE;
    if (!(this.segmentSize > 0)) throw this.errors.error("object_storage.segment_size must be positive");
    this.pageSize = Math.min(config.list_page_size ?? 10_000, 10_000);
  }

  private objectPath(name: string): string {
    return `/${encodeURIComponent(this.container)}/${encodePath(name)}`;
  }

  async init(): Promise<this> {
    try {
      const res = await this.client.request("GET", `/${encodeURIComponent(this.container)}`, {
        query: { limit: "1", format: "json" },
        allow: [404],
      });
      await res.body?.cancel();
      if (res.status === 404) {
        await (
          await this.client.request("PUT", `/${encodeURIComponent(this.container)}`, {
            headers: { "Content-Length": "0" },
          })
        ).body?.cancel();
      }
    } catch (err) {
      throw this.errors.wrap(err, "open container", this.container);
    }
    return this;
  }

  private async head(name: string): Promise<Headers | null> {
    const res = await this.client.request("HEAD", this.objectPath(name), { allow: [404] });
    await res.body?.cancel();
    return res.status === 404 ? null : res.headers;
  }

  async getMetadataForKey(key: string): Promise<Metadata> {
    const headers = await this.errors.wrapping("metadata of", key, () => this.head(this.keys.key(key)));
    if (!headers) throw new StorageNotFoundError(key);
    return headersToMetadata(headers);
  }

  async getReadStream(key: string): Promise<{ stream: Readable; metadata: Metadata; size: number }> {
    const res = await this.errors.wrapping("download", key, () =>
      this.client.request("GET", this.objectPath(this.keys.key(key)), { allow: [404] }),
    );
    if (res.status === 404) {
      await res.body?.cancel();
      throw new StorageNotFoundError(key);
    }
    const size = Number(res.headers.get("content-length") ?? "0");
    const stream = res.body
      ? Readable.fromWeb(res.body as import("node:stream/web").ReadableStream)
      : Readable.from([]);
    return { stream, metadata: headersToMetadata(res.headers), size };
  }

  /** Raw container listing (paged with limit/marker); `delimiter` gives one directory level. */
  private async listRaw(prefix: string, delimiter: boolean): Promise<ListingItem[]> {
    const items: ListingItem[] = [];
    let marker = "";
    for (;;) {
      const query: Record<string, string> = { format: "json", prefix, limit: String(this.pageSize) };
      if (delimiter) query.delimiter = "/";
      if (marker) query.marker = marker;
      const res = await this.client.request("GET", `/${encodeURIComponent(this.container)}`, { query, allow: [404] });
      if (res.status === 404) {
        await res.body?.cancel();
        throw this.errors.error(`container ${this.container} does not exist`);
      }
      const page = res.status === 204 ? [] : ((await res.json()) as ListingItem[]);
      items.push(...page);
      if (page.length < this.pageSize) return items;
      const last = page[page.length - 1]!;
      marker = last.name ?? last.subdir ?? "";
    }
  }

  async list(prefix: string, options: ListOptions = {}): Promise<StoredObject[]> {
    return await this.errors.wrapping("list", prefix, async () => {
      const raw = await this.listRaw(this.keys.directory(prefix), !options.recursive);
      const objects = raw.filter((item): item is ListingItem & { name: string } => typeof item.name === "string");
      const result = await mapLimit(objects, 16, async (item): Promise<StoredObject | null> => {
        // listings carry no user metadata, and a DLO manifest lists as 0 bytes: HEAD gives both
        const headers = await this.head(item.name);
        if (!headers) return null; // deleted since the listing
        return {
          name: this.keys.fromBackend(item.name),
          size: Number(headers.get("content-length") ?? item.bytes ?? 0),
          lastModified: new Date(item.last_modified ? `${item.last_modified.replace(/Z?$/, "Z")}` : Date.now()),
          metadata: headersToMetadata(headers),
          md5: item.hash,
        };
      });
      return result.filter((o): o is StoredObject => o !== null).sort(byName);
    });
  }

  private async deletePlain(name: string): Promise<boolean> {
    const res = await this.client.request("DELETE", this.objectPath(name), { allow: [404] });
    await res.body?.cancel();
    return res.status !== 404;
  }

  /** Deletes the objects below a manifest's `container/prefix`, as rohmu does (one level). */
  private async deleteSegments(manifest: string): Promise<void> {
    const slash = manifest.indexOf("/");
    const segContainer = decodeURIComponent(manifest.slice(0, slash));
    const segPrefix = decodeURIComponent(manifest.slice(slash + 1));
    if (segContainer !== this.container || !segPrefix) return; // never touch other containers
    const segments = (await this.listRaw(segPrefix, true)).filter((i) => typeof i.name === "string");
    await mapLimit(segments, 8, (item) => this.deletePlain(item.name!));
  }

  /** Deletes one object and, for a manifest, its segments. Returns false when it did not exist. */
  private async deleteObject(name: string): Promise<boolean> {
    const headers = await this.head(name);
    if (!headers) return false;
    const existed = await this.deletePlain(name);
    const manifest = headers.get("x-object-manifest");
    if (manifest) await this.deleteSegments(manifest);
    return existed;
  }

  async deleteKey(key: string): Promise<void> {
    const existed = await this.errors.wrapping("delete", key, () => this.deleteObject(this.keys.key(key)));
    if (!existed) throw new StorageNotFoundError(key);
  }

  async deleteTree(prefix: string): Promise<void> {
    await this.errors.wrapping("delete tree", prefix, async () => {
      const items = (await this.listRaw(this.keys.directory(prefix), false)).filter((i) => typeof i.name === "string");
      await mapLimit(items, 16, (item) => this.deleteObject(item.name!));
    });
  }

  async copyFile(sourceKey: string, destinationKey: string, metadata?: Metadata): Promise<void> {
    const headers: Record<string, string> = {
      "X-Copy-From": `/${encodeURIComponent(this.container)}/${encodePath(this.keys.key(sourceKey))}`,
      "Content-Length": "0",
    };
    if (metadata) Object.assign(headers, metadataToHeaders(metadata), { "X-Fresh-Metadata": "true" });
    let res: Response;
    try {
      // a DLO source is copied as its concatenated content, so the copy owns no shared segments
      res = await this.client.request("PUT", this.objectPath(this.keys.key(destinationKey)), { headers, allow: [404] });
      await res.body?.cancel();
    } catch (err) {
      throw this.errors.wrap(err, "copy to " + destinationKey + " from", sourceKey);
    }
    if (res.status === 404) throw new StorageNotFoundError(sourceKey);
  }

  private segmentPrefix(name: string): string {
    // os.path.dirname / basename semantics, as rohmu uses them
    const slash = name.lastIndexOf("/");
    const dir = slash >= 0 ? name.slice(0, slash) : "";
    return `${dir}_segments/${name.slice(slash + 1)}/`;
  }

  override async storeFileFromMemory(key: string, data: Buffer, metadata: Metadata): Promise<void> {
    const name = this.keys.key(key);
    await this.errors.wrapping("upload", key, async () => {
      if (data.length <= this.segmentSize) {
        await this.putPlain(name, data, data.length, metadata);
        return;
      }
      // Buffer segments are replayed by the request retries
      await this.putSegmented(name, metadata, async (put) => {
        for (let start = 0, n = 1; start < data.length; start += this.segmentSize, n++) {
          const segment = data.subarray(start, Math.min(data.length, start + this.segmentSize));
          await put(n, segment, segment.length);
        }
      });
    });
  }

  override async storeFileFromDisk(key: string, filePath: string, metadata: Metadata): Promise<void> {
    const name = this.keys.key(key);
    await this.errors.wrapping("upload", key, async () => {
      const size = await fileSize(filePath);
      if (size <= this.segmentSize) {
        await this.putPlain(name, () => createReadStream(filePath), size, metadata);
        return;
      }
      // every segment can be re-read from the file, so each one is retried on its own
      await this.putSegmented(name, metadata, async (put) => {
        for (let start = 0, n = 1; start < size; start += this.segmentSize, n++) {
          const end = Math.min(size, start + this.segmentSize);
          await put(n, () => createReadStream(filePath, { start, end: end - 1 }), end - start);
        }
      });
    });
  }

  async storeFileObject(key: string, source: Readable, metadata: Metadata): Promise<void> {
    const name = this.keys.key(key);
    const cutter = new StreamCutter(source);
    try {
      const head = await cutter.read(Math.min(this.segmentSize, MEMORY_UPLOAD_LIMIT));
      if (await cutter.ended()) {
        await this.putPlain(name, head, head.length, metadata);
        return;
      }
      // Unknown length beyond the memory limit: stream segments. If it all fits into the first
      // segment, the segment is copied to the key so the layout stays rohmu's (plain object).
      let single = false;
      await this.putSegmented(
        name,
        metadata,
        async (put) => {
          const firstRest = cutter.take(this.segmentSize - head.length);
          await put(1, Readable.from(concatStreams([head], firstRest)), undefined);
          single = await cutter.ended();
          for (let n = 2; !(await cutter.ended()); n++) await put(n, cutter.take(this.segmentSize), undefined);
        },
        async (segmentPrefix) => {
          if (!single) return false;
          const segment = `${segmentPrefix}${(1).toString(16).padStart(8, "0")}`;
          const headers: Record<string, string> = {
            ...metadataToHeaders(metadata),
            "X-Copy-From": `/${encodeURIComponent(this.container)}/${encodePath(segment)}`,
            "X-Fresh-Metadata": "true",
            "Content-Length": "0",
          };
          await (await this.client.request("PUT", this.objectPath(name), { headers })).body?.cancel();
          await this.deletePlain(segment);
          return true;
        },
      );
    } catch (err) {
      source.destroy();
      throw this.errors.wrap(err, "upload", key);
    } finally {
      await cutter.close();
    }
  }

  private async putPlain(
    name: string,
    body: Buffer | (() => Readable),
    size: number,
    metadata: Metadata,
  ): Promise<void> {
    const headers = { ...metadataToHeaders(metadata), "Content-Length": String(size) };
    await (await this.client.request("PUT", this.objectPath(name), { headers, body })).body?.cancel();
  }

  /**
   * Segmented upload: clears an earlier object/segments under the name, lets `writeSegments` PUT the
   * segments, then writes the manifest (unless `finish` publishes the object another way). On any
   * failure the segments are removed again, so nothing appears under the name.
   */
  private async putSegmented(
    name: string,
    metadata: Metadata,
    writeSegments: (
      put: (n: number, body: Buffer | Readable | (() => Readable), size: number | undefined) => Promise<void>,
    ) => Promise<void>,
    finish?: (segmentPrefix: string) => Promise<boolean>,
  ): Promise<void> {
    const segmentPrefix = this.segmentPrefix(name);
    // stale segments would be concatenated into the new object (DLO = every object under the prefix)
    await this.deleteObject(name);
    await this.deleteSegmentsUnder(segmentPrefix);
    try {
      await writeSegments(async (n, body, size) => {
        const headers: Record<string, string> = size === undefined ? {} : { "Content-Length": String(size) };
        const segment = `${segmentPrefix}${n.toString(16).padStart(8, "0")}`;
        await (await this.client.request("PUT", this.objectPath(segment), { headers, body })).body?.cancel();
      });
      if (finish && (await finish(segmentPrefix))) return;
      const headers = {
        ...metadataToHeaders(metadata),
        "X-Object-Manifest": `${encodeURIComponent(this.container)}/${encodePath(segmentPrefix.replace(/^\/+/, ""))}`,
        "Content-Length": "0",
      };
      await (
        await this.client.request("PUT", this.objectPath(name), { headers, body: Buffer.alloc(0) })
      ).body?.cancel();
    } catch (err) {
      await this.deleteSegmentsUnder(segmentPrefix).catch(() => undefined);
      throw err;
    }
  }

  private async deleteSegmentsUnder(segmentPrefix: string): Promise<void> {
    const leftovers = (await this.listRaw(segmentPrefix, true)).filter((i) => typeof i.name === "string");
    await mapLimit(leftovers, 8, (item) => this.deletePlain(item.name!));
  }

  async close(): Promise<void> {
    this.client.close();
  }
}

async function* concatStreams(buffers: Buffer[], rest: Readable): AsyncGenerator<Buffer> {
  yield* buffers;
  for await (const chunk of rest) yield chunk as Buffer;
}

export async function createBackend(config: SwiftConfig): Promise<SwiftBackend> {
  return new SwiftBackend(config).init();
}
