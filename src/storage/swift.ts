/**
 * OpenStack Swift backend: a small client over global fetch (pkgcloud is unmaintained, has no
 * large-object support and drags in EOL dependencies). Auth v1.0 (tempauth / RadosGW), v2.0 and
 * v3 (Keystone, endpoint from the catalog); token refreshed on 401. Objects larger than
 * `segment_size` are stored as rohmu does: dynamic large objects with segments at
 * `<dirname>_segments/<basename>/<%08x from 1>` and a zero-byte manifest carrying
 * `X-Object-Manifest` (storage-layout.md §2).
 */
import { createReadStream } from "node:fs";
import { Readable } from "node:stream";
import { withRetry } from "./retry.js";
import {
  byName,
  ErrorFactory,
  fileSize,
  KeyMapper,
  mapLimit,
  RemoteBackend,
  sanitizeMetadata,
  StreamCutter,
} from "./shared.js";
import { StorageNotFoundError, type ListOptions, type Metadata, type StoredObject } from "./types.js";

export interface SwiftConfig {
  storage_type?: "swift";
  user: string;
  key: string;
  auth_url: string;
  container_name: string;
  auth_version?: string;
  tenant_name?: string | null;
  region_name?: string | null;
  segment_size?: number;
  prefix?: string | null;
  user_id?: string | null;
  user_domain_id?: string | null;
  user_domain_name?: string | null;
  tenant_id?: string | null;
  project_id?: string | null;
  project_name?: string | null;
  project_domain_id?: string | null;
  project_domain_name?: string | null;
  service_type?: string | null;
  endpoint_type?: string | null;
  /** Not upstream: objects per listing request (Swift's default and maximum is 10000). */
  list_page_size?: number;
}

export const DEFAULT_SEGMENT_SIZE = 3 * 1024 ** 3;
/** Streams of unknown length up to this size are buffered and sent in one retryable PUT. */
const MEMORY_UPLOAD_LIMIT = 16 * 1024 * 1024;
const META_PREFIX = "x-object-meta-";

/** An HTTP failure from Swift; `status` drives retry and not-found handling. */
class SwiftHttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = "SwiftHttpError";
  }
}

interface RequestOptions {
  query?: Record<string, string>;
  headers?: Record<string, string>;
  /** A Buffer or a function producing a fresh body per attempt; a bare stream is sent once. */
  body?: Buffer | Readable | (() => Readable);
  /** Statuses returned to the caller instead of raising (e.g. 404 for existence checks). */
  allow?: number[];
}

interface CatalogEndpoint {
  region?: string;
  region_id?: string;
  interface?: string;
  url?: string;
  publicURL?: string;
  internalURL?: string;
  adminURL?: string;
}

/** Speaks the Swift HTTP API for one account; authenticates lazily and again after a 401. */
export class SwiftClient {
  private token: string | null = null;
  private storageUrl: string | null = null;
  private authenticating: Promise<void> | null = null;

  constructor(
    private readonly config: SwiftConfig,
    private readonly errors: ErrorFactory,
  ) {}

  private async authenticate(): Promise<void> {
    this.authenticating ??= this.doAuthenticate().finally(() => {
      this.authenticating = null;
    });
    await this.authenticating;
  }

  private async doAuthenticate(): Promise<void> {
    const version = String(this.config.auth_version ?? "2.0");
    await withRetry(async () => {
      if (version.startsWith("1")) await this.authV1();
      else if (version.startsWith("2")) await this.authV2();
      else if (version.startsWith("3")) await this.authV3();
      else throw this.errors.error(`unsupported auth_version ${version}`);
    });
  }

  private async authFailed(res: Response): Promise<never> {
    await res.body?.cancel();
    // 401/403 are permanent (wrong credentials); 5xx is retried by the caller
    throw new SwiftHttpError(res.status, `authentication at ${this.config.auth_url} failed with HTTP ${res.status}`);
  }

  private async authV1(): Promise<void> {
    const res = await fetch(this.config.auth_url, {
      headers: {
        "X-Auth-User": this.config.user,
        "X-Auth-Key": this.config.key,
        "X-Storage-User": this.config.user,
        "X-Storage-Pass": this.config.key,
      },
    });
    if (!res.ok) await this.authFailed(res);
    await res.body?.cancel();
    const token = res.headers.get("x-auth-token") ?? res.headers.get("x-storage-token");
    const url = res.headers.get("x-storage-url");
    if (!token || !url) throw this.errors.error("auth v1.0 reply lacks X-Auth-Token or X-Storage-Url");
    this.token = token;
    this.storageUrl = url.replace(/\/+$/, "");
  }

  private async authV2(): Promise<void> {
    const c = this.config;
    const auth: Record<string, unknown> = { passwordCredentials: { username: c.user, password: c.key } };
    if (c.tenant_name) auth.tenantName = c.tenant_name;
    else if (c.tenant_id) auth.tenantId = c.tenant_id;
    const url = c.auth_url.replace(/\/+$/, "") + "/tokens";
    const res = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ auth }),
    });
    if (!res.ok) await this.authFailed(res);
    const reply = (await res.json()) as {
      access?: { token?: { id?: string }; serviceCatalog?: Array<{ type?: string; endpoints?: CatalogEndpoint[] }> };
    };
    const token = reply.access?.token?.id;
    if (!token) throw this.errors.error("auth v2.0 reply lacks access.token.id");
    this.token = token;
    this.storageUrl = this.pickEndpoint(reply.access?.serviceCatalog ?? [], "2");
  }

  private async authV3(): Promise<void> {
    const c = this.config;
    const domain = (id?: string | null, name?: string | null): Record<string, string> | undefined =>
      id ? { id } : name ? { name } : undefined;
    const user: Record<string, unknown> = { password: c.key };
    if (c.user_id) user.id = c.user_id;
    else user.name = c.user;
    const userDomain = domain(c.user_domain_id, c.user_domain_name);
    if (userDomain) user.domain = userDomain;
    const auth: Record<string, unknown> = { identity: { methods: ["password"], password: { user } } };
    const projectId = c.project_id ?? c.tenant_id;
    const projectName = c.project_name ?? c.tenant_name;
    if (projectId) auth.scope = { project: { id: projectId } };
    else if (projectName) {
      const project: Record<string, unknown> = { name: projectName };
      const projectDomain = domain(c.project_domain_id, c.project_domain_name) ?? userDomain;
      if (projectDomain) project.domain = projectDomain;
      auth.scope = { project };
    }
    let url = c.auth_url.replace(/\/+$/, "");
    if (!url.endsWith("/auth/tokens")) url += /\/v3$/.test(url) ? "/auth/tokens" : "/v3/auth/tokens";
    const res = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ auth }),
    });
    if (!res.ok) await this.authFailed(res);
    const token = res.headers.get("x-subject-token");
    const reply = (await res.json()) as { token?: { catalog?: Array<{ type?: string; endpoints?: CatalogEndpoint[] }> } };
    if (!token) throw this.errors.error("auth v3 reply lacks X-Subject-Token");
    this.token = token;
    this.storageUrl = this.pickEndpoint(reply.token?.catalog ?? [], "3");
  }

  private pickEndpoint(catalog: Array<{ type?: string; endpoints?: CatalogEndpoint[] }>, version: "2" | "3"): string {
    const serviceType = this.config.service_type ?? "object-store";
    const wanted = (this.config.endpoint_type ?? "public").replace(/URL$/, "");
    const service = catalog.find((s) => s.type === serviceType);
    if (!service) throw this.errors.error(`no ${serviceType} service in the Keystone catalog`);
    const region = this.config.region_name;
    for (const ep of service.endpoints ?? []) {
      if (region && ep.region !== region && ep.region_id !== region) continue;
      const url = version === "3" ? (ep.interface === wanted ? ep.url : undefined) : ep[`${wanted}URL` as "publicURL"];
      if (url) return url.replace(/\/+$/, "");
    }
    throw this.errors.error(`no ${wanted} ${serviceType} endpoint${region ? ` in region ${region}` : ""} in the Keystone catalog`);
  }

  /** One request with auth; retried on transient failures when the body can be replayed. */
  async request(method: string, objectPath: string, options: RequestOptions = {}): Promise<Response> {
    const body = options.body;
    const replayable = body === undefined || Buffer.isBuffer(body) || typeof body === "function";
    let bodyUsed = false;
    const attemptOnce = async (): Promise<Response> => {
      if (!this.token) await this.authenticate();
      for (let authTry = 0; ; authTry++) {
        const url = new URL(this.storageUrl + objectPath);
        for (const [k, v] of Object.entries(options.query ?? {})) url.searchParams.set(k, v);
        let sendBody: Buffer | Readable | undefined;
        if (typeof body === "function") sendBody = body();
        else if (body !== undefined) {
          if (!Buffer.isBuffer(body) && bodyUsed) throw this.errors.error(`${method} ${objectPath}: stream body cannot be resent`);
          bodyUsed = true;
          sendBody = body;
        }
        const init: RequestInit & { duplex?: "half" } = {
          method,
          headers: { ...options.headers, "X-Auth-Token": this.token! },
        };
        if (sendBody !== undefined) {
          // Readable is an AsyncIterable<Uint8Array>, which undici's fetch streams (duplex: half)
          init.body = Buffer.isBuffer(sendBody) ? sendBody : (sendBody as unknown as ReadableStream);
          init.duplex = "half";
        }
        const res = await fetch(url, init);
        if (res.status === 401 && authTry === 0 && (replayable || !bodyUsed || typeof body === "function")) {
          await res.body?.cancel();
          this.token = null;
          await this.authenticate();
          continue;
        }
        if (res.ok || options.allow?.includes(res.status)) return res;
        const text = (await res.text().catch(() => "")).slice(0, 200).replace(/\s+/g, " ");
        throw new SwiftHttpError(res.status, `${method} ${decodeURIComponent(url.pathname)} failed with HTTP ${res.status} ${text}`);
      }
    };
    return replayable ? withRetry(attemptOnce) : attemptOnce();
  }

  close(): void {
    this.token = null;
  }
}

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
        await (await this.client.request("PUT", `/${encodeURIComponent(this.container)}`, { headers: { "Content-Length": "0" } })).body?.cancel();
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
    let headers: Headers | null;
    try {
      headers = await this.head(this.keys.key(key));
    } catch (err) {
      throw this.errors.wrap(err, "metadata of", key);
    }
    if (!headers) throw new StorageNotFoundError(key);
    return headersToMetadata(headers);
  }

  async getReadStream(key: string): Promise<{ stream: Readable; metadata: Metadata; size: number }> {
    let res: Response;
    try {
      res = await this.client.request("GET", this.objectPath(this.keys.key(key)), { allow: [404] });
    } catch (err) {
      throw this.errors.wrap(err, "download", key);
    }
    if (res.status === 404) {
      await res.body?.cancel();
      throw new StorageNotFoundError(key);
    }
    const size = Number(res.headers.get("content-length") ?? "0");
    const stream = res.body ? Readable.fromWeb(res.body as import("node:stream/web").ReadableStream) : Readable.from([]);
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
    try {
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
    } catch (err) {
      throw this.errors.wrap(err, "list", prefix);
    }
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
    let existed: boolean;
    try {
      existed = await this.deleteObject(this.keys.key(key));
    } catch (err) {
      throw this.errors.wrap(err, "delete", key);
    }
    if (!existed) throw new StorageNotFoundError(key);
  }

  async deleteTree(prefix: string): Promise<void> {
    try {
      const items = (await this.listRaw(this.keys.directory(prefix), false)).filter((i) => typeof i.name === "string");
      await mapLimit(items, 16, (item) => this.deleteObject(item.name!));
    } catch (err) {
      throw this.errors.wrap(err, "delete tree", prefix);
    }
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
    try {
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
    } catch (err) {
      throw this.errors.wrap(err, "upload", key);
    }
  }

  override async storeFileFromDisk(key: string, filePath: string, metadata: Metadata): Promise<void> {
    const name = this.keys.key(key);
    try {
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
    } catch (err) {
      throw this.errors.wrap(err, "upload", key);
    }
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
      await this.putSegmented(name, metadata, async (put) => {
        const firstRest = cutter.take(this.segmentSize - head.length);
        await put(1, Readable.from(concatStreams([head], firstRest)), undefined);
        single = await cutter.ended();
        for (let n = 2; !(await cutter.ended()); n++) await put(n, cutter.take(this.segmentSize), undefined);
      }, async (segmentPrefix) => {
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
      });
    } catch (err) {
      source.destroy();
      throw this.errors.wrap(err, "upload", key);
    } finally {
      await cutter.close();
    }
  }

  private async putPlain(name: string, body: Buffer | (() => Readable), size: number, metadata: Metadata): Promise<void> {
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
    writeSegments: (put: (n: number, body: Buffer | Readable | (() => Readable), size: number | undefined) => Promise<void>) => Promise<void>,
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
      await (await this.client.request("PUT", this.objectPath(name), { headers, body: Buffer.alloc(0) })).body?.cancel();
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

