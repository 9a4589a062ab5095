/**
 * Google Cloud Storage backend on @google-cloud/storage, following rohmu's GoogleTransfer: bucket
 * created when missing, custom metadata in the object's `metadata` map, resumable uploads in
 * 5 MiB chunks for streams (an unfinished upload session never becomes an object), downloads
 * pinned to the generation whose metadata was read.
 */
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import {
  IdempotencyStrategy,
  Storage,
  type Bucket,
  type File,
  type GetFilesOptions,
  type StorageOptions,
} from "@google-cloud/storage";
import { OAuth2Client } from "google-auth-library";
import { ErrorFactory, statusOf } from "./errors.js";
import { byName, KeyMapper, mapLimit, RemoteBackend, sanitizeMetadata } from "./shared.js";
import type { ListOptions, Metadata, StoredObject } from "./types.js";
import { createProxyAgents, proxyUrl, type ProxyInfo } from "./proxy.js";

export interface GoogleConfig {
  storage_type?: "google";
  project_id?: string | null;
  bucket_name?: string | null;
  credential_file?: string | null;
  credentials?: Record<string, unknown> | null;
  prefix?: string | null;
  proxy_info?: ProxyInfo | null;
  /** Not upstream: JSON API endpoint, e.g. a test server (`http://127.0.0.1:PORT`). */
  api_endpoint?: string | null;
  /** Not upstream: resumable upload chunk size, a multiple of 256 KiB (default 5 MiB, as rohmu). */
  chunk_size?: number;
  /** Not upstream: objects per listing request (GCS's maximum and default is 1000). */
  list_page_size?: number;
}

const DEFAULT_CHUNK_SIZE = 5 * 1024 * 1024;
const CHUNK_UNIT = 256 * 1024;

function objectMetadata(file: File): Metadata {
  const md = file.metadata.metadata ?? {};
  const out: Metadata = {};
  for (const [k, v] of Object.entries(md)) if (v !== null && v !== undefined) out[k] = String(v);
  return out;
}

export class GoogleBackend extends RemoteBackend {
  readonly storageType = "google";
  protected readonly errors: ErrorFactory;
  private readonly keys: KeyMapper;
  private readonly bucket: Bucket;
  readonly chunkSize: number;
  private readonly pageSize: number;

  constructor(
    private readonly config: GoogleConfig,
    errors: ErrorFactory,
    private readonly storage: Storage,
  ) {
    super();
    this.errors = errors;
    this.keys = new KeyMapper(config.prefix);
    this.bucket = storage.bucket(config.bucket_name!);
    const chunk = config.chunk_size ?? DEFAULT_CHUNK_SIZE;
    this.chunkSize = Math.max(CHUNK_UNIT, Math.ceil(chunk / CHUNK_UNIT) * CHUNK_UNIT);
    this.pageSize = Math.min(config.list_page_size ?? 1000, 1000);
  }

  /** Bucket lookup, then creation when missing (rohmu `get_or_create_bucket`). */
  async init(): Promise<this> {
    try {
      await this.bucket.getMetadata();
      return this;
    } catch (err) {
      const status = statusOf(err);
      if (status === 403) throw this.errors.error(`bucket ${this.bucket.name} exists but is not accessible`);
      if (status !== 404) throw this.errors.wrap(err, "check bucket", this.bucket.name);
    }
    try {
      await this.storage.createBucket(this.bucket.name);
    } catch (err) {
      // someone else created it meanwhile
      if (statusOf(err) !== 409) throw this.errors.wrap(err, "create bucket", this.bucket.name);
    }
    return this;
  }

  private file(key: string, generation?: string | number): File {
    return this.bucket.file(this.keys.key(key), generation === undefined ? {} : { generation });
  }

  async getMetadataForKey(key: string): Promise<Metadata> {
    return await this.errors.translating("metadata of", key, async () => {
      const file = this.file(key);
      await file.getMetadata();
      return objectMetadata(file);
    });
  }

  async getReadStream(key: string): Promise<{ stream: Readable; metadata: Metadata; size: number }> {
    let file: File;
    try {
      file = this.file(key);
      await file.getMetadata();
    } catch (err) {
      throw this.errors.translate(err, "download", key);
    }
    // read exactly the generation described by that metadata, even if the key is replaced meanwhile
    const generation = file.metadata.generation;
    const pinned = generation === undefined ? file : this.file(key, generation);
    const stream = pinned.createReadStream({ validation: "crc32c" });
    return { stream, metadata: objectMetadata(file), size: Number(file.metadata.size ?? 0) };
  }

  async list(prefix: string, options: ListOptions = {}): Promise<StoredObject[]> {
    return await this.errors.wrapping("list", prefix, async () => {
      const out: StoredObject[] = [];
      let query: GetFilesOptions | null = {
        prefix: this.keys.directory(prefix) || undefined,
        delimiter: options.recursive ? undefined : "/",
        autoPaginate: false,
        maxResults: this.pageSize,
      };
      while (query) {
        const response = await this.bucket.getFiles(query);
        const files: File[] = response[0];
        const next: unknown = response[1];
        for (const file of files) {
          if (file.name.endsWith("/")) continue; // "directory" placeholder objects, as rohmu skips
          out.push({
            name: this.keys.fromBackend(file.name),
            size: Number(file.metadata.size ?? 0),
            lastModified: new Date(file.metadata.updated ?? 0),
            metadata: objectMetadata(file),
            md5: file.metadata.md5Hash ? Buffer.from(file.metadata.md5Hash, "base64").toString("hex") : undefined,
          });
        }
        query = (next as GetFilesOptions | null) ?? null;
      }
      return out.sort(byName);
    });
  }

  async deleteKey(key: string): Promise<void> {
    await this.errors.translating("delete", key, async () => {
      await this.file(key).delete();
    });
  }

  async deleteTree(prefix: string): Promise<void> {
    await this.errors.wrapping("delete tree", prefix, async () => {
      const names = (await this.list(prefix, { recursive: true })).map((o) => o.name);
      await mapLimit(names, 16, async (name) => {
        await this.file(name).delete({ ignoreNotFound: true });
      });
    });
  }

  async copyFile(sourceKey: string, destinationKey: string, metadata?: Metadata): Promise<void> {
    await this.errors.translating(`copy to ${destinationKey} from`, sourceKey, async () => {
      // rewrite; a body with `metadata` replaces the custom metadata, an empty one keeps the source's
      await this.file(sourceKey).copy(
        this.file(destinationKey),
        metadata ? { metadata: sanitizeMetadata(metadata) } : {},
      );
    });
  }

  override async storeFileFromMemory(key: string, data: Buffer, metadata: Metadata): Promise<void> {
    if (data.length > this.chunkSize) {
      const { Readable } = await import("node:stream");
      await this.storeFileObject(key, Readable.from([data]), metadata);
      return;
    }
    await this.errors.wrapping("upload", key, async () => {
      // one multipart request (metadata + bytes), retried as a whole
      await this.file(key).save(data, {
        resumable: false,
        contentType: "application/octet-stream",
        metadata: { metadata: sanitizeMetadata(metadata) },
      });
    });
  }

  async storeFileObject(key: string, source: Readable, metadata: Metadata): Promise<void> {
    const upload = this.file(key).createWriteStream({
      resumable: true,
      chunkSize: this.chunkSize,
      contentType: "application/octet-stream",
      metadata: { metadata: sanitizeMetadata(metadata) },
    });
    try {
      // the object appears only when the session's last chunk is sent; a failed source never sends it
      await pipeline(source, upload);
    } catch (err) {
      source.destroy();
      throw this.errors.wrap(err, "upload", key);
    }
  }

  async close(): Promise<void> {
    // the client holds no resources that need closing
  }
}

type InterceptedOptions = ReturnType<Storage["interceptors"][number]["request"]>;

export async function createBackend(config: GoogleConfig): Promise<GoogleBackend> {
  const credentials = config.credentials ?? undefined;
  const errors = new ErrorFactory("google", [
    credentials?.private_key as string | undefined,
    credentials?.client_secret as string | undefined,
    credentials?.refresh_token as string | undefined,
    credentials?.access_token as string | undefined,
    config.proxy_info?.pass,
  ]);
  if (!config.bucket_name) throw errors.error("object_storage.bucket_name is required");
  const options: StorageOptions = {
    projectId: config.project_id ?? undefined,
    // Uploads are retried too (rohmu retries every request): a retried upload rewrites the same
    // bytes under the same name, so it is safe for this use.
    retryOptions: { autoRetry: true, maxRetries: 6, idempotencyStrategy: IdempotencyStrategy.RetryAlways },
  };
  if (config.api_endpoint) {
    options.apiEndpoint = config.api_endpoint.replace(/\/+$/, "");
    options.useAuthWithCustomEndpoint = true;
  }
  if (config.credential_file) {
    options.keyFilename = config.credential_file;
  } else if (credentials) {
    const type = credentials.type;
    if (type === "access_token") {
      if (typeof credentials.access_token !== "string") throw errors.error("credentials.access_token is required");
      const client = new OAuth2Client();
      client.setCredentials({ access_token: credentials.access_token });
      options.authClient = client;
    } else if (type === "service_account" || type === "authorized_user") {
      options.credentials = credentials as StorageOptions["credentials"];
    } else {
      throw errors.error(`unsupported credentials type ${String(type)}`);
    }
  }
  const storage = new Storage(options);
  if (config.proxy_info) {
    if (config.proxy_info.type !== undefined && config.proxy_info.type !== "http") {
      // The JSON API requests go through teeny-request, which takes only an HTTP proxy URL and
      // ignores any agent given to it; see README "Differences from upstream pghoard".
      throw errors.error(`proxy_info type ${config.proxy_info.type} is not supported for google (only http)`);
    }
    const url = proxyUrl(config.proxy_info);
    const agent = (await createProxyAgents(config.proxy_info)).https;
    // teeny-request (JSON API calls, downloads) honours `proxy`; gaxios (resumable uploads) `agent`.
    storage.interceptors.push({
      // The interceptor type says teeny-request options in and DecorateRequestOptions out; it is the same object.
      request: (reqOpts) => Object.assign(reqOpts, { proxy: url, agent }) as unknown as InterceptedOptions,
    });
  }
  return new GoogleBackend(config, errors, storage).init();
}
